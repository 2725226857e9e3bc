// float16/bfloat16 values compared in their own 16 bits (word lanes), with no widening to float32: the thresholds
// as 16-bit keys (WordThresholds), relu and hardtanh written in 16 bits (activate_words), and the word-lane vector
// operations of AVX-512 BW and AVX2 (WordOps). The row, channel and short-row bitmap paths build on them.
//
// Internal to count_cpu.cpp, the one translation unit of the CPU kernels: include it only there (everything here
// is in an anonymous namespace).
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../common/count_args.h"
#include "cpu_activation.h"
#include "cpu_simd.h"
#include "cpu_storage.h"

namespace nepenthe {
namespace {

// 16-bit values compared in their own bits (word lanes), with no widening to float32. A 16-bit float's bits order
// like its value once read as a key: the sign-magnitude bits with the magnitude flipped for negative values (key),
// or, when every threshold is >= +0, simply as a signed integer (a negative value's sign bit makes it smaller than
// any non-negative threshold). A threshold is replaced by the largest 16-bit value at or below it (-0 read as +0),
// so for a 16-bit value v, v > t exactly when key(v) > key(t16). NaN's bits lie beyond infinity's: a positive NaN
// would count above every threshold, so a run whose largest magnitude bits exceed infinity's is counted again
// exactly (float32 comparisons).
struct WordThresholds {
  uint16_t bits[kMaxThresholds];  // key of the largest 16-bit value <= greater[k]
  uint16_t inf;                   // magnitude bits of +infinity
  bool key;                       // some threshold is below -0: compare keys, not raw bits
  template <class S>
  WordThresholds(const Thresholds<float>& th, S) : inf(std::is_same_v<S, BF16> ? 0x7f80 : 0x7c00), key(false) {
    for (int k = 0; k < th.k; ++k) {
      uint16_t b = at_or_below<S>(th.greater[k]);
      if (b == 0x8000) b = 0;  // -0: v > -0 exactly when v > +0
      key = key || (b & 0x8000) != 0;
      bits[k] = b;
    }
    if (key) {
      for (int k = 0; k < th.k; ++k) bits[k] = key_of(bits[k]);
    }
  }
  static uint16_t key_of(uint16_t b) { return (b & 0x8000) ? b ^ 0x7fff : b; }
  static float value(uint16_t b, BF16) {
    const uint32_t w = static_cast<uint32_t>(b) << 16;
    float f;
    std::memcpy(&f, &w, sizeof f);
    return f;
  }
  static float value(uint16_t b, Half) {
    Half h;
    std::memcpy(&h, &b, sizeof h);
    return static_cast<float>(h);
  }
  // The largest 16-bit S value <= t (t is not NaN): a nearby value (truncated or rounded), stepped down once if
  // it lies above t.
  template <class S>
  static uint16_t at_or_below(float t) {
    uint16_t b;
    if constexpr (std::is_same_v<S, BF16>) {
      uint32_t w;
      std::memcpy(&w, &t, sizeof w);
      b = static_cast<uint16_t>(w >> 16);  // toward zero
    } else {
      const Half h = static_cast<Half>(t);  // nearest; beyond the largest finite value, infinity
      std::memcpy(&b, &h, sizeof b);
    }
    if (value(b, S{}) > t) b = (b & 0x7fff) == 0 ? 0x8001 : (b & 0x8000) ? b + 1 : b - 1;
    return b;
  }
};

// relu and hardtanh of float16/bfloat16 values compared in their own 16 bits, as keys (WordThresholds), with no
// widening to float32 and no rounding back: a value below the lower bound becomes the bound (rounded to nearest, as
// torch rounds it), one above the upper bound that bound, and NaN and -0.0 stay (bit-exact with torch's CPU
// kernels). x < lo exactly when key(x) <= key of the largest 16-bit value below lo; x > hi exactly when key(x) >
// key of the largest at or below hi; NaN is neither. One vector of kVecBytes at a time (operator()).
template <class S>
struct WordActivation {
  typedef int16_t I16 __attribute__((vector_size(kVecBytes)));
  I16 lo_bits, hi_bits;
  int16_t lo_key, hi_key, inf;
  explicit WordActivation(const Act<float>& act) : inf(std::is_same_v<S, BF16> ? 0x7f80 : 0x7c00) {
    const float lo = act.kind == kRelu ? 0.0f : act.lo, hi = act.kind == kRelu ? INFINITY : act.hi;
    uint16_t below = WordThresholds::at_or_below<S>(lo);
    if (WordThresholds::value(below, S{}) == lo) {  // the largest value strictly below lo (-0.0 equals +0.0)
      below = (below & 0x7fff) == 0 ? 0x8001 : (below & 0x8000) ? below + 1 : below - 1;
    }
    const auto as_bits = [](float v) {
      const S s = Traits<S>::store(v);  // rounded to nearest even, as the float path stores it
      uint16_t b;
      std::memcpy(&b, &s, sizeof b);
      return static_cast<int16_t>(b);
    };
    lo_key = static_cast<int16_t>(WordThresholds::key_of(below));
    hi_key = static_cast<int16_t>(WordThresholds::key_of(WordThresholds::at_or_below<S>(hi)));
    lo_bits = as_bits(lo) - I16{};
    hi_bits = as_bits(hi) - I16{};
  }
  I16 operator()(I16 b) const {
    const I16 key = b ^ ((b >> 15) & 0x7fff);
    const I16 number = (b & 0x7fff) <= inf;
    return (number & (key <= lo_key)) ? lo_bits : ((number & (key > hi_key)) ? hi_bits : b);
  }
};

// WordActivation of n contiguous values, whole vectors only; returns how many values it wrote.
template <class S>
int64_t activate_words(const Act<float>& act, const S* x, int64_t n, S* y) {
  const WordActivation<S> f(act);
  constexpr int L = kVecBytes / 2;
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    typename WordActivation<S>::I16 b;
    std::memcpy(&b, x + i, sizeof b);
    const auto out = f(b);
    std::memcpy(y + i, &out, sizeof out);
  }
  return i;
}

// The word-lane thresholds of a job, where kOn (16-bit storage takes the word path); else a placeholder.
template <bool kOn, class S, class T>
auto word_thresholds_if(const Thresholds<T>& th) {
  if constexpr (kOn) {
    return WordThresholds(th, S{});
  } else {
    return char{};
  }
}

#if defined(__AVX512BW__) || (defined(__AVX2__) && !defined(__AVX512F__))
#define NEP_WORD_LANES 1
// Word-lane channel counters (channel path, float16/bfloat16 storage, AVX-512BW or AVX2, no ties, K <= 2):
// WordOps::kLanes channels per vector compared in their own 16 bits, with no widening to float32 (WordThresholds
// explains the comparison). Counters are uint16 lanes in registers over chunks of at most 65535 positions; valid
// counts are the chunk's positions.
#if defined(__AVX512BW__)
struct WordOps {
  using V = __m512i;
  static constexpr int kLanes = 32;
  static constexpr int kTileCounters = 8;  // G x K counters per tile held in registers (12 / K spilled)
  static V splat(uint16_t b) { return _mm512_set1_epi16(static_cast<short>(b)); }
  static V zero() { return _mm512_setzero_si512(); }
  static V load(const uint16_t* p) { return in_register(_mm512_loadu_si512(p)); }
  static V load_partial(const uint16_t* p, int64_t n) {  // words [0, n) of p (n <= kLanes), the rest +0
    return _mm512_maskz_loadu_epi16(static_cast<__mmask32>((uint64_t{1} << n) - 1), p);
  }
  static void store(uint8_t* p, V v) { _mm512_storeu_si512(p, v); }
  static V max(V a, V b) { return _mm512_max_epu16(a, b); }
  static V magnitude(V x) { return _mm512_and_si512(x, _mm512_set1_epi16(0x7fff)); }
  // the magnitude bits of negative values flipped (their sign spread by an arithmetic shift)
  static V key(V x) { return _mm512_xor_si512(x, magnitude(_mm512_srai_epi16(x, 15))); }
  static V count_above(V c, V x, V t) {  // c + 1 in the lanes where x > t (signed)
    return _mm512_mask_sub_epi16(c, _mm512_cmpgt_epi16_mask(x, t), c, _mm512_set1_epi16(-1));
  }
  static bool any_above(V top, V inf) { return _mm512_cmpgt_epu16_mask(top, inf) != 0; }
  // the two halves of uint16 lanes widened to int32 lanes (float vectors' slots)
  static __m512i low(V c) { return _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(c, 0)); }
  static __m512i high(V c) { return _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(c, 1)); }
};
#else
struct WordOps {
  using V = __m256i;
  static constexpr int kLanes = 16;
  static constexpr int kTileCounters = 12;  // 16 registers: MobileNet-V2's 96 channels with two thresholds, spilled
  static V splat(uint16_t b) { return _mm256_set1_epi16(static_cast<short>(b)); }
  static V zero() { return _mm256_setzero_si256(); }
  static V load(const uint16_t* p) { return in_register(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static V load_partial(const uint16_t* p, int64_t n) {  // words [0, n) of p (n <= kLanes), the rest +0
    alignas(32) uint16_t words[kLanes] = {};
    std::memcpy(words, p, static_cast<size_t>(n) * sizeof(uint16_t));
    return _mm256_load_si256(reinterpret_cast<const __m256i*>(words));
  }
  static void store(uint8_t* p, V v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
  static V max(V a, V b) { return _mm256_max_epu16(a, b); }
  static V magnitude(V x) { return _mm256_and_si256(x, _mm256_set1_epi16(0x7fff)); }
  static V key(V x) { return _mm256_xor_si256(x, magnitude(_mm256_srai_epi16(x, 15))); }
  static V count_above(V c, V x, V t) { return _mm256_sub_epi16(c, _mm256_cmpgt_epi16(x, t)); }
  static bool any_above(V top, V inf) {  // magnitudes are <= 0x7fff: a signed compare is exact
    return _mm256_movemask_epi8(_mm256_cmpgt_epi16(top, inf)) != 0;
  }
  static __m256i low(V c) { return _mm256_cvtepu16_epi32(_mm256_castsi256_si128(c)); }
  static __m256i high(V c) { return _mm256_cvtepu16_epi32(_mm256_extracti128_si256(c, 1)); }
};
#endif
using WordVec = WordOps::V;
constexpr int kWordLanes = WordOps::kLanes;

#endif

}  // namespace
}  // namespace nepenthe
