// One A/B benchmark case, shared by the CPU and CUDA harnesses (ab_count_cpu.cpp, ab_count_cuda.cu): the shape,
// layout, dtype and thresholds from the command line, and the counting request that both builds receive.
//   N C HW layout dtype K: layout nchw (view (N, C, HW)) or cl (channels_last, read as the Python side reads it:
//   (1, C, N*HW)); dtype 0 float32, 1 float16, 2 bfloat16; K 1 (threshold 0, ReLU) or 2 (0 and 6, ReLU6).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <string>

#include "count_args.h"

struct AbCase {
  int64_t n_batch, channels, hw;
  bool channels_last;
  int dtype, k;

  // Parses argv[1..6]; the caller has checked that they are there.
  static AbCase parse(char** argv) {
    return AbCase{std::atol(argv[1]),     std::atol(argv[2]), std::atol(argv[3]), std::string(argv[4]) == "cl",
                  std::atoi(argv[5]),     std::atoi(argv[6])};
  }

  int64_t elements() const { return n_batch * channels * hw; }

  // "nchw N32 C64 HW3136 dtype0 K1", the start of a result line.
  std::string label() const {
    return std::string(channels_last ? "cl  " : "nchw") + " N" + std::to_string(n_batch) + " C" +
           std::to_string(channels) + " HW" + std::to_string(hw) + " dtype" + std::to_string(dtype) + " K" +
           std::to_string(k);
  }
  size_t element_bytes() const { return dtype == 0 ? 4 : 2; }

  // Counting (no fused output) of x into counts ((C, K + 1) int64).
  nepenthe::CountRequest request(const void* x, int64_t* counts) const {
    nepenthe::CountRequest r{};
    r.x = x;
    r.dtype = dtype;
    r.view = channels_last ? nepenthe::View{1, channels, n_batch * hw, 0, 1, channels}
                           : nepenthe::View{n_batch, channels, hw, channels * hw, hw, 1};
    r.num_thresholds = k;
    r.greater[0] = r.tie[0] = 0.0;
    if (k > 1) r.greater[1] = r.tie[1] = 6.0;
    r.counts = counts;
    r.y = nullptr;
    r.y_view = r.view;
    r.activation = {nepenthe::kNone, 0.0, 0.0};
    return r;
  }
};
