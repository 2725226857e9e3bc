// Per-thread count tables (ThreadTables): work items add their exact counts into per-thread int64 tables, summed
// per channel at the end, so threads never contend and never need atomics (except when the tables would be too
// large).
//
// Internal to count_cpu.cpp, the one translation unit of the CPU kernels: include it only there (everything here
// is in an anonymous namespace).
#pragma once

#include <omp.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>

#include "cpu_scratch.h"

namespace nepenthe {
namespace {

// Per-thread int64 comparison counts of every channel: work items add into their thread's table without atomics,
// and write_states (called by every thread of the region) turns each channel's sum over threads into states,
// each channel by one thread. Used when the tables stay small (kMaxTableEntries); otherwise items add their
// states with atomics.
//
// The tables are allocated, not cleared: each thread clears its own in mine(), in the region, so the clearing
// runs in parallel and the memory is first touched by the thread that uses it. write_states sums the tables of
// the threads the region really has (a nested or limited region may have fewer than asked for).
constexpr int64_t kMaxTableEntries = 1 << 22;

#if defined(__AVX512F__)
// The constants that interleave the states of 8 channels, one vector per state, into (K + 1) vectors in the
// counts' channel-major order. Output vector v, lane l holds element e = 8v + l: state e % (K + 1) of channel
// e / (K + 1). pick[v][s] says which lanes of output v come from state s's vector, at[v][s] which of its lanes
// each takes.
template <int K>
struct StateInterleave {
  static constexpr int S = K + 1;
  __m512i at[S][S];
  __mmask8 pick[S][S];
  StateInterleave() {
    for (int v = 0; v < S; ++v) {
      for (int s = 0; s < S; ++s) {
        alignas(64) int64_t idx[8];
        unsigned mask = 0;
        for (int l = 0; l < 8; ++l) {
          const int e = 8 * v + l;
          idx[l] = e / S;
          if (e % S == s) mask |= 1u << l;
        }
        at[v][s] = _mm512_load_si512(idx);
        pick[v][s] = static_cast<__mmask8>(mask);
      }
    }
  }
};
#endif

template <int K, bool kTies>
struct ThreadTables {
  static constexpr int kAcc = 1 + K * (kTies ? 2 : 1);  // comparisons: valid, gt_0.., tie_0..
  int64_t channels;
  int threads;
  bool by_comparison;  // entry (c, j) of a table at j * channels + c (else c * kAcc + j)
  int64_t table_size;  // entries from one thread's table to the next: channels * kAcc, rounded up to a cache line
  LineArray<int64_t> data;  // threads tables, each cleared by its thread in mine()
  ThreadTables(int64_t c, int t, bool by_comparison = false)
      : channels(c),
        threads(t),
        by_comparison(by_comparison),
        table_size(ceil_to_line(c * kAcc)),
        data(line_array<int64_t>(static_cast<size_t>(table_size * t))) {}
  static bool fits(int64_t c, int t) { return c * kAcc * t <= kMaxTableEntries; }
  static int64_t ceil_to_line(int64_t entries) {
    constexpr auto kPerLine = static_cast<int64_t>(kLineBytes / sizeof(int64_t));
    return (entries + kPerLine - 1) / kPerLine * kPerLine;
  }
  // The calling thread's table, cleared: call once per thread, in the region, before its work items.
  int64_t* mine() {
    int64_t* t = data.get() + omp_get_thread_num() * table_size;
    std::fill(t, t + channels * kAcc, int64_t{0});
    return t;
  }
  // Called by every thread of the region after its work items (and a barrier): each block of kBlock channels is
  // summed over the tables of the region's threads (a nested or limited region may have fewer than asked for)
  // and written as states by one thread. values_per_channel >= 0: comparison 0 of the tables counts NaN, and
  // valid = values_per_channel - NaN. In either layout a block's entries are one contiguous run per table (per
  // comparison and table when by_comparison), summed with unit-stride vector adds.
  void write_states(int64_t* counts, int64_t values_per_channel = -1) {
    constexpr int64_t kBlock = 64;
    const int team = omp_get_num_threads();
#if defined(__AVX512F__)
    static const StateInterleave<K> shared;
    const StateInterleave<K> il = shared;  // a local copy stays in registers: the stores to counts may alias shared
#endif
#pragma omp for schedule(static) nowait
    for (int64_t c0 = 0; c0 < channels; c0 += kBlock) {
      const int64_t n = std::min(kBlock, channels - c0);
#if defined(__AVX512F__)
      if (by_comparison) {
        int64_t c = c0;
        for (; c + 8 <= c0 + n; c += 8) add_group(il, counts, c, 0xff, values_per_channel, team);
        const auto rest = static_cast<__mmask8>((1u << (c0 + n - c)) - 1);
        if (rest != 0) add_group(il, counts, c, rest, values_per_channel, team);
        continue;
      }
#endif
      int64_t sums[kAcc][kBlock];  // comparison j of channel c0 + i
      if (by_comparison) {
        for (int j = 0; j < kAcc; ++j) {
          const int64_t* in = data.get() + j * channels + c0;
          for (int64_t i = 0; i < n; ++i) sums[j][i] = in[i];
          for (int t = 1; t < team; ++t) {
            for (int64_t i = 0; i < n; ++i) sums[j][i] += in[t * table_size + i];
          }
        }
      } else {
        int64_t flat[kAcc * kBlock];
        const int64_t* in = data.get() + c0 * kAcc;
        for (int64_t e = 0; e < n * kAcc; ++e) flat[e] = in[e];
        for (int t = 1; t < team; ++t) {
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

#if defined(__AVX512F__)
  // write_states of by_comparison tables for channels c.. (the lanes of `live`, from lane 0), in registers: their
  // comparisons summed over the tables, their states, and the states interleaved into the counts' order by
  // masked permutes, one add and store per output vector. The portable loop stores every sum and state on the
  // way, and on Zen 4 those 512-bit stores and reloads cost more than the arithmetic (1280 channels and two
  // thresholds, one thread: 1.8 us against 0.64).
  inline void add_group(const StateInterleave<K>& il, int64_t* counts, int64_t c, __mmask8 live,
                        int64_t values_per_channel, int team) const {
    constexpr int S = K + 1;
    const int64_t n = __builtin_popcount(live);
    const int64_t* in = data.get() + c;
    __m512i a[kAcc];  // comparison j of the 8 channels (unrolled loops keep a in registers)
#pragma GCC unroll 16
    for (int j = 0; j < kAcc; ++j) a[j] = _mm512_maskz_loadu_epi64(live, in + j * channels);
    for (int t = 1; t < team; ++t) {
#pragma GCC unroll 16
      for (int j = 0; j < kAcc; ++j) {
        a[j] = _mm512_add_epi64(a[j], _mm512_maskz_loadu_epi64(live, in + t * table_size + j * channels));
      }
    }
    if (values_per_channel >= 0) a[0] = _mm512_sub_epi64(_mm512_set1_epi64(values_per_channel), a[0]);
    __m512i st[S];
#pragma GCC unroll 8
    for (int s = 0; s < K; ++s) {
      st[s] = _mm512_sub_epi64(a[s], a[s + 1]);
      if constexpr (kTies) st[s] = _mm512_sub_epi64(st[s], a[1 + K + s]);
    }
    st[K] = a[K];
    int64_t* out = counts + c * S;
#pragma GCC unroll 8
    for (int v = 0; v < S; ++v) {
      const int64_t left = n * S - 8 * v;  // outputs of this group from lane 0 of vector v
      if (left <= 0) break;
      const __mmask8 keep = static_cast<__mmask8>(left >= 8 ? 0xff : (1u << left) - 1);
      __m512i o = _mm512_setzero_si512();
#pragma GCC unroll 8
      for (int s = 0; s < S; ++s) o = _mm512_mask_permutexvar_epi64(o, il.pick[v][s], il.at[v][s], st[s]);
      _mm512_mask_storeu_epi64(out + 8 * v, keep, _mm512_add_epi64(o, _mm512_maskz_loadu_epi64(keep, out + 8 * v)));
    }
  }
#endif
};

}  // namespace
}  // namespace nepenthe
