// Byte-lane channel counters for AVX2 (byte_sweep_avx2; channel path, float compute, tensors in the caches): 32
// channels share one 32-byte row of uint8 counters per comparison.
//
// Internal to count_cpu.cpp, the one translation unit of the CPU kernels: include it only there (everything here
// is in an anonymous namespace).
#pragma once

#include "cpu_row_signs.h"

#if defined(__AVX2__) && !defined(__AVX512F__)
#define NEP_BYTE_LANES_AVX2 1

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cpu_simd.h"

namespace nepenthe {
namespace {

// AVX2's register tiles read a block's positions a few hundred bytes at a time, at a stride of the whole channel
// vector: on channels_last 7x7 maps (512 and 1280 channels) they took 1.7-2.5x the time of x.sum(), bound by those
// strided reads rather than by their comparisons (session 14: a third fewer comparisons changed nothing). Here each
// position's channels are read in memory order, 32 at a time (four vectors): every comparison of the four vectors
// is packed twice with signed saturation (packed_bytes) into one vector of 32 bytes, -1 where true, and subtracted
// from that comparison's row of uint8 counters, which stay in L1 over a block of at most 255 positions (a counter
// never wraps) and then widen into the item's int32 lane counters.
//
// Valid values are not compared: a NaN guard (below) finds whether a block holds NaN, and one that does counts its
// valid values again with comparisons (a second, rare pass). kSign: threshold 0 is 0.0, counted from the signs of
// the values' bits (positive_bytes: one byte comparison for 32 values, where NaN with a clear sign bit also passes;
// the guard's second pass then counts threshold 0 with comparisons too).
//
// Packing works within 128-bit halves: byte 16h + 4v + e holds lane 4h + e of vector v, so the dword 4h + v holds
// channels 8v + 4h .. 8v + 4h + 3; a dword permutation puts a row back in channel order when it widens.
template <class S, int K, bool kTies, bool kSign, class Ctr, class I>
void byte_sweep_avx2(const Ctr& c, const S* base, int64_t stride, int64_t q0, int64_t q1, int64_t groups, I* slots,
                     int64_t nslots, uint8_t* counters) {
  constexpr int A = 1 + K * (kTies ? 2 : 1);  // counter rows: valid, then as Counter's comparisons
  // The NaN guard: with no float comparison in the loop (ReLU's sign bytes alone), an unsigned maximum of the bits
  // shifted left by one (above infinity's only for NaN), as FloatMasks does; else float sums, which also send blocks
  // holding an infinity down the exact path. ab.sh: the integer guard 0.82-0.95 of the time with ReLU's threshold
  // alone, 1.04-1.08 with a second threshold (its float comparisons and packs then compete with it).
  constexpr bool kIntGuard = kSign && K == 1 && !kTies;
  auto doubled = [](__m256 x) { return _mm256_add_epi32(_mm256_castps_si256(x), _mm256_castps_si256(x)); };
  auto lanes = [](const S* p) {
    const auto v = load_vec<S>(p);
    return reinterpret_cast<const __m256&>(v);
  };
  auto row_of = [&](int j, int64_t g) { return reinterpret_cast<__m256i*>(counters + 32 * (j * groups + g)); };
  auto subtract = [&](int j, int64_t g, __m256i bytes) {  // -1 where true: counts one
    __m256i* r = row_of(j, g);
    _mm256_storeu_si256(r, _mm256_sub_epi8(_mm256_loadu_si256(r), bytes));
  };
  auto bump = [&](int j, int64_t g, __m256 m0, __m256 m1, __m256 m2, __m256 m3) {
    subtract(j, g, packed_bytes(_mm256_castps_si256(m0), _mm256_castps_si256(m1), _mm256_castps_si256(m2),
                                _mm256_castps_si256(m3)));
  };
  auto greater = [&](int j, int64_t g, __m256 x0, __m256 x1, __m256 x2, __m256 x3, __m256 t) {
    bump(j, g, _mm256_cmp_ps(x0, t, _CMP_GT_OQ), _mm256_cmp_ps(x1, t, _CMP_GT_OQ), _mm256_cmp_ps(x2, t, _CMP_GT_OQ),
         _mm256_cmp_ps(x3, t, _CMP_GT_OQ));
  };
  const __m256i channel_order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t qb = q0; qb < q1; qb += 255) {
    const int64_t qe = std::min(q1, qb + 255);
    std::memset(counters, 0, static_cast<size_t>(32 * A * groups));
    __m256i top = _mm256_setzero_si256();  // kIntGuard: the largest bits << 1
    __m256 sum0 = _mm256_setzero_ps(), sum1 = sum0, sum2 = sum0, sum3 = sum0;  // else: float sums
    for (int64_t q = qb; q < qe; ++q) {
      const S* row = base + q * stride;
      for (int64_t g = 0; g < groups; ++g) {
        const __m256 x0 = lanes(row + 32 * g), x1 = lanes(row + 32 * g + 8);
        const __m256 x2 = lanes(row + 32 * g + 16), x3 = lanes(row + 32 * g + 24);
        if constexpr (kIntGuard) {
          top = _mm256_max_epu32(top, _mm256_max_epu32(_mm256_max_epu32(doubled(x0), doubled(x1)),
                                                        _mm256_max_epu32(doubled(x2), doubled(x3))));
        } else {
          sum0 = _mm256_add_ps(sum0, x0);
          sum1 = _mm256_add_ps(sum1, x1);
          sum2 = _mm256_add_ps(sum2, x2);
          sum3 = _mm256_add_ps(sum3, x3);
        }
        if constexpr (kSign) subtract(1, g, positive_bytes(x0, x1, x2, x3));
        for (int k = kSign ? 1 : 0; k < K; ++k) {
          greater(1 + k, g, x0, x1, x2, x3, reinterpret_cast<const __m256&>(c.g[k]));
        }
        if constexpr (kTies) {
          for (int k = 0; k < K; ++k) {
            const __m256 t = reinterpret_cast<const __m256&>(c.t[k]);
            bump(1 + K + k, g, _mm256_cmp_ps(x0, t, _CMP_EQ_OQ), _mm256_cmp_ps(x1, t, _CMP_EQ_OQ),
                 _mm256_cmp_ps(x2, t, _CMP_EQ_OQ), _mm256_cmp_ps(x3, t, _CMP_EQ_OQ));
          }
        }
      }
    }
    bool exact;
    if constexpr (kIntGuard) {
      const __m256i inf = _mm256_set1_epi32(static_cast<int>(0xff000000u));  // +-inf << 1
      exact = _mm256_movemask_epi8(_mm256_cmpeq_epi32(_mm256_max_epu32(top, inf), inf)) != -1;
    } else {
      const __m256 s = _mm256_add_ps(_mm256_add_ps(sum0, sum1), _mm256_add_ps(sum2, sum3));
      exact = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_sub_ps(s, s), _mm256_setzero_ps(), _CMP_NEQ_UQ)) != 0;
    }
    if (exact) {  // NaN or infinity in this block: valid values, and threshold 0 when signed, by comparisons
      if constexpr (kSign) std::memset(counters + 32 * groups, 0, static_cast<size_t>(32 * groups));
      for (int64_t q = qb; q < qe; ++q) {
        const S* row = base + q * stride;
        for (int64_t g = 0; g < groups; ++g) {
          const __m256 x0 = lanes(row + 32 * g), x1 = lanes(row + 32 * g + 8);
          const __m256 x2 = lanes(row + 32 * g + 16), x3 = lanes(row + 32 * g + 24);
          bump(0, g, _mm256_cmp_ps(x0, x0, _CMP_ORD_Q), _mm256_cmp_ps(x1, x1, _CMP_ORD_Q),
               _mm256_cmp_ps(x2, x2, _CMP_ORD_Q), _mm256_cmp_ps(x3, x3, _CMP_ORD_Q));
          if constexpr (kSign) greater(1, g, x0, x1, x2, x3, reinterpret_cast<const __m256&>(c.g[0]));
        }
      }
    }
    const auto positions = static_cast<int32_t>(qe - qb);
    for (int j = 0; j < A; ++j) {
      for (int64_t g = 0; g < groups; ++g) {
        if (j == 0 && !exact) {
          for (int m = 0; m < 4; ++m) slots[4 * g + m] += positions;
          continue;
        }
        const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_loadu_si256(row_of(j, g)), channel_order);
        const __m128i lo = _mm256_castsi256_si128(bytes), hi = _mm256_extracti128_si256(bytes, 1);
        const __m256i wide[4] = {_mm256_cvtepu8_epi32(lo), _mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)),
                                 _mm256_cvtepu8_epi32(hi), _mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))};
        for (int m = 0; m < 4; ++m) {
          I w;
          std::memcpy(&w, &wide[m], sizeof w);
          slots[j * nslots + 4 * g + m] += w;
        }
      }
    }
  }
}

}  // namespace
}  // namespace nepenthe

#endif
