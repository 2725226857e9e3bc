// Per-thread count tables (ThreadTables): work items add their exact counts into per-thread int64 tables, summed
// per channel at the end, so threads never contend and never need atomics (except when the tables would be too
// large).
//
// Internal to count_cpu.cpp, the one translation unit of the CPU kernels: include it only there (everything here
// is in an anonymous namespace).
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace nepenthe {
namespace {

// Per-thread int64 comparison counts of every channel: work items add into their thread's table without atomics,
// and write_states (called by every thread of the region) turns each channel's sum over threads into states,
// each channel by one thread. Used when the tables stay small (kMaxTableEntries); otherwise items add their
// states with atomics.
constexpr int64_t kMaxTableEntries = 1 << 22;

template <int K, bool kTies>
struct ThreadTables {
  static constexpr int kAcc = 1 + K * (kTies ? 2 : 1);  // comparisons: valid, gt_0.., tie_0..
  int64_t channels;
  int threads;
  bool by_comparison;  // entry (c, j) of a table at j * channels + c (else c * kAcc + j)
  std::vector<int64_t> data;
  ThreadTables(int64_t c, int t, bool by_comparison = false)
      : channels(c), threads(t), by_comparison(by_comparison), data(static_cast<size_t>(c * kAcc * t)) {}
  static bool fits(int64_t c, int t) { return c * kAcc * t <= kMaxTableEntries; }
  int64_t* mine() { return data.data() + omp_get_thread_num() * channels * kAcc; }
  // values_per_channel >= 0: comparison 0 of the tables counts NaN, and valid = values_per_channel - NaN.
  // Channels go in blocks of kBlock; in either layout a block's entries are one contiguous run per table (per
  // comparison and table when by_comparison), summed over the threads with unit-stride vector adds.
  void write_states(int64_t* counts, int64_t values_per_channel = -1) {
    constexpr int64_t kBlock = 64;
    const int64_t table_size = channels * kAcc;
#pragma omp for schedule(static)
    for (int64_t c0 = 0; c0 < channels; c0 += kBlock) {
      const int64_t n = std::min(kBlock, channels - c0);
      int64_t sums[kAcc][kBlock];  // comparison j of channel c0 + i
      if (by_comparison) {
        for (int j = 0; j < kAcc; ++j) {
          const int64_t* in = data.data() + j * channels + c0;
          for (int64_t i = 0; i < n; ++i) sums[j][i] = in[i];
          for (int t = 1; t < threads; ++t) {
            for (int64_t i = 0; i < n; ++i) sums[j][i] += in[t * table_size + i];
          }
        }
      } else {
        int64_t flat[kAcc * kBlock];
        const int64_t* in = data.data() + c0 * kAcc;
        for (int64_t e = 0; e < n * kAcc; ++e) flat[e] = in[e];
        for (int t = 1; t < threads; ++t) {
          for (int64_t e = 0; e < n * kAcc; ++e) flat[e] += in[t * table_size + e];
        }
        for (int64_t i = 0; i < n; ++i) {
          for (int j = 0; j < kAcc; ++j) sums[j][i] = flat[i * kAcc + j];
        }
      }
      if (values_per_channel >= 0) {
        for (int64_t i = 0; i < n; ++i) sums[0][i] = values_per_channel - sums[0][i];
      }
      for (int64_t i = 0; i < n; ++i) {
        int64_t* out = counts + (c0 + i) * (K + 1);
        for (int s = 0; s <= K; ++s) {
          const int64_t upper = s < K ? sums[s + 1][i] : 0;
          const int64_t ties = kTies && s < K ? sums[1 + K + s][i] : 0;
          out[s] += sums[s][i] - upper - ties;
        }
      }
    }
  }
};

}  // namespace
}  // namespace nepenthe
