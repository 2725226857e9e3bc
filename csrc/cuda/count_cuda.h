// Entry points of the CUDA kernels; compiled by nvcc, called from the host-compiled binding.
#pragma once

#include "../common/count_args.h"

namespace nepenthe {

// Launches the counting (and, when r.y is set, fused) kernel on r.stream; returns without synchronising.
void count_cuda(const CountRequest& r);

// The CUDA runtime version this module was built with, and the number of devices it sees (-1 on error).
int cuda_runtime_version();
int cuda_device_count();

}  // namespace nepenthe
