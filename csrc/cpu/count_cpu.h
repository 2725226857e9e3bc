// Entry point of the CPU kernels: count (and optionally apply a fused activation) over a strided view.
#pragma once

#include "../common/count_args.h"

namespace nepenthe {

struct CountRequest {
  const void* x;      // first element of the input (storage offset included)
  int dtype;          // DType
  View view;          // (outer, C, inner) of x
  int num_thresholds;
  double greater[kMaxThresholds];
  double tie[kMaxThresholds];
  bool ignore_ties;
  int64_t* counts;    // contiguous (C, num_thresholds + 1), added into
  void* y;            // fused output (same dtype), or nullptr to only count
  View y_view;        // (outer, C, inner) of y, same sizes as view
  ActivationArgs activation;
  int threads;
};

void count_cpu(const CountRequest& r);

}  // namespace nepenthe
