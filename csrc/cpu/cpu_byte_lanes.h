// Byte-lane channel counters (byte_sweep; channel path, float compute, AVX-512): 64 channels share one 64-byte row
// of uint8 counters per comparison.
//
// Internal to count_cpu.cpp, the one translation unit of the CPU kernels: include it only there (everything here
// is in an anonymous namespace).
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cpu_bitmaps.h"
#include "cpu_packed_masks.h"
#include "cpu_row_signs.h"
#include "cpu_simd.h"

namespace nepenthe {
namespace {

#if defined(__AVX512F__)
// Where byte_sweep keeps the counter row of comparison j and group g while it sweeps a block: in L1, or for a
// single group in registers (no store-to-load chain through L1 from one position to the next; channels_last
// fp16/bf16 with 64 channels measured 35-40% faster).
struct RowsInMemory {
  uint8_t* counters;
  int64_t groups;
  __m512i get(int j, int64_t g) const { return _mm512_loadu_si512(counters + 64 * (j * groups + g)); }
  void set(int j, int64_t g, __m512i v) { _mm512_storeu_si512(counters + 64 * (j * groups + g), v); }
  void done() {}
};

template <int A>
struct RowsInRegisters {
  uint8_t* counters;
  __m512i r[A] = {};
  __m512i get(int j, int64_t) const { return r[j]; }
  void set(int j, int64_t, __m512i v) { r[j] = v; }
  void done() {
    for (int j = 0; j < A; ++j) _mm512_storeu_si512(counters + 64 * j, r[j]);
  }
};

// Byte-lane channel counters (channel path, float compute, AVX-512): 64 channels (four vectors) share one 64-byte
// row of uint8 counters per comparison; the four vectors' comparison masks are joined into one 64-bit mask that
// adds 1 to the lanes where it is set. The counters (kAcc x groups x 64 bytes) stay in L1 while a block of at
// most 255 positions (a uint8 counter never wraps) is swept position by position, each position's channels in
// memory order, then widen into the item's int32 lane counters. Per 64 channels and comparison: one counter
// load and store, instead of four of each for int32 lanes, and no re-reading of the positions.
//
// kSign: threshold 0 is 0.0 (ReLU and its kin), counted from the signs of the values' bits instead of four
// comparisons and three mask joins. Float bits read as int32 and packed twice with signed saturation keep their
// sign, so four vectors become 64 signed bytes that are > 0 exactly for the values > 0, and for NaN with a clear
// sign bit: a block that holds NaN is counted again with comparisons. Packing works within 128-bit lanes, so byte
// 16i + 4v + e holds channel 16v + 4i + e (vector v, lane 4i + e); the counters go back to channel order when read.
//
// kWords (float32, no ties, thresholds that FloatWordMasks counts exactly): the thresholds not counted from signs
// are compared as the values rounded up to bfloat16, 32 channels per integer compare (two per 64 channels, where
// float compares take four and their masks three joins). A block that may hold NaN counts those rows again with
// float compares, as it does the sign row.
//
// emit(q * stride + 64 * g, x0, x1, x2, x3, live) gets the four vectors of group g at position q as they are read:
// NoEmit, or for float32 a RowActivation, which writes the fused output at the same offset from its own base.
//
// ms, wm and emit are taken by value, so that their thresholds stay in registers: the counter stores (512-bit
// vector types, which may alias anything) would make the loop reload them through a reference each time round.
template <class S, int K, bool kTies, bool kSign, bool kWords = false, class I, class Emit = NoEmit>
void byte_sweep(const MaskSet<K, kTies> ms, const S* base, int64_t stride, int64_t q0, int64_t q1, int64_t groups,
                I* slots, int64_t nslots, uint8_t* counters, bool prefetch, const FloatWordMasks<K> wm,
                const Emit emit = Emit{}) {
  constexpr int A = MaskSet<K, kTies>::kAcc;
  static_assert(!kWords || (std::is_same_v<S, float> && !kTies), "words: float32 values, no ties");
  const __m512i minus_one = _mm512_set1_epi8(-1);
  const __m512i upper = FloatWordMasks<K>::upper_words(), up = FloatWordMasks<K>::round_up();
  auto bump = [&](auto& rows, int j, int64_t g, __mmask16 m0, __mmask16 m1, __mmask16 m2, __mmask16 m3) {
    const __mmask64 m = _mm512_kunpackd(_mm512_kunpackw(m3, m2), _mm512_kunpackw(m1, m0));
    const __m512i c = rows.get(j, g);
    rows.set(j, g, _mm512_mask_sub_epi8(c, m, c, minus_one));
  };
  auto lanes = [&](const S* p) {
    const auto v = load_vec<S>(p);
    return reinterpret_cast<const __m512&>(v);
  };
  // 16 KiB ahead rather than 4: ResNet-18 layer1 channels_last float32 (51 MB, one group in registers) measured
  // 14-16% faster in four A/B runs; float16/bfloat16 and the other layouts did not move.
  const int64_t ahead = rows_ahead(stride, sizeof(S), 16 << 10);
  alignas(64) uint8_t order[64];  // channel ch of a sign-counted row sits at byte order[ch]
  for (int ch = 0; ch < 64; ++ch) order[ch] = static_cast<uint8_t>(16 * ((ch >> 2) & 3) + 4 * (ch >> 4) + (ch & 3));
  for (int64_t qb = q0; qb < q1; qb += 255) {
    const int64_t qe = std::min(q1, qb + 255);
    std::memset(counters, 0, static_cast<size_t>(64 * A * groups));
    // A NaN guard, as in bitmap_slab: valid counts are the block's positions unless a float sum of its values per
    // lane is NaN or infinite; then counter row 0 counts the valid values exactly (a second, rare pass). Each group's
    // four vectors are summed as a tree and added into one of two chains, so that a chain takes one add per group:
    // four chains of one add per vector made each group wait on the adds' latency. Against an ordered comparison
    // per vector, float32 with one threshold from the caches (Zen 4, ab.sh): 0.76-0.90 of the time for 256-2048
    // channels; with four chains it had been 4-5% slower on Zen 5 (and 1.11-1.30x on Zen 4). Float16/bfloat16 (four
    // chains): 15-32% faster than the comparison, float32 with two thresholds 12%.
    __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();
    auto sweep = [&](auto& rows, auto prefetching) {
      for (int64_t q = qb; q < qe; ++q) {
        const S* row = base + q * stride;
        for (int64_t g = 0; g < groups; ++g) {
          if constexpr (decltype(prefetching)::value) {
            for (int64_t b = 0; b < 64 * static_cast<int64_t>(sizeof(S)); b += 64) {
              prefetch_line(reinterpret_cast<const char*>(row + 64 * g + ahead) + b);
            }
          }
          const __m512 x0 = lanes(row + 64 * g), x1 = lanes(row + 64 * g + 16);
          const __m512 x2 = lanes(row + 64 * g + 32), x3 = lanes(row + 64 * g + 48);
          emit(q * stride + 64 * g, x0, x1, x2, x3, ~uint64_t{0});
          const __m512 sum = _mm512_add_ps(_mm512_add_ps(x0, x1), _mm512_add_ps(x2, x3));
          if (g & 1) {
            sum1 = _mm512_add_ps(sum1, sum);
          } else {
            sum0 = _mm512_add_ps(sum0, sum);
          }
          if constexpr (kSign) {
            const __mmask64 m = positive_bytes(x0, x1, x2, x3);
            const __m512i c = rows.get(1, g);
            rows.set(1, g, _mm512_mask_sub_epi8(c, m, c, minus_one));
          }
          if constexpr (kWords) {
            const __m512i w0 = FloatWordMasks<K>::rounded_words(x0, x1, upper, up);
            const __m512i w1 = FloatWordMasks<K>::rounded_words(x2, x3, upper, up);
            for (int k = kSign ? 1 : 0; k < K; ++k) {
              const __mmask64 m =
                  _mm512_kunpackd(_mm512_cmpgt_epi16_mask(w1, wm.t[k]), _mm512_cmpgt_epi16_mask(w0, wm.t[k]));
              const __m512i c = rows.get(1 + k, g);
              rows.set(1 + k, g, _mm512_mask_sub_epi8(c, m, c, minus_one));
            }
            continue;
          }
          // The compare-and-bump calls stay spelled out: one helper taking the comparison as a lambda measured 4%
          // slower at 2 threads (MobileNet-V2 last channels_last, two thresholds).
          for (int k = kSign ? 1 : 0; k < K; ++k) {
            const __m512 t = ms.g[k];
            bump(rows, 1 + k, g, _mm512_cmp_ps_mask(x0, t, _CMP_GT_OQ), _mm512_cmp_ps_mask(x1, t, _CMP_GT_OQ),
                 _mm512_cmp_ps_mask(x2, t, _CMP_GT_OQ), _mm512_cmp_ps_mask(x3, t, _CMP_GT_OQ));
          }
          if constexpr (kTies) {
            for (int k = 0; k < K; ++k) {
              const __m512 t = ms.t[k];
              bump(rows, 1 + K + k, g, _mm512_cmp_ps_mask(x0, t, _CMP_EQ_OQ), _mm512_cmp_ps_mask(x1, t, _CMP_EQ_OQ),
                   _mm512_cmp_ps_mask(x2, t, _CMP_EQ_OQ), _mm512_cmp_ps_mask(x3, t, _CMP_EQ_OQ));
            }
          }
        }
      }
      rows.done();
    };
    RowsInMemory in_memory{counters, groups};
    if (groups == 1) {
      RowsInRegisters<A> in_registers{counters};
      prefetch ? sweep(in_registers, std::true_type{}) : sweep(in_registers, std::false_type{});
    } else {
      prefetch ? sweep(in_memory, std::true_type{}) : sweep(in_memory, std::false_type{});
    }
    const auto positions = static_cast<decltype(I{}[0] + 0)>(qe - qb);
    const bool exact_valid = !all_finite(_mm512_add_ps(sum0, sum1));  // the block may hold NaN
    // then threshold 0 is counted again with comparisons, in channel order, and with kWords every threshold
    const bool recount = (kSign || kWords) && exact_valid;
    constexpr int kRecount = kWords ? K : 1;  // comparisons 1..kRecount, when recount
    if (recount) std::memset(counters + 64 * groups, 0, static_cast<size_t>(64 * groups * kRecount));
    if (exact_valid) {
      for (int64_t q = qb; q < qe; ++q) {
        const S* row = base + q * stride;
        for (int64_t g = 0; g < groups; ++g) {
          const __m512 x0 = lanes(row + 64 * g), x1 = lanes(row + 64 * g + 16);
          const __m512 x2 = lanes(row + 64 * g + 32), x3 = lanes(row + 64 * g + 48);
          bump(in_memory, 0, g, _mm512_cmp_ps_mask(x0, x0, _CMP_ORD_Q), _mm512_cmp_ps_mask(x1, x1, _CMP_ORD_Q),
               _mm512_cmp_ps_mask(x2, x2, _CMP_ORD_Q), _mm512_cmp_ps_mask(x3, x3, _CMP_ORD_Q));
          for (int k = 0; recount && k < kRecount; ++k) {
            const __m512 t = ms.g[k];
            bump(in_memory, 1 + k, g, _mm512_cmp_ps_mask(x0, t, _CMP_GT_OQ), _mm512_cmp_ps_mask(x1, t, _CMP_GT_OQ),
                 _mm512_cmp_ps_mask(x2, t, _CMP_GT_OQ), _mm512_cmp_ps_mask(x3, t, _CMP_GT_OQ));
          }
        }
      }
    }
    if constexpr (kEmitsAfter<Emit>) {  // in place: the block is counted, so its output may now overwrite it
      for (int64_t q = qb; q < qe; ++q) {
        const S* row = base + q * stride;
        for (int64_t g = 0; g < groups; ++g) {
          emit.after(q * stride + 64 * g, lanes(row + 64 * g), lanes(row + 64 * g + 16), lanes(row + 64 * g + 32),
                     lanes(row + 64 * g + 48), ~uint64_t{0});
        }
      }
    }
    for (int j = 0; j < A; ++j) {
      for (int64_t g = 0; g < groups; ++g) {
        if (j == 0 && !exact_valid) {
          for (int m = 0; m < 4; ++m) slots[4 * g + m] += positions;
          continue;
        }
        __m512i bytes = _mm512_loadu_si512(counters + 64 * (j * groups + g));
        if (kSign && j == 1 && !recount) {
#if defined(__AVX512VBMI__)
          bytes = _mm512_permutexvar_epi8(_mm512_load_si512(order), bytes);
#else
          alignas(64) uint8_t packed[64], ordered[64];
          _mm512_store_si512(packed, bytes);
          for (int ch = 0; ch < 64; ++ch) ordered[ch] = packed[order[ch]];
          bytes = _mm512_load_si512(ordered);
#endif
        }
        // Each quarter of the 64 counters widens to one vector of 16 int32 lanes (spelled out: the extract takes
        // an immediate, which a loop index is only once the loop is unrolled).
        const __m512i wide[4] = {_mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(bytes, 0)),
                                 _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(bytes, 1)),
                                 _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(bytes, 2)),
                                 _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(bytes, 3))};
        for (int m = 0; m < 4; ++m) {
          I w;
          std::memcpy(&w, &wide[m], sizeof w);
          slots[j * nslots + 4 * g + m] += w;
        }
      }
    }
  }
}
#endif

}  // namespace
}  // namespace nepenthe
