// Standalone test-backend-ops: `backend_ops_test [--quick]`; exit status 1 when any case fails.
// `backend_ops_test --perf`: speed of the non-GEMM ops instead (native/tests/ops_perf.cpp).
#include <cstdio>
#include <cstring>

#include "tests/backend_ops.h"

namespace llmcore {
int run_ops_perf(const char* only);
}

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--perf") == 0) return llmcore::run_ops_perf(argc > 2 ? argv[2] : nullptr);
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  int failed = 0, passed = 0;
  for (const auto& c : llmcore::run_backend_ops(quick)) {
    const char* status = !c.supported ? "NOT_SUPPORTED" : c.ok ? "OK" : "FAIL";
    std::printf("%-14s %-10s %-44s err=%.3g tol=%.3g %s %s\n", c.backend.c_str(), c.op.c_str(),
                c.shape.c_str(), c.max_err, c.tol, status, c.note.c_str());
    if (c.supported) (c.ok ? passed : failed)++;
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
