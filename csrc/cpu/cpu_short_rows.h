// The short-row path (run_short_rows): short contiguous rows (7x7 maps), count only, where the bitmap path does
// not run (float64, targets without AVX2, rows that do not lie back to back).
//
// Internal to count_cpu.cpp, the one translation unit of the CPU kernels: include it only there (everything here
// is in an anonymous namespace).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../common/count_args.h"
#include "cpu_counter.h"
#include "cpu_job.h"
#include "cpu_simd.h"
#include "cpu_storage.h"
#include "cpu_tuning.h"

namespace nepenthe {
namespace {

// Counts n back-to-back rows of `inner` >= W values each (the channels of one outer index in contiguous NCHW)
// as one run of full vectors: a vector inside a row adds to the register counters; one that straddles two rows
// is added twice, masked to each side, and the finished row's counters are added to its channel's table entry.
// Only the end of the run takes an overlapping masked vector, instead of every row.
template <class S, class Ctr>
inline void stream_slab(Ctr& counter, const S* base, int64_t n, int64_t inner, typename Ctr::I* table) {
  using I = typename Ctr::I;
  using Lane = decltype(I{}[0] + 0);
  constexpr int W = Ctr::W;
  constexpr int A = Ctr::kAcc;
  const int64_t len = n * inner;
  const I lane = lane_index<I>();
  auto flush = [&](int64_t c) {
    I* t = table + c * A;
    for (int j = 0; j < A; ++j) t[j] += counter.total(j);
    counter.clear();
  };
  int64_t i = 0, e = inner, c = 0;  // next value, end of row c; invariant i <= e since inner >= W
  for (;;) {
    for (; i + W <= e; i += W) counter.add(load_vec<S>(base + i));
    if (i + W > len) break;
    const typename Ctr::V x = load_vec<S>(base + i);
    const I lo = lane < static_cast<Lane>(e - i);
    counter.add(x, lo);
    flush(c);
    ++c;
    e += inner;
    counter.add(x, ~lo);
    i += W;
  }
  if (i < len) {  // fewer than W values left, in row c and perhaps row c + 1: an overlapping vector, masked
    const int64_t p = len - W;
    const typename Ctr::V x = load_vec<S>(base + p);
    const I keep = lane >= static_cast<Lane>(i - p);
    const I lo = lane < static_cast<Lane>(e - p);
    counter.add(x, keep & lo);
    if (e < len) {
      flush(c);
      ++c;
      counter.add(x, keep & ~lo);
    }
  }
  flush(c);
}

// Short-row path: inner stride 1 with short rows (7x7 maps), count only. Per-row setup and per-channel flushes
// dominate such rows when an item walks channel by channel, and jumping between outer indices defeats the
// prefetcher. Here an item walks its rows in memory order (outer index, then channel: for contiguous NCHW one
// sequential run per outer index) and keeps each channel's vector lane counters in a table in L1, loaded and
// stored around the row; the table becomes per-state counts once per item.
template <class S, int K, bool kTies, bool kFromMemory>
void run_short_rows(const Job<S>& job) {
  using T = typename Traits<S>::T;
  using Ctr = Counter<T, K, kTies, kFromMemory>;
  using I = typename Ctr::I;
  constexpr int A = Ctr::kAcc;
  const View& v = job.v;
  int64_t chans = clamp64(kTableBytes / (A * static_cast<int64_t>(sizeof(I))), 1, v.channels);
  const int64_t chan_blocks = ceil_div(v.channels, chans);
  chans = ceil_div(v.channels, chan_blocks);
  int64_t rows = clamp64(kSmallItem / (chans * v.inner), 1, v.outer);
  if (job.threads > 1 && chan_blocks < job.threads) {  // enough items to keep every thread busy
    rows = std::min(rows, std::max<int64_t>(1, ceil_div(v.outer, ceil_div(job.threads, chan_blocks))));
  }
  const int64_t row_blocks = ceil_div(v.outer, rows);
  const int64_t items = row_blocks * chan_blocks;
  const bool parallel = job.threads > 1 && items > 1 && v.numel() >= kParallelMin;
  const bool stream = v.s_channel == v.inner && v.inner >= Ctr::W;
#pragma omp parallel num_threads(job.threads) if (parallel)
  {
    std::vector<I> table(static_cast<size_t>(A * chans));
    Ctr counter(job.th);
#pragma omp for schedule(static)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t cb = item % chan_blocks, rb = item / chan_blocks;
      const int64_t c0 = cb * chans, n = std::min(v.channels, c0 + chans) - c0;
      const int64_t o0 = rb * rows, o1 = std::min(v.outer, o0 + rows);
      std::fill(table.begin(), table.begin() + A * n, I{});
      for (int64_t o = o0; o < o1; ++o) {
        const S* base = job.x + o * v.s_outer + c0 * v.s_channel;
        if (stream) {
          stream_slab(counter, base, n, v.inner, table.data());
          continue;
        }
        for (int64_t c = 0; c < n; ++c) {
          I* t = table.data() + c * A;
          counter.clear();
          counter.add_row(base + c * v.s_channel, v.inner);
          for (int j = 0; j < A; ++j) t[j] += counter.total(j);
        }
      }
      for (int64_t c = 0; c < n; ++c) {
        int64_t sums[A];
        for (int j = 0; j < A; ++j) sums[j] = lane_sum(table[c * A + j]);
        Ctr::add_states(job.counts + (c0 + c) * (K + 1), sums, job.th.ignore_ties);
      }
    }
  }
}

}  // namespace
}  // namespace nepenthe
