// What every counting kernel receives: a strided (outer, C, inner) view, the thresholds, and where to add.
//
// Counting idea shared by all kernels: the state of v is #{k : v > g[k]} with g increasing, so
//   #(state == s) = #(v > g[s-1]) - #(v > g[s]) - #(v ties threshold s)      (#(v > g[-1]) := #(v == v))
// Each kernel therefore only accumulates K + 1 (or 2K + 1 with ties) branch-free comparison counts per channel
// and turns them into per-state counts once per work item. Every item's per-state counts are exact and
// non-negative, so items add them straight into the int64 counts.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define NEP_HD __host__ __device__
#else
#define NEP_HD
#endif

namespace nepenthe {

constexpr int kMaxThresholds = 7;
constexpr int kMaxStates = kMaxThresholds + 1;

enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };
enum Activation : int { kNone = -1, kRelu = 0, kHardtanh = 1, kLeakyRelu = 2, kGeluErf = 3, kGeluTanh = 4 };

// Sizes and element strides of a tensor read as (outer, channels, inner).
struct View {
  int64_t outer, channels, inner;
  int64_t s_outer, s_channel, s_inner;
  int64_t numel() const { return outer * channels * inner; }
};

// Thresholds in the compute precision: v > greater[k]; v ties threshold k when v == tie[k] (NaN never ties).
template <class T>
struct Thresholds {
  int k;
  bool ignore_ties;
  T greater[kMaxThresholds];
  T tie[kMaxThresholds];
};

// The activation a fused kernel writes; p0/p1 are min_val/max_val (hardtanh) or negative_slope (leaky_relu).
struct ActivationArgs {
  int kind;
  double p0, p1;
};

// Work split for layouts read row by row (inner stride 1, or any strides): an item is a block of outer rows
// x a block of channels x a block of inner positions.
struct RowPlan {
  int64_t rows, chans, inner;             // per item
  int64_t row_blocks, chan_blocks, inner_blocks;
  NEP_HD int64_t items() const { return row_blocks * chan_blocks * inner_blocks; }
};

NEP_HD inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
NEP_HD inline int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

// Work split for channel stride 1 (channels_last, (N, L, C)): an item is a block of positions x a block of
// channels of one outer index; each position's channels are contiguous.
struct ChannelPlan {
  int64_t chans, positions;  // per item
  int64_t chan_blocks, pos_blocks;
  NEP_HD int64_t items(int64_t outer) const { return outer * pos_blocks * chan_blocks; }
};

inline ChannelPlan plan_channels(const View& v, int64_t target, int64_t max_chans) {
  ChannelPlan p{};
  p.chan_blocks = ceil_div(v.channels, max_chans);
  p.chans = ceil_div(v.channels, p.chan_blocks);
  p.positions = clamp64(target / p.chans, 1, v.inner);
  p.pos_blocks = ceil_div(v.inner, p.positions);
  return p;
}

// Per-state counts from comparison counts: acc = [valid, gt_0..gt_{K-1}, tie_0..tie_{K-1}].
template <class Acc>
NEP_HD inline int64_t state_count(const Acc* acc, int k, bool ignore_ties, int s) {
  int64_t lower = static_cast<int64_t>(acc[s]);  // acc[0] = valid, acc[s] = gt_{s-1}
  int64_t upper = s < k ? static_cast<int64_t>(acc[s + 1]) : 0;
  int64_t ties = (ignore_ties && s < k) ? static_cast<int64_t>(acc[1 + k + s]) : 0;
  return lower - upper - ties;
}

// One counting (optionally fused) call, as the Python bindings receive it.
struct CountRequest {
  const void* x;  // first element of the input (storage offset included)
  int dtype;      // DType
  View view;      // (outer, C, inner) of x
  int num_thresholds;
  double greater[kMaxThresholds];
  double tie[kMaxThresholds];
  bool ignore_ties;
  int64_t* counts;  // contiguous (C, num_thresholds + 1), added into
  void* y;          // fused output (same dtype), or nullptr to only count
  View y_view;      // (outer, C, inner) of y, same sizes as view
  ActivationArgs activation;
  int threads;        // CPU: OpenMP threads
  uintptr_t stream;   // CUDA: the cudaStream_t to launch on
};

}  // namespace nepenthe
