// Entry point of the CPU kernels: count (and optionally apply a fused activation) over a strided view.
#pragma once

#include "../common/count_args.h"

namespace nepenthe {

void count_cpu(const CountRequest& r);

}  // namespace nepenthe
