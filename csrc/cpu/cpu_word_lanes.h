// Word-lane channel counters (word_sweep; channel path, float16/bfloat16 without ties, one or two thresholds,
// AVX-512 BW or AVX2): channels compared in their own 16 bits into uint16 lane counters held in registers.
//
// Internal to count_cpu.cpp, the one translation unit of the CPU kernels: include it only there (everything here
// is in an anonymous namespace).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cpu_simd.h"
#include "cpu_words.h"

namespace nepenthe {
namespace {

#if defined(NEP_WORD_LANES)
// Counts the comparisons of G vectors of kWordLanes channels from `first` over positions [q0, q1) (at most 65535)
// into uint16 counters, kept in registers and then stored as G x K rows of one vector at `counters` (K per
// vector); returns the largest magnitude bits seen. Each row is prefetched about 4 KiB ahead (from memory,
// MobileNet-V2's 96 channels measured 12% faster with it). Never inlined: inlined into word_sweep, GCC's register
// allocation made MobileNet-V2's 96 channels 1.4x slower.
template <int K, bool kKey, int G>
__attribute__((noinline)) WordVec word_tile(const WordVec* t, const uint16_t* first, int64_t stride, int64_t q0,
                                             int64_t q1, uint8_t* counters) {
  WordVec c[G][K];
  for (int g = 0; g < G; ++g) {
    for (int k = 0; k < K; ++k) c[g][k] = WordOps::zero();
  }
  // Up to three chains of maxes (one chain of G dependent maxes per position measured slower).
  constexpr int kTops = G < 3 ? G : 3;
  WordVec top[kTops];
  for (int i = 0; i < kTops; ++i) top[i] = WordOps::zero();
  const int64_t ahead = rows_ahead(stride, 2);
  for (int64_t q = q0; q < q1; ++q) {
    const uint16_t* row = first + q * stride;
    for (int g = 0; g < G; ++g) {
      if (sizeof(WordVec) == 64 || g % 2 == 0) {  // each cache line of the row once
        prefetch_line(reinterpret_cast<const char*>(row + kWordLanes * g + ahead));
      }
      const WordVec x = WordOps::load(row + kWordLanes * g);
      top[g % kTops] = WordOps::max(top[g % kTops], WordOps::magnitude(x));
      const WordVec kx = kKey ? WordOps::key(x) : x;
      for (int k = 0; k < K; ++k) c[g][k] = WordOps::count_above(c[g][k], kx, t[k]);
    }
  }
  for (int i = 1; i < kTops; ++i) top[0] = WordOps::max(top[0], top[i]);
  for (int g = 0; g < G; ++g) {
    for (int k = 0; k < K; ++k) WordOps::store(counters + sizeof(WordVec) * (g * K + k), c[g][k]);
  }
  return top[0];
}

// At most kWordTile<K> vectors per tile: their G x K counters stay in registers (mostly).
template <int K>
constexpr int kWordTile = WordOps::kTileCounters / K;

// word_tile with 1 <= m <= G vectors (m known only at run time).
template <int K, bool kKey, int G>
inline WordVec word_narrow(int64_t m, const WordVec* t, const uint16_t* first, int64_t stride, int64_t q0,
                           int64_t q1, uint8_t* counters) {
  if constexpr (G > 1) {
    if (m != G) return word_narrow<K, kKey, G - 1>(m, t, first, stride, q0, q1, counters);
  }
  return word_tile<K, kKey, G>(t, first, stride, q0, q1, counters);
}

// Counts groups <= kWordTile<K> vectors of kWordLanes channels from `base` over positions [q0, q1) into the int32
// lane slots of float vectors 0.. (slot j * nslots + 2g + h holds the h-th half of word vector g; j = 0 valid,
// 1 + k above threshold k), in chunks of at most 65535 positions (a uint16 counter never wraps). A chunk whose
// largest magnitude bits exceed infinity's holds NaN: exact(qb, qe) counts it again instead (float comparisons).
// counters: scratch for the groups x K vectors word_tile stores. More channels than one tile take byte_sweep or
// float tiles: tiles that split a row measured up to 1.9x slower from memory than those paths (AVX-512).
template <int K, bool kKey, class I, class Exact>
void word_sweep(int64_t groups, const WordThresholds& wt, const uint16_t* base, int64_t stride, int64_t q0, int64_t q1,
                I* slots, int64_t nslots, uint8_t* counters, Exact&& exact) {
  static_assert(sizeof(I) == sizeof(WordVec), "a word vector's halves widen to two float vectors' slots");
  WordVec t[K];
  for (int k = 0; k < K; ++k) t[k] = WordOps::splat(wt.bits[k]);
  const WordVec inf = WordOps::splat(wt.inf);
  for (int64_t cb = q0; cb < q1; cb += 65535) {
    const int64_t ce = std::min(q1, cb + 65535);
    const WordVec top = word_narrow<K, kKey, kWordTile<K>>(groups, t, base, stride, cb, ce, counters);
    if (WordOps::any_above(top, inf)) {  // NaN in the chunk
      exact(cb, ce);
      continue;
    }
    const auto positions = static_cast<decltype(I{}[0] + 0)>(ce - cb);
    for (int64_t g = 0; g < groups; ++g) {
      slots[2 * g] += positions;
      slots[2 * g + 1] += positions;
      for (int k = 0; k < K; ++k) {
        WordVec c;
        std::memcpy(&c, counters + sizeof(WordVec) * (g * K + k), sizeof c);
        const WordVec lo = WordOps::low(c), hi = WordOps::high(c);
        I w;
        std::memcpy(&w, &lo, sizeof w);
        slots[(1 + k) * nslots + 2 * g] += w;
        std::memcpy(&w, &hi, sizeof w);
        slots[(1 + k) * nslots + 2 * g + 1] += w;
      }
    }
  }
}
#endif

}  // namespace
}  // namespace nepenthe
