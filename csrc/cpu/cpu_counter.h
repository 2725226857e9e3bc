// Comparison counts in vector registers (Counter): each loaded vector (float16/bfloat16 widened to float32) is
// compared with every threshold while it sits in a register, and the comparisons are counted in lane counters
// (count_args.h explains why K + 1 comparison counts give the state counts). The row, short-row and channel paths
// count through it, and the word- and byte-lane paths fall back on it.
//
// Internal to count_cpu.cpp, the one translation unit of the CPU kernels: include it only there (everything here
// is in an anonymous namespace).
#pragma once

#include <cstdint>
#include <type_traits>

#include "../common/count_args.h"
#include "cpu_simd.h"

namespace nepenthe {
namespace {

// Comparison counts [valid, gt_0..gt_{K-1}, tie_0..tie_{K-1}] kept in vector registers; every comparison of a
// loaded vector is made while it sits in a register. Lane counters are int32 for float: flush before 2^31
// values per lane. kFromMemory: the job's tensor is read from memory (kMemoryBytes), so rows prefetch.
template <class T, int K, bool kTies, bool kFromMemory = false>
struct Counter {
  using V = typename Simd<T>::V;
  using I = typename Simd<T>::I;
  static constexpr int W = Simd<T>::kWidth;
  static constexpr int kAcc = 1 + K * (kTies ? 2 : 1);
  // The row and tile loops prefetch. AVX2 builds too: from memory, channels_last float16 with 96 channels
  // measured 20% faster, 384 bfloat16 channels 28%, NCHW float32 11%.
  static constexpr bool kPrefetch = kFromMemory && kVecBytes >= 32;
  V g[K], t[K];
  I acc[kAcc];

  Counter() = default;
  explicit Counter(const Thresholds<T>& thr) {
    for (int k = 0; k < K; ++k) {
      g[k] = thr.greater[k] - V{};
      t[k] = thr.tie[k] - V{};
    }
    clear();
  }
  void clear() {
    for (int j = 0; j < kAcc; ++j) acc[j] = I{};
  }
  inline void add(V x, I keep) {
    acc[0] -= (x == x) & keep;
    for (int k = 0; k < K; ++k) acc[1 + k] -= (x > g[k]) & keep;
    if constexpr (kTies) {
      for (int k = 0; k < K; ++k) acc[1 + K + k] -= (x == t[k]) & keep;
    }
  }
  inline void add(V x) {
#if defined(__AVX512F__)
    if constexpr (std::is_same_v<T, float>) {
      // Each comparison is a mask and a masked add (GCC spells `acc -= (x > g)` as a mask, a zeroing move and a
      // subtraction: 10 instructions per vector with two thresholds instead of 7).
      const __m512 v = (__m512)x;
      const __m512i one = _mm512_set1_epi32(1);
      auto count = [&](I& a, __mmask16 m) {
        const __m512i c = (__m512i)a;
        a = (I)_mm512_mask_add_epi32(c, m, c, one);
      };
      count(acc[0], _mm512_cmp_ps_mask(v, v, _CMP_EQ_OQ));
      for (int k = 0; k < K; ++k) count(acc[1 + k], _mm512_cmp_ps_mask(v, (__m512)g[k], _CMP_GT_OQ));
      if constexpr (kTies) {
        for (int k = 0; k < K; ++k) {
          count(acc[1 + K + k], _mm512_cmp_ps_mask(v, (__m512)t[k], _CMP_EQ_OQ));
        }
      }
      return;
    }
#endif
    add(x, I{} - 1);
  }

  // The W stored values at p.
  template <class S>
  inline void add_at(const S* p) {
    add(load_vec<S>(p));
  }

  // Lane counts of comparison j.
  inline I total(int j) const { return acc[j]; }

  // n contiguous stored values; a tail shorter than a vector is read as an overlapping, masked vector.
  template <class S>
  inline void add_row(const S* p, int64_t n) {
    int64_t i = 0;
    if constexpr (kPrefetch && !std::is_same_v<S, double>) {  // kPrefetchBytes ahead
      for (; i + W <= n; i += W) {
        prefetch_line(reinterpret_cast<const char*>(p + i + kPrefetchBytes / sizeof(S)));
        add_at(p + i);
      }
    }
    for (; i + W <= n; i += W) add_at(p + i);
    if (i == n) return;
    if (n >= W) {
      add(load_vec<S>(p + n - W), lane_index<I>() >= static_cast<decltype(acc[0][0] + 0)>(i - (n - W)));
    } else {
      add(load_partial<S>(p, n));
    }
  }

  // Adds the comparison counts of all lanes to sums[0..kAcc) (a thread's table, no atomics) and clears.
  void flush_into(int64_t* sums) {
    for (int j = 0; j < kAcc; ++j) sums[j] += lane_sum(total(j));
    clear();
  }

  // Adds the per-state counts of all lanes together to counts[0..K] (atomically) and clears.
  void flush_total(int64_t* counts, bool ignore_ties) {
    int64_t sums[kAcc];
    for (int j = 0; j < kAcc; ++j) sums[j] = lane_sum(total(j));
    add_states(counts, sums, ignore_ties);
    clear();
  }
  // sums holds kAcc comparison counts: ties are read only when the counter keeps them (kTies, which the dispatch
  // sets from ignore_ties), so a tie-less counter's sums are never read past their end.
  static void add_states(int64_t* counts, const int64_t* sums, bool ignore_ties) {
    for (int s = 0; s <= K; ++s) {
      const int64_t n = state_count(sums, K, kTies && ignore_ties, s);
      if (n != 0) __atomic_fetch_add(counts + s, n, __ATOMIC_RELAXED);
    }
  }
};

}  // namespace
}  // namespace nepenthe
