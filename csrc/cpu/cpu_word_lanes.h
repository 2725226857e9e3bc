// Word-lane channel counters (word_sweep; channel path, float16/bfloat16 without ties, one or two thresholds,
// AVX-512 BW or AVX2): channels compared in their own 16 bits into uint16 lane counters held in registers.
//
// Internal to count_cpu.cpp, the one translation unit of the CPU kernels: include it only there (everything here
// is in an anonymous namespace).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "../common/count_args.h"
#include "cpu_packed_masks.h"
#include "cpu_row_signs.h"
#include "cpu_simd.h"
#include "cpu_tuning.h"
#include "cpu_words.h"

namespace nepenthe {
namespace {

#if defined(NEP_WORD_LANES)
// Counts the comparisons of G vectors of kWordLanes channels from `first` over positions [q0, q1) (at most 65535)
// into uint16 counters, kept in registers and then stored as G x K rows of one vector at `counters` (K per
// vector); returns the largest magnitude bits seen. Each row is prefetched about 4 KiB ahead (from memory,
// MobileNet-V2's 96 channels measured 12% faster with it). Never inlined: inlined into word_sweep, GCC's register
// allocation made MobileNet-V2's 96 channels 1.4x slower. emit(q * stride + kWordLanes * g, x) gets each vector as
// it is read: NoWordEmit, or a WordRowActivation, which writes the fused output at the same offset from its base.
template <int K, bool kKey, int G, class Emit>
__attribute__((noinline)) WordVec word_tile(const WordVec* t, const uint16_t* first, int64_t stride, int64_t q0,
                                             int64_t q1, uint8_t* counters, const Emit emit) {
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
      emit(q * stride + kWordLanes * g, x);
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
template <int K, bool kKey, int G, class Emit>
inline WordVec word_narrow(int64_t m, const WordVec* t, const uint16_t* first, int64_t stride, int64_t q0,
                           int64_t q1, uint8_t* counters, const Emit& emit) {
  if constexpr (G > 1) {
    if (m != G) return word_narrow<K, kKey, G - 1>(m, t, first, stride, q0, q1, counters, emit);
  }
  return word_tile<K, kKey, G>(t, first, stride, q0, q1, counters, emit);
}

// What word_tile hands each vector of a count alone: nothing.
struct NoWordEmit {
  void operator()(int64_t, WordVec) const {}
};

// In place (y is x), word_sweep's fused output (`after`, a WordRowActivation): nothing as each vector is read, since
// a chunk that holds NaN is read again to be counted exactly; each chunk's vectors go to `after` once it is counted.
template <class Emit>
struct WordEmitAfter {
  Emit after;
  void operator()(int64_t, WordVec) const {}
};
template <class Emit>
inline constexpr bool kWordEmitsAfter = false;
template <class Emit>
inline constexpr bool kWordEmitsAfter<WordEmitAfter<Emit>> = true;

// The activation of `groups` word vectors from each position of [q0, q1), written in place (emit taken by value, so
// that what it holds stays in registers; positions whose channels lie end to end are one run).
template <class Emit>
inline void write_words_after(const Emit emit, const uint16_t* base, int64_t stride, int64_t q0, int64_t q1,
                              int64_t groups) {
  if (kWordLanes * groups == stride) {
    const int64_t first = q0 * stride, n = (q1 - q0) * stride;
    for (int64_t i = 0; i < n; i += kWordLanes) emit(first + i, WordOps::load(base + first + i));
    return;
  }
  for (int64_t q = q0; q < q1; ++q) {
    for (int64_t g = 0; g < groups; ++g) {
      emit(q * stride + kWordLanes * g, WordOps::load(base + q * stride + kWordLanes * g));
    }
  }
}

// The fused relu or hardtanh of 16-bit values written as word_tile reads them (WordActivation), at y + i.
template <class S>
struct WordRowActivation {
  S* y;
  WordActivation<S> f;
  void operator()(int64_t i, WordVec x) const {
    typename WordActivation<S>::I16 b;
    std::memcpy(&b, &x, sizeof b);
    const auto out = f(b);
    std::memcpy(y + i, &out, sizeof out);
  }
};

// Adds word tiles' counters into the int32 lane slots of float vectors [0, vectors): slot j * nslots + 2g + h holds
// the h-th half of word vector g (j = 0 valid, the chunk's positions; 1 + k above threshold k). counters holds
// the tile's groups x K word vectors as stored; a half past `vectors` (a last group of 16 float32 channels) is not
// added.
template <int K, class I>
void add_word_counters(int64_t groups, int64_t vectors, const uint8_t* counters, int64_t positions, I* slots,
                       int64_t nslots) {
  static_assert(sizeof(I) == sizeof(WordVec), "a word vector's halves widen to two float vectors' slots");
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t h = 0; h < 2 && 2 * g + h < vectors; ++h) {
      slots[2 * g + h] += static_cast<decltype(I{}[0] + 0)>(positions);
      for (int k = 0; k < K; ++k) {
        WordVec c;
        std::memcpy(&c, counters + sizeof(WordVec) * (g * K + k), sizeof c);
        const WordVec half = h == 0 ? WordOps::low(c) : WordOps::high(c);
        I w;
        std::memcpy(&w, &half, sizeof w);
        slots[(1 + k) * nslots + 2 * g + h] += w;
      }
    }
  }
}

// Counts groups <= kWordTile<K> vectors of kWordLanes channels from `base` over positions [q0, q1) into the int32
// lane slots of float vectors 0.. (add_word_counters), in chunks of at most 65535 positions (a uint16 counter never
// wraps). A chunk whose largest magnitude bits exceed infinity's holds NaN: exact(qb, qe) counts it again instead
// (float comparisons). counters: scratch for the groups x K vectors word_tile stores. More channels than one tile
// take byte_sweep or float tiles: tiles that split a row measured up to 1.9x slower from memory than those paths
// (AVX-512).
template <int K, bool kKey, class I, class Exact, class Emit = NoWordEmit>
void word_sweep(int64_t groups, const WordThresholds& wt, const uint16_t* base, int64_t stride, int64_t q0, int64_t q1,
                I* slots, int64_t nslots, uint8_t* counters, Exact&& exact, const Emit& emit = Emit{}) {
  WordVec t[K];
  for (int k = 0; k < K; ++k) t[k] = WordOps::splat(wt.bits[k]);
  const WordVec inf = WordOps::splat(wt.inf);
  // In place (WordEmitAfter), chunks of at most kAfterChunkBytes, each written once it is counted.
  constexpr bool kAfter = kWordEmitsAfter<Emit>;
  const int64_t chunk = kAfter ? after_chunk_positions(static_cast<int64_t>(sizeof(WordVec)) * groups) : 65535;
  for (int64_t cb = q0; cb < q1; cb += chunk) {
    const int64_t ce = std::min(q1, cb + chunk);
    WordVec top;
    if constexpr (kAfter) {
      top = word_narrow<K, kKey, kWordTile<K>>(groups, t, base, stride, cb, ce, counters, NoWordEmit{});
    } else {
      top = word_narrow<K, kKey, kWordTile<K>>(groups, t, base, stride, cb, ce, counters, emit);
    }
    if (WordOps::any_above(top, inf)) {  // NaN in the chunk
      exact(cb, ce);
    } else {
      add_word_counters<K>(groups, 2 * groups, counters, ce - cb, slots, nslots);
    }
    if constexpr (kAfter) write_words_after(emit.after, base, stride, cb, ce, groups);
  }
}

#if defined(NEP_FLOAT_WORDS)
// Word lanes for float32 channels (channel path, no ties, thresholds that FloatWordMasks counts exactly: ReLU's 0,
// ReLU6's 0 and 6): each position's 32 channels of a group, two float vectors, rounded up to bfloat16 as one vector
// of 32 words in channel order, one integer compare per threshold into uint16 counters in registers. Per 32
// channels that is two adds, a permutation and K compares, against 2 x (K + 1) float compares into masks, which
// Zen 4 issues on one port: MobileNet-V2's 96 channels with two thresholds took 1.9x a sum's time from L3 so.
// The last group holds 16 channels where `half_last` (its second vector reads as +0, above no threshold). False
// if the float sum of the values (two chains) is not finite: NaN or infinity, which the words cannot tell apart from
// numbers, or an overflow. Never inlined, as word_tile. The loops over the groups are unrolled by pragma: from four
// groups on, GCC otherwise kept the counters in memory as well and stored them at every position. No prefetching:
// from L3 it cost time (prefetches take load slots), and from memory it measured 0.94-0.97 of the time with 64
// channels, 1.03-1.42x with 96 and 144. emit.one(q * stride + 32 * g + 16 * h, x, live) gets each vector as it is
// read (NoEmit, or a RowActivation that writes the fused output at the same offset from its own base).
template <int K, int G, class Emit>
__attribute__((noinline)) bool float_word_tile(const FloatWordMasks<K> wm, const float* first, int64_t stride,
                                               int64_t q0, int64_t q1, bool half_last, uint8_t* counters,
                                               const Emit emit) {
  const __m512i upper = in_register(FloatWordMasks<K>::upper_words()), up = FloatWordMasks<K>::round_up();
  const auto last = static_cast<__mmask16>(half_last ? 0 : 0xffff);
  __m512i c[G][K];
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g) {
    for (int k = 0; k < K; ++k) c[g][k] = _mm512_setzero_si512();
  }
  __m512 sum[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
  __m512i t[K];
  for (int k = 0; k < K; ++k) t[k] = wm.t[k];
  for (int64_t q = q0; q < q1; ++q) {
    const float* row = first + q * stride;
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) {
      const __m512 x0 = in_register(_mm512_loadu_ps(row + 32 * g));
      const __m512 x1 = g + 1 < G ? in_register(_mm512_loadu_ps(row + 32 * g + 16))
                                  : in_register(_mm512_maskz_loadu_ps(last, row + 32 * g + 16));
      emit.one(q * stride + 32 * g, x0, 0xffff);
      emit.one(q * stride + 32 * g + 16, x1, g + 1 < G ? 0xffff : last);
      sum[g % 2] = _mm512_add_ps(sum[g % 2], _mm512_add_ps(x0, x1));
      const __m512i w = FloatWordMasks<K>::rounded_words(x0, x1, upper, up);
      for (int k = 0; k < K; ++k) c[g][k] = WordOps::count_above(c[g][k], w, t[k]);
    }
  }
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g) {
    for (int k = 0; k < K; ++k) WordOps::store(counters + sizeof(WordVec) * (g * K + k), c[g][k]);
  }
  return all_finite(_mm512_add_ps(sum[0], sum[1]));
}

// At most kFloatWordTile<K> groups of 32 channels per tile: their G x K counters stay in registers (GCC 12
// spilled some from 10 groups with one threshold).
template <int K>
constexpr int kFloatWordTile = std::min(8, 12 / K);

// float_word_tile with 1 <= m <= G groups (m known only at run time).
template <int K, int G, class Emit>
inline bool float_word_narrow(int64_t m, const FloatWordMasks<K>& wm, const float* first, int64_t stride, int64_t q0,
                              int64_t q1, bool half_last, uint8_t* counters, const Emit& emit) {
  if constexpr (G > 1) {
    if (m != G) return float_word_narrow<K, G - 1>(m, wm, first, stride, q0, q1, half_last, counters, emit);
  }
  return float_word_tile<K, G>(wm, first, stride, q0, q1, half_last, counters, emit);
}

// The activation of `vectors` float vectors from each position of [q0, q1), written in place (emit: a RowActivation,
// taken by value so that its bounds stay in registers: through a reference they were reloaded, and a vector spilled,
// for every vector, and the write took several times as long as torch's whole pass). Positions whose channels lie end
// to end are one run, four vectors at a time: with a loop of `vectors` per position the in-place call took 1.2-1.4x a
// count and torch's op on channels_last float32 maps, as one run 0.64-1.01 (Zen 4, two threads).
template <class Emit>
inline void write_after(const Emit emit, const float* base, int64_t stride, int64_t q0, int64_t q1, int64_t vectors) {
  if (16 * vectors == stride) {  // the positions' channels lie end to end: one run, four vectors at a time
    const int64_t first = q0 * stride, n = (q1 - q0) * stride;
    const float* p = base + first;
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
      emit(first + i, _mm512_loadu_ps(p + i), _mm512_loadu_ps(p + i + 16), _mm512_loadu_ps(p + i + 32),
           _mm512_loadu_ps(p + i + 48), ~uint64_t{0});
    }
    for (; i < n; i += 16) emit.one(first + i, _mm512_loadu_ps(p + i), 0xffff);
    return;
  }
  for (int64_t q = q0; q < q1; ++q) {
    const float* row = base + q * stride;
    for (int64_t u = 0; u < vectors; ++u) emit.one(q * stride + 16 * u, _mm512_loadu_ps(row + 16 * u), 0xffff);
  }
}

// word_sweep for `vectors` <= 2 x kFloatWordTile<K> float vectors of float32 channels (float_word_tile): a chunk
// whose float sum is not finite is counted again by exact(qb, qe). emit: as float_word_tile's (it writes every
// chunk's output, counted again or not); an EmitAfter writes each chunk's output once it is counted, in chunks of at
// most kAfterChunkBytes, so that the write reads them from L2.
template <int K, class I, class Exact, class Emit = NoEmit>
void float_word_sweep(const FloatWordMasks<K>& wm, int64_t vectors, const float* base, int64_t stride, int64_t q0,
                      int64_t q1, I* slots, int64_t nslots, uint8_t* counters, Exact&& exact,
                      const Emit& emit = Emit{}) {
  const int64_t groups = ceil_div(vectors, 2);
  const bool half_last = vectors % 2 != 0;
  const int64_t chunk = kEmitsAfter<Emit> ? after_chunk_positions(64 * vectors) : 65535;
  for (int64_t cb = q0; cb < q1; cb += chunk) {
    const int64_t ce = std::min(q1, cb + chunk);
    bool finite;
    if constexpr (kEmitsAfter<Emit>) {
      finite = float_word_narrow<K, kFloatWordTile<K>>(groups, wm, base, stride, cb, ce, half_last, counters, NoEmit{});
    } else {
      finite = float_word_narrow<K, kFloatWordTile<K>>(groups, wm, base, stride, cb, ce, half_last, counters, emit);
    }
    if (finite) {
      add_word_counters<K>(groups, vectors, counters, ce - cb, slots, nslots);
    } else {
      exact(cb, ce);
    }
    if constexpr (kEmitsAfter<Emit>) {  // in place: the chunk is counted, so its output may now overwrite it
      write_after(emit.after, base, stride, cb, ce, vectors);
    }
  }
}
#endif
#endif

}  // namespace
}  // namespace nepenthe
