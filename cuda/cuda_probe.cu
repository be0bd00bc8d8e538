// Entry point of the CUDA backend module: how many usable devices there are, and why none
// when none. It never aborts: a machine without a driver reports 0 and the reason.
#include <cuda_runtime.h>

#include <cstdio>

extern "C" int llmcore_cuda_device_count(char* why, int why_len) {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    if (why && why_len > 0) std::snprintf(why, size_t(why_len), "%s", cudaGetErrorString(err));
    return 0;
  }
  return n;
}

extern "C" int llmcore_cuda_interface_version() { return 1; }
