#!/usr/bin/env bash
# Builds the standalone C++ test binaries with CMake (the same source lists as the addon) and
# runs them: test-backend-ops (full shapes), the safetensors validator and the GEMM test.
# With nvcc on PATH it also compiles the CUDA backend module (no GPU needed to compile).
set -euo pipefail
cd "$(dirname "$0")/.."
cuda=OFF
if command -v nvcc >/dev/null 2>&1; then cuda=ON; fi
cmake -S . -B build-cmake -DCMAKE_BUILD_TYPE=Release -DLLMCORE_ADDON=OFF -DLLMCORE_CUDA=$cuda >/dev/null
cmake --build build-cmake -j "$(nproc)" >/dev/null
./build-cmake/backend_ops_test | tail -n 3
./build-cmake/safetensors_test | tail -n 2
if [ -x ./build-cmake/gemm_test ]; then
  ./build-cmake/gemm_test --test --quick | tail -n 3
  # On AMX CPUs, once more with every bf16 call on the tile unit (batch 1 included).
  if grep -q amx_bf16 /proc/cpuinfo 2>/dev/null; then
    echo "gemm_test with LLMCORE_AMX_MIN_ROWS=1:"
    LLMCORE_AMX_MIN_ROWS=1 ./build-cmake/gemm_test --test --quick | tail -n 1
  fi
fi
echo "native tests passed (cuda module compiled: $cuda)"
