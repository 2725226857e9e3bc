// The fused activations over a buffer of values in compute precision (Act, apply_activation), stored at any
// output stride. cpu_fused_output.h writes a job's output through them; cpu_words.h keeps 16-bit relu and hardtanh
// in their own bits.
//
// Internal to count_cpu.cpp, the one translation unit of the CPU kernels: include it only there (everything here
// is in an anonymous namespace).
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "../common/count_args.h"
#include "cpu_storage.h"
#include "cpu_tuning.h"

namespace nepenthe {
namespace {

// The activation in compute precision T; bit-exact with torch for relu/hardtanh/leaky_relu (NaN propagates,
// -0.0 stays -0.0), GELU in float32 (float64 for float64 input).
template <class T>
struct Act {
  int kind;
  T lo, hi, slope;
  explicit Act(const ActivationArgs& a)
      : kind(a.kind), lo(static_cast<T>(a.p0)), hi(static_cast<T>(a.p1)), slope(static_cast<T>(a.p0)) {}
};

// The activation loops are vectorized on request: GCC's cost model declines some of them (the GELU ones).
#define NEP_SIMD _Pragma("omp simd")

// GELU gates g(x) with gelu(x) = x * g(x). libm's erff/tanhf do not vectorize, so float32 uses its own
// branch-free exp (two-part ln 2 reduction, degree-7 Taylor polynomial, exponent by bit shift; relative error a
// few ulp) and Abramowitz & Stegun 7.1.26 for erfc (absolute error below 1.5e-7), taken on |x| so that the
// gate of a negative x is a small erfc rather than a cancellation. float64 keeps libm.
// e^x for x in [-87, 88], which the callers clamp to.
inline float exp_clamped(float x) {
  // n = round(x / ln 2) by adding and removing 1.5 * 2^23 (std::floor does not vectorize with GCC 12).
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187045e-06f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

inline float exp_approx(float arg) {
  const float e = exp_clamped(std::min(std::max(arg, -87.0f), 88.0f));
  // Beyond the clamp: 0 and infinity, not exp(-87) and exp(88). A GELU gate 1 / (1 + exp(88)) is 6e-39, not 0, and
  // times x = -3e38 gave -1.8 where gelu is -0.0. NaN passes through both selects.
  const float low = arg < -87.0f ? 0.0f : e;
  return arg > 88.0f ? std::numeric_limits<float>::infinity() : low;
}

// exp_approx for the erf gate's args, which are <= 0 (or NaN): one clamp and no selects. Args below -87 give
// exp(-87) = 1.6e-38 where exp_approx gives 0: the gate multiplies it by 0.5 q t < 0.13, so the gate of |x| > 13.2
// is below 2e-39 (and 0 once t underflows too, past |x| = 1e19 or so), and x times it stays below 2e-6 until the
// product underflows. A NaN arg comes out a number: the gate's NaN never matters, as x * gate is NaN anyway.
// The exact GELU loop, whose exp takes most of its time: 2.11 -> 1.75 cycles a value (AVX-512, Zen 4, in L1).
inline float exp_nonpositive(float arg) { return exp_clamped(arg > -87.0f ? arg : -87.0f); }

inline float gelu_erf_gate(float x) {  // (1 + erf(x / sqrt 2)) / 2
  const float z = std::fabs(x) * 0.70710678118654752440f;
  const float t = 1.0f / (1.0f + 0.3275911f * z);
  float q = 1.061405429f;
  q = q * t - 1.453152027f;
  q = q * t + 1.421413741f;
  q = q * t - 0.284496736f;
  q = q * t + 0.254829592f;
  const float half_erfc = 0.5f * q * t * exp_nonpositive(-z * z);
  return x >= 0.0f ? 1.0f - half_erfc : half_erfc;
}

inline float gelu_tanh_gate(float x) {  // (1 + tanh(u)) / 2 = 1 / (1 + exp(-2u))
  const float u = 0.79788456080286535588f * (x + 0.044715f * x * x * x);
  return 1.0f / (1.0f + exp_approx(-2.0f * u));
}

inline double gelu_erf_gate(double x) { return 0.5 * (1.0 + std::erf(x * 0.70710678118654752440)); }

inline double gelu_tanh_gate(double x) {
  return 0.5 * (1.0 + std::tanh(0.79788456080286535588 * (x + 0.044715 * x * x * x)));
}

// float32 -> float16 (round to nearest even) for n values: F16C/AVX-512 where the target has them, since GCC
// finds no vector type for Half stores without AVX512-FP16.
inline void store_half(const float* v, int64_t n, Half* y, int64_t ys) {
  int64_t i = 0;
#if defined(__AVX512F__)
  if (ys == 1) {
    for (; i + 16 <= n; i += 16) {
      const __m256i h = _mm512_cvtps_ph(_mm512_loadu_ps(v + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i), h);
    }
  }
#elif defined(__F16C__)
  if (ys == 1) {
    for (; i + 8 <= n; i += 8) {
      const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(v + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i), h);
    }
  }
#endif
  for (; i < n; ++i) y[i * ys] = static_cast<Half>(v[i]);
}

template <bool kUnit, class S, class T>
void apply_activation_strided(const Act<T>& act, const T* __restrict v, int64_t n, S* __restrict y, int64_t ys) {
  // float16: computed in float32 a block at a time, then converted in bulk. A whole run of up to kChunk values at
  // once (an 8 KiB float32 array beside write_activation's 8 KiB buffer) wrote float16 GELU on tokens in runs of
  // 2048 at 1.07-1.23x the time of runs of 384 (Zen 4); in blocks of 512, 0.95-1.02, and float16 GELU on NCHW
  // maps took 0.85-0.99 of the time it had.
  if constexpr (std::is_same_v<S, Half>) {
    constexpr int64_t kBlock = 512;
    T out[kBlock];
    for (int64_t b = 0; b < n; b += kBlock) {
      const int64_t m = std::min(kBlock, n - b);
      apply_activation_strided<true>(act, v + b, m, out, int64_t{1});
      store_half(out, m, y + b * ys, ys);
    }
    return;
  }
  using Tr = Traits<S>;
  const T lo = act.lo, hi = act.hi, slope = act.slope;
  const int64_t step = kUnit ? 1 : ys;  // a compile-time 1 lets the contiguous loops vectorize
  switch (act.kind) {
    case kRelu:
      NEP_SIMD
      for (int64_t i = 0; i < n; ++i) y[i * step] = Tr::store(v[i] < T(0) ? T(0) : v[i]);
      break;
    case kHardtanh:
      NEP_SIMD
      for (int64_t i = 0; i < n; ++i) y[i * step] = Tr::store(v[i] < lo ? lo : (v[i] > hi ? hi : v[i]));
      break;
    case kLeakyRelu:
      NEP_SIMD
      for (int64_t i = 0; i < n; ++i) y[i * step] = Tr::store(v[i] > T(0) ? v[i] : v[i] * slope);
      break;
    case kGeluErf:
      NEP_SIMD
      for (int64_t i = 0; i < n; ++i) y[i * step] = Tr::store(v[i] * gelu_erf_gate(v[i]));
      break;
    case kGeluTanh:
      NEP_SIMD
      for (int64_t i = 0; i < n; ++i) y[i * step] = Tr::store(v[i] * gelu_tanh_gate(v[i]));
      break;
    default:
      break;
  }
}

template <class S, class T>
void apply_activation(const Act<T>& act, const T* v, int64_t n, S* y, int64_t ys) {
  if (ys == 1) {
    apply_activation_strided<true>(act, v, n, y, ys);
  } else {
    apply_activation_strided<false>(act, v, n, y, ys);
  }
}

}  // namespace
}  // namespace nepenthe
