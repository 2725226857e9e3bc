// Bitmaps of the short-row path filled 32 values a step: each comparison of 32 values becomes one 32-bit mask
// instead of a comparison, a mask move and a byte store per vector of 8 (AVX2) or a widening and a comparison per
// vector of 16 (AVX-512). float16/bfloat16 values are compared in their own 16 bits (WordMasks, AVX-512 BW or
// AVX2); with AVX2, float32 values through packed comparisons, threshold 0.0 from their signs (FloatMasks, packed
// as count_row_signs packs them). A block that holds NaN is not filled: bitmap_slab then compares it as floats.
// The row path counts float32 rows with FloatWordMasks' compares too (count_row), popcounting the masks.
//
// Internal to count_cpu.cpp, the one translation unit of the CPU kernels: include it only there (everything here
// is in an anonymous namespace).
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../common/count_args.h"
#include "cpu_row_signs.h"
#include "cpu_words.h"

namespace nepenthe {
namespace {

#if defined(NEP_WORD_LANES)
#define NEP_PACKED_BITMAPS 1
// Bitmap comparisons of float16/bfloat16 values without ties and with 1-2 thresholds: 32 values a step compared in
// their own 16 bits (WordThresholds), each comparison one 32-bit mask: one compare of 32 lanes with AVX-512 BW, or
// two compares of 16 lanes packed into one mask with AVX2. The widening they replace took two widenings and two
// float compares per comparison and 32 values (AVX-512), or four of each and four mask moves (AVX2).
template <int K>
struct WordMasks {
  static constexpr int kVectors = 32 / kWordLanes;  // word vectors per 32 values
  WordVec t[K];
  WordVec inf;
  bool key;
  static constexpr bool usable = true;  // for every threshold
  template <class S>
  WordMasks(const Thresholds<float>& th, S) {
    const WordThresholds wt(th, S{});
    for (int k = 0; k < K; ++k) t[k] = WordOps::splat(wt.bits[k]);
    inf = WordOps::splat(wt.inf);
    key = wt.key;
  }
  // The comparison masks of values [0, m) from p (m <= kBitBlock; words past m read as +0) into bitmaps 1..K of
  // `maps` (bitmap j at j * map_bytes, bit i of a bitmap is value i); false if a value is NaN (then the bitmaps
  // are not usable: NaN would compare above every threshold).
  template <class S>
  bool fill(const S* x, int64_t m, uint8_t* maps, int64_t map_bytes) const {
    const auto* p = reinterpret_cast<const uint16_t*>(x);
    return key ? fill_as<true>(p, m, maps, map_bytes) : fill_as<false>(p, m, maps, map_bytes);
  }
  template <bool kKey>
  bool fill_as(const uint16_t* p, int64_t m, uint8_t* maps, int64_t map_bytes) const {
    WordVec top = WordOps::zero();
    auto step = [&](WordVec (&x)[kVectors], int64_t g) {
      for (WordVec& v : x) {
        top = WordOps::max(top, WordOps::magnitude(v));
        if constexpr (kKey) v = WordOps::key(v);
      }
      for (int k = 0; k < K; ++k) {
        const uint32_t bits = above(x, t[k]);
        std::memcpy(maps + (1 + k) * map_bytes + 4 * g, &bits, sizeof bits);
      }
    };
    int64_t g = 0;
    for (; 32 * g + 32 <= m; ++g) {
      WordVec x[kVectors];
      for (int v = 0; v < kVectors; ++v) x[v] = WordOps::load(p + 32 * g + kWordLanes * v);
      step(x, g);
    }
    if (32 * g < m) {
      WordVec x[kVectors];
      for (int v = 0; v < kVectors; ++v) {
        const int64_t n = std::clamp<int64_t>(m - 32 * g - kWordLanes * v, 0, kWordLanes);
        x[v] = WordOps::load_partial(p + 32 * g + kWordLanes * v, n);
      }
      step(x, g);
    }
    return !WordOps::any_above(top, inf);
  }
  // Bit i set where word i of the 32 in x is above t (signed).
  static uint32_t above(const WordVec (&x)[kVectors], WordVec t) {
#if defined(__AVX512BW__)
    return _mm512_cmpgt_epi16_mask(x[0], t);
#else
    // packing works within 128-bit lanes: bytes [x0 0-7, x1 0-7 | x0 8-15, x1 8-15], put back in order
    const __m256i b = _mm256_packs_epi16(_mm256_cmpgt_epi16(x[0], t), _mm256_cmpgt_epi16(x[1], t));
    return static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_permute4x64_epi64(b, 0xD8)));
#endif
  }
};
#endif

#if defined(NEP_WORD_LANES) && defined(__AVX512F__)
#define NEP_FLOAT_WORDS 1
// Bitmap comparisons of float32 values without ties, against thresholds that are >= 0 and held exactly by
// bfloat16 (0 and 6: ReLU, ReLU6): 32 values a step, two vectors made one of 32 words, one integer compare of 32
// lanes per threshold. A value's bits plus 0xFFFF, upper half, is the value rounded up to bfloat16 (toward +inf
// for values >= 0; a value < 0 stays < 0 and -0.0 becomes -0), and for such a threshold t, rounded(x) > t exactly
// when x > t: rounding up never takes a value <= t above t, which bfloat16 holds, nor one above t below it. On Zen
// 4 every compare into a mask register takes the same port, so two float compares per 16 values with two
// thresholds outran the memory (1.26x a sum's time in a standalone fill, against 1.01 this way).
template <int K>
struct FloatWordMasks {
  __m512i t[K];
  bool usable;  // every threshold is one these compares count exactly
  template <class T>  // float; float64 jobs build one they never use
  explicit FloatWordMasks(const Thresholds<T>& th) : usable(std::is_same_v<T, float>) {
    for (int k = 0; k < K; ++k) {
      const auto g = static_cast<float>(th.greater[k] == 0 ? 0 : th.greater[k]);  // -0: v > -0 exactly when v > +0
      uint32_t b;
      std::memcpy(&b, &g, sizeof b);
      usable = usable && (b & 0xffffu) == 0 && b < 0x7f800000u;  // bfloat16's upper half only; +0 to finite
      t[k] = _mm512_set1_epi16(static_cast<short>(b >> 16));
    }
  }
  // vpermt2w's index of the upper word of each 32-bit lane of two vectors, and the addend that rounds up.
  static __m512i upper_words() {
    alignas(64) static constexpr uint16_t kOdd[32] = {1,  3,  5,  7,  9,  11, 13, 15, 17, 19, 21,
                                                      23, 25, 27, 29, 31, 33, 35, 37, 39, 41, 43,
                                                      45, 47, 49, 51, 53, 55, 57, 59, 61, 63};
    return _mm512_load_si512(kOdd);
  }
  static __m512i round_up() { return _mm512_set1_epi32(0xffff); }
  // The 32 values of x0 then x1 rounded up to bfloat16, in order (upper and up from the two above).
  static __m512i rounded_words(__m512 x0, __m512 x1, __m512i upper, __m512i up) {
    return _mm512_permutex2var_epi16(_mm512_add_epi32(_mm512_castps_si512(x0), up), upper,
                                     _mm512_add_epi32(_mm512_castps_si512(x1), up));
  }
  // As WordMasks::fill: bitmaps 1..K of values [0, m) (values past m read as +0); false if a value is NaN or
  // infinite, or the block's float sum overflows (then the float comparisons count the block). emit.one(i, x, live)
  // gets each vector of values, from position i, with the lanes that hold values: a RowActivation writes the fused
  // output there, for every value, whatever the fill returns.
  template <class Emit = NoEmit>
  bool fill(const float* p, int64_t m, uint8_t* maps, int64_t map_bytes, const Emit& emit = Emit{}) const {
    return fill_in(*this, p, m, maps, map_bytes, emit);
  }
  // The row path's count of n float32 values at p: sums[0] += n (valid), sums[1 + k] += the values
  // above threshold k, 64 values a step, each compare's 32 bits popcounted. False, with nothing added, if the
  // float sum of the row (four chains) is not finite: a NaN or infinity, which the word compares cannot tell
  // apart from numbers, or an overflow. The tail's masked loads fill zeros, which are above no threshold and add
  // nothing to the sums. Three float compares per 16 values took 2.0x a sum's time from L3 (two thresholds).
  // emit: as finite_row64's.
  template <class Emit = NoEmit>
  bool count_row(const float* p, int64_t n, int64_t* sums, const Emit& emit = Emit{}) const {
    return count_row_in(*this, p, n, sums, emit);
  }

 private:
  template <class Emit>
  static bool count_row_in(const FloatWordMasks self, const float* p, int64_t n, int64_t* sums, const Emit& emit) {
    const __m512i upper = in_register(upper_words()), up = round_up();  // not reloaded each step
    int64_t above[K] = {};
    const bool finite = finite_row64(p, n, [&](__m512 x0, __m512 x1, __m512 x2, __m512 x3) {
      const __m512i w0 = rounded_words(x0, x1, upper, up), w1 = rounded_words(x2, x3, upper, up);
      for (int k = 0; k < K; ++k) {
        const __mmask32 m0 = _mm512_cmpgt_epi16_mask(w0, self.t[k]), m1 = _mm512_cmpgt_epi16_mask(w1, self.t[k]);
        above[k] += __builtin_popcountll(_cvtmask64_u64(_mm512_kunpackd(m1, m0)));
      }
    }, emit);
    if (!finite) return false;
    sums[0] += n;
    for (int k = 0; k < K; ++k) sums[1 + k] += above[k];
    return true;
  }

  // Takes the masks and emit by value, and keeps its constants out of lambdas' references: the stores to maps may
  // alias anything whose address is taken, and the loop would reload it every step.
  template <class Emit>
  static bool fill_in(const FloatWordMasks self, const float* p, int64_t m, uint8_t* maps, int64_t map_bytes,
                      const Emit emit) {
    const __m512i upper = upper_words(), up = round_up();
    __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();
    int64_t g = 0;
    for (;; ++g) {
      __m512 x0, x1;
      if (32 * g + 32 <= m) {
        x0 = in_register(_mm512_loadu_ps(p + 32 * g));
        x1 = in_register(_mm512_loadu_ps(p + 32 * g + 16));
        emit.one(32 * g, x0, 0xffff);
        emit.one(32 * g + 16, x1, 0xffff);
      } else if (32 * g < m) {
        const int64_t n = m - 32 * g;  // 1..31
        const auto lo = static_cast<__mmask16>((1u << std::min<int64_t>(n, 16)) - 1);
        const auto hi = static_cast<__mmask16>((1u << std::max<int64_t>(n - 16, 0)) - 1);
        x0 = _mm512_maskz_loadu_ps(lo, p + 32 * g);
        x1 = _mm512_maskz_loadu_ps(hi, p + 32 * g + 16);
        emit.one(32 * g, x0, lo);
        emit.one(32 * g + 16, x1, hi);  // a masked store of no lanes touches no memory
      } else {
        break;
      }
      const __m512i w = rounded_words(x0, x1, upper, up);
      for (int k = 0; k < K; ++k) {
        const uint32_t bits = _mm512_cmpgt_epi16_mask(w, self.t[k]);
        std::memcpy(maps + (1 + k) * map_bytes + 4 * g, &bits, sizeof bits);
      }
      sum0 = _mm512_add_ps(sum0, x0);
      sum1 = _mm512_add_ps(sum1, x1);
    }
    return all_finite(_mm512_add_ps(sum0, sum1));
  }
};

// The packed bitmaps of a job's values: WordMasks for float16/bfloat16 without ties and with 1-2 thresholds,
// FloatWordMasks for float32 without ties (used where its `usable` says); else a placeholder (the bitmaps come
// from float comparisons, which AVX-512 turns into masks directly).
template <class S, int K, bool kTies, class T>
auto packed_masks_if(const Thresholds<T>& th) {
  if constexpr (sizeof(S) == 2 && !kTies && K <= 2) {
    return WordMasks<K>(th, S{});
  } else if constexpr (std::is_same_v<S, float> && !kTies && K >= 2) {
    return FloatWordMasks<K>(th);
  } else {
    return std::nullptr_t{};
  }
}
#elif defined(NEP_WORD_LANES)
// Bitmap comparisons of float32 values without ties: 32 values (four vectors) a step, each comparison's four vector
// masks packed twice with signed saturation and put back in order, one mask move and one store per comparison
// instead of four of each. A threshold of 0.0 is counted from the values' signs, as count_row_signs does: their
// bits read as int32 and packed keep sign and zero, so the packed bytes are > 0 exactly for the values > 0 (and
// for NaN with a clear sign bit). The NaN guard is an unsigned maximum of the bits shifted left by one (the sign
// dropped), above infinity's only for NaN: integer operations, where a float sum per vector competed with the
// packing for the same execution ports (ResNet-18 layer4, one thread: 5.4 us against 7.0 with a sum).
template <int K>
struct FloatMasks {
  __m256 t[K];
  bool sign;  // threshold 0 is 0.0 (or -0.0)
  static constexpr bool usable = true;  // for every threshold
  explicit FloatMasks(const Thresholds<float>& th) : sign(th.greater[0] == 0) {
    for (int k = 0; k < K; ++k) t[k] = _mm256_set1_ps(static_cast<float>(th.greater[k]));
  }
  // As WordMasks::fill: bitmaps 1..K of values [0, m) (values past m read as +0); false if a value is NaN.
  bool fill(const float* p, int64_t m, uint8_t* maps, int64_t map_bytes) const {
    return sign ? fill_as<true>(p, m, maps, map_bytes) : fill_as<false>(p, m, maps, map_bytes);
  }
  template <bool kSign>
  bool fill_as(const float* p, int64_t m, uint8_t* maps, int64_t map_bytes) const {
    // packed_bytes leaves value 8v + 4i + e of the four vectors v at byte 16i + 4v + e; one permutation of 32-bit
    // groups puts the values back in order.
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    auto above = [](__m256 x, __m256 t) { return _mm256_castps_si256(_mm256_cmp_ps(x, t, _CMP_GT_OQ)); };
    auto doubled = [](__m256 x) { return _mm256_add_epi32(_mm256_castps_si256(x), _mm256_castps_si256(x)); };
    __m256i top = _mm256_setzero_si256();  // the largest bits << 1
    auto step = [&](__m256 x0, __m256 x1, __m256 x2, __m256 x3, int64_t g) {
      top = _mm256_max_epu32(top, _mm256_max_epu32(_mm256_max_epu32(doubled(x0), doubled(x1)),
                                                    _mm256_max_epu32(doubled(x2), doubled(x3))));
      for (int k = 0; k < K; ++k) {
        const __m256i bytes = kSign && k == 0
                                  ? positive_bytes(x0, x1, x2, x3)
                                  : packed_bytes(above(x0, t[k]), above(x1, t[k]), above(x2, t[k]), above(x3, t[k]));
        const auto bits = static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_permutevar8x32_epi32(bytes, order)));
        std::memcpy(maps + (1 + k) * map_bytes + 4 * g, &bits, sizeof bits);
      }
    };
    int64_t g = 0;
    for (; 32 * g + 32 <= m; ++g) {
      const float* q = p + 32 * g;
      step(in_register(_mm256_loadu_ps(q)), in_register(_mm256_loadu_ps(q + 8)), in_register(_mm256_loadu_ps(q + 16)),
           in_register(_mm256_loadu_ps(q + 24)), g);
    }
    if (32 * g < m) {
      alignas(32) float tail[32] = {};
      std::memcpy(tail, p + 32 * g, static_cast<size_t>(m - 32 * g) * sizeof(float));
      step(_mm256_load_ps(tail), _mm256_load_ps(tail + 8), _mm256_load_ps(tail + 16), _mm256_load_ps(tail + 24), g);
    }
    const __m256i inf = _mm256_set1_epi32(static_cast<int>(0xff000000u));  // +-inf << 1
    return _mm256_movemask_epi8(_mm256_cmpeq_epi32(_mm256_max_epu32(top, inf), inf)) == -1;
  }
};

// The packed bitmaps of a job's values: WordMasks for float16/bfloat16 without ties and with 1-2 thresholds,
// FloatMasks for float32 without ties; else a placeholder (the bitmaps come from float comparisons).
template <class S, int K, bool kTies, class T>
auto packed_masks_if(const Thresholds<T>& th) {
  if constexpr (sizeof(S) == 2 && !kTies && K <= 2) {
    return WordMasks<K>(th, S{});
  } else if constexpr (std::is_same_v<S, float> && !kTies) {
    return FloatMasks<K>(th);
  } else {
    return std::nullptr_t{};
  }
}
#endif

}  // namespace
}  // namespace nepenthe
