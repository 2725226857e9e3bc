// Row path, float32 rows against the single threshold 0.0 (ReLU), no ties: the values > 0 counted from the signs
// of their bits (count_row_signs, AVX-512 BW or AVX2). Also the AVX-512 pieces that the bitmap and byte-lane paths
// share with it: the NaN guards' test (all_finite) and the sign bytes (positive_bytes).
//
// Internal to count_cpu.cpp, the one translation unit of the CPU kernels: include it only there (everything here
// is in an anonymous namespace).
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>

#include "cpu_simd.h"

namespace nepenthe {
namespace {

#if defined(__AVX512F__)
// False if any lane of a float sum is NaN or infinite: the NaN guards' test (a NaN among the summed values, or an
// infinity, or an overflow; the last two only send a block down the exact path for nothing).
inline bool all_finite(__m512 s) {
  return _mm512_cmp_ps_mask(_mm512_sub_ps(s, s), _mm512_setzero_ps(), _CMP_NEQ_UQ) == 0;
}

// What finite_row64 hands each group of values besides step, and the bitmap fills each vector: nothing (a count
// alone). RowActivation (cpu_fused_output.h) is the other kind, which writes a fused activation.
struct NoEmit {
  static constexpr bool kWrites = false;
  void operator()(int64_t, __m512, __m512, __m512, __m512, uint64_t) const {}
  void one(int64_t, __m512, __mmask16) const {}
};

// In place (y is x, Job::in_place), the channel lanes' fused output (`after`, a RowActivation): nothing as each vector
// is read, since a block that may hold NaN is read again to be counted exactly; byte_sweep and float_word_sweep hand
// each block's vectors to `after` once the block is counted, from the caches.
template <class Emit>
struct EmitAfter {
  static constexpr bool kWrites = true;
  Emit after;
  void operator()(int64_t, __m512, __m512, __m512, __m512, uint64_t) const {}
  void one(int64_t, __m512, __mmask16) const {}
};
template <class Emit>
inline constexpr bool kEmitsAfter = false;
template <class Emit>
inline constexpr bool kEmitsAfter<EmitAfter<Emit>> = true;

// Calls step(x0, x1, x2, x3) on the n float32 values at p, 64 at a time in four vectors; the tail is read with masked
// loads that fill zeros (which read nothing past n). emit(i, x0, x1, x2, x3, live) gets the same vectors with the
// position i of x0's first value and the lanes that hold values (bit l: value i + l): the fused activation writes
// its output there (RowActivation), so a row is read once for both. True if a float sum of the values (four
// chains) is finite: false for a NaN or an infinity among them, or an overflow. The rows of count_row_signs and
// FloatWordMasks::count_row.
template <class Step, class Emit = NoEmit>
inline bool finite_row64(const float* p, int64_t n, Step&& step, const Emit& emit = Emit{}) {
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  auto add = [&](int64_t i, __m512 x0, __m512 x1, __m512 x2, __m512 x3, uint64_t live) {
    s0 = _mm512_add_ps(s0, x0);
    s1 = _mm512_add_ps(s1, x1);
    s2 = _mm512_add_ps(s2, x2);
    s3 = _mm512_add_ps(s3, x3);
    step(x0, x1, x2, x3);
    emit(i, x0, x1, x2, x3, live);
  };
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    add(i, in_register(_mm512_loadu_ps(p + i)), in_register(_mm512_loadu_ps(p + i + 16)),
        in_register(_mm512_loadu_ps(p + i + 32)), in_register(_mm512_loadu_ps(p + i + 48)), ~uint64_t{0});
  }
  if (i < n) {
    const uint64_t m = (uint64_t{1} << (n - i)) - 1;  // n - i < 64
    add(i, _mm512_maskz_loadu_ps(static_cast<__mmask16>(m), p + i),
        _mm512_maskz_loadu_ps(static_cast<__mmask16>(m >> 16), p + i + 16),
        _mm512_maskz_loadu_ps(static_cast<__mmask16>(m >> 32), p + i + 32),
        _mm512_maskz_loadu_ps(static_cast<__mmask16>(m >> 48), p + i + 48), m);
  }
  return all_finite(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}
#endif

#if defined(__AVX512BW__)
// Bit b set where byte b of four float32 vectors packed twice with signed saturation is > 0: the values > 0 (and
// NaN with a clear sign bit). Packing works within 128-bit lanes, so bit 16i + 4v + e is value 16v + 4i + e.
inline __mmask64 positive_bytes(__m512 x0, __m512 x1, __m512 x2, __m512 x3) {
  const __m512i lo = _mm512_packs_epi32(_mm512_castps_si512(x0), _mm512_castps_si512(x1));
  const __m512i hi = _mm512_packs_epi32(_mm512_castps_si512(x2), _mm512_castps_si512(x3));
  return _mm512_cmpgt_epi8_mask(_mm512_packs_epi16(lo, hi), _mm512_setzero_si512());
}

#define NEP_SIGN_ROWS 1
// Row path, float32 with the single threshold 0.0 (ReLU), no ties: a row's values > 0 are counted from the signs
// of their bits, as in byte_sweep's kSign: 64 values packed to 64 signed bytes, compared with 0 into one 64-bit
// mask, popcounted. Valid values are the row's length unless a float sum of its values (four chains) is NaN or
// infinite: then nothing is added and the row returns false, to be counted the exact way. The tail is read with
// masked loads that fill zeros, which are not > 0 and add nothing to the sums. kPrefetch is ignored here.
// emit: as finite_row64's.
template <bool kPrefetch, class Emit = NoEmit>
inline bool count_row_signs(const float* p, int64_t n, int64_t& valid, int64_t& positive, const Emit& emit = Emit{}) {
  int64_t pos = 0;
  const auto step = [&](__m512 x0, __m512 x1, __m512 x2, __m512 x3) {
    pos += __builtin_popcountll(positive_bytes(x0, x1, x2, x3));
  };
  const bool finite = finite_row64(p, n, step, emit);
  if (!finite) return false;
  valid += n;
  positive += pos;
  return true;
}
#endif

#if defined(__AVX2__) && !defined(__AVX512F__)
#define NEP_SIGN_ROWS 1
// count_row_signs for AVX2 (see the AVX-512 version above): 32 values packed twice with signed saturation to 32
// signed bytes, compared with 0 into one 32-bit mask, popcounted (the packing's lane order does not matter to a
// count). Per 32 values 15 instructions instead of 20 comparisons and subtractions: ResNet-18 layer1 NCHW float32
// measured 1.15x faster, with kPrefetch (51 MB maps 4% faster than without; kPrefetchBytes ahead, where 8 KiB
// measured 3-13% faster than 4 KiB on ResNet-18 layer1 in a torch process).
// The 32-bit lanes of four vectors packed twice with signed saturation into 32 signed bytes, each keeping its
// lane's sign and zero. Packing works within 128-bit lanes: byte 16i + 4v + e holds lane 4i + e of vector v.
inline __m256i packed_bytes(__m256i a, __m256i b, __m256i c, __m256i d) {
  return _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
}

// Bytes set (-1) where packed_bytes of four float32 vectors' bits is > 0: the values > 0 (and NaN with a clear sign
// bit), in packed_bytes' order.
inline __m256i positive_bytes(__m256 x0, __m256 x1, __m256 x2, __m256 x3) {
  const __m256i b = packed_bytes(_mm256_castps_si256(x0), _mm256_castps_si256(x1), _mm256_castps_si256(x2),
                                 _mm256_castps_si256(x3));
  return _mm256_cmpgt_epi8(b, _mm256_setzero_si256());
}

template <bool kPrefetch>
inline bool count_row_signs(const float* p, int64_t n, int64_t& valid, int64_t& positive) {
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t pos = 0;
  auto add32 = [&](__m256 x0, __m256 x1, __m256 x2, __m256 x3) {
    s0 = _mm256_add_ps(s0, x0);
    s1 = _mm256_add_ps(s1, x1);
    s2 = _mm256_add_ps(s2, x2);
    s3 = _mm256_add_ps(s3, x3);
    pos += __builtin_popcount(static_cast<uint32_t>(_mm256_movemask_epi8(positive_bytes(x0, x1, x2, x3))));
  };
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    if constexpr (kPrefetch) {
      constexpr int64_t kAhead = kPrefetchBytes / sizeof(float);  // two lines per 32 values
      prefetch_line(reinterpret_cast<const char*>(p + i + kAhead));
      prefetch_line(reinterpret_cast<const char*>(p + i + kAhead + 16));
    }
    add32(in_register(_mm256_loadu_ps(p + i)), in_register(_mm256_loadu_ps(p + i + 8)),
          in_register(_mm256_loadu_ps(p + i + 16)), in_register(_mm256_loadu_ps(p + i + 24)));
  }
  if (i < n) {  // masked loads fill zeros, which are not > 0 and add nothing to the sums
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256 x[4];
    for (int v = 0; v < 4; ++v) {
      const __m256i left = _mm256_set1_epi32(static_cast<int>(std::clamp<int64_t>(n - i - 8 * v, 0, 8)));
      x[v] = _mm256_maskload_ps(p + i + 8 * v, _mm256_cmpgt_epi32(left, lane));
    }
    add32(x[0], x[1], x[2], x[3]);
  }
  const __m256 s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
  if (_mm256_movemask_ps(_mm256_cmp_ps(_mm256_sub_ps(s, s), _mm256_setzero_ps(), _CMP_NEQ_UQ)) != 0) return false;
  valid += n;
  positive += pos;
  return true;
}
#endif

}  // namespace
}  // namespace nepenthe
