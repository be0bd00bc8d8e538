// Backend factory. The CPU backend is linked in; the CUDA backend is a separate shared module
// (cuda/, built with -DLLMCORE_CUDA=ON) that a later issue loads here with dlopen. Until it
// exists, asking for it fails with a typed error rather than silently using the CPU.
#include "backends/cpu/cpu_backend.h"
#include "backends/cpu/cpu_features.h"
#include "core/backend.h"
#include "core/errors.h"

namespace llmcore {

std::unique_ptr<Backend> create_backend(const std::string& name, int threads) {
  if (name == "cpu") return std::make_unique<cpu::CpuBackend>(threads, cpu::best_isa());
  if (name == "cuda")
    throw Error(E_BACKEND,
                "[backend] device 'cuda': this build has no CUDA backend module yet (cuda/ holds "
                "the slot; see README). Use device: 'cpu'.");
  throw Error(E_OPTION, "[backend] unknown device '" + name + "'; expected 'cpu' or 'cuda'");
}

}  // namespace llmcore
