// A job's fused output (write_activation), written while the values just counted are still in cache: contiguous
// runs a vector at a time from load to store, anything else through a buffer in compute precision. activate_words
// (16-bit relu and hardtanh), declared here, is defined in cpu_words.h.
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

#include "../common/count_args.h"
#include "cpu_activation.h"
#include "cpu_job.h"
#include "cpu_simd.h"
#include "cpu_storage.h"
#include "cpu_tuning.h"

namespace nepenthe {
namespace {

// Stores one vector of float results as W values of S (float16/bfloat16 rounded to nearest even, as torch does).
template <class S, class V>
inline void store_vec(V r, S* y) {
  if constexpr (std::is_same_v<S, BF16>) {
    static_assert(sizeof(V) == sizeof(U32xW), "bfloat16 computes in float vectors of kWidth lanes");
    U32xW bits;
    std::memcpy(&bits, &r, sizeof bits);
    const U32xW rounded = (bits + (0x7fffu + ((bits >> 16) & 1u))) >> 16;
    const U32xW quiet = (bits >> 16) | 0x40u;  // NaN: keep the payload, set the quiet bit (Traits<BF16>::store)
    const U32xW out = (bits & 0x7fffffffu) > 0x7f800000u ? quiet : rounded;
    const U16xW narrow = __builtin_convertvector(out, U16xW);
    std::memcpy(y, &narrow, sizeof narrow);
  } else if constexpr (std::is_same_v<S, Half>) {
#if defined(__AVX512F__)
    if constexpr (sizeof(V) == 64) {
      __m512 f;
      std::memcpy(&f, &r, sizeof f);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y),
                          _mm512_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      return;
    }
#elif defined(__F16C__)
    if constexpr (sizeof(V) == 32) {
      __m256 f;
      std::memcpy(&f, &r, sizeof f);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(y),
                       _mm256_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      return;
    }
#endif
    for (size_t l = 0; l < sizeof(V) / sizeof(r[0]); ++l) y[l] = static_cast<Half>(r[l]);
  } else {
    std::memcpy(y, &r, sizeof r);
  }
}

template <class S>
int64_t activate_words(const Act<float>& act, const S* x, int64_t n, S* y);

// Activation kKind (kRelu, kHardtanh or kLeakyRelu) of one vector, as torch computes it (NaN stays NaN).
template <int kKind, class V>
inline V piecewise(V v, V lo, V hi, V slope) {
  const V zero = V{};
  if constexpr (kKind == kRelu) {
    return v < zero ? zero : v;
  } else if constexpr (kKind == kHardtanh) {
    return v < lo ? lo : (v > hi ? hi : v);
  } else {
    static_assert(kKind == kLeakyRelu, "piecewise-linear activations only");
    return v > zero ? v : v * slope;
  }
}

// Whether `kind` is one of piecewise's activations.
inline bool is_piecewise(int kind) { return kind == kRelu || kind == kHardtanh || kind == kLeakyRelu; }

// f(std::integral_constant<int, kind>{}) for a piecewise kind (is_piecewise(kind) holds): one instantiation of f's
// loop per kind, so the loop does not test the kind at every vector.
template <class F>
inline decltype(auto) with_piecewise(int kind, F&& f) {
  switch (kind) {
    case kRelu:
      return f(std::integral_constant<int, kRelu>{});
    case kHardtanh:
      return f(std::integral_constant<int, kHardtanh>{});
    default:
      return f(std::integral_constant<int, kLeakyRelu>{});
  }
}

// The piecewise-linear activations of n contiguous values, a vector at a time from load to store (no buffers);
// returns how many values it wrote (whole vectors only; GELU and the tail go through apply_activation).
// float16/bfloat16 relu and hardtanh stay in their own 16 bits (activate_words).
template <class S, class T>
inline int64_t activate_contiguous(const Act<T>& act, const S* x, int64_t n, S* y) {
  using V = typename Simd<T>::V;
  constexpr int W = Simd<T>::kWidth;
  if constexpr (sizeof(S) == 2) {
    if (act.kind == kRelu || act.kind == kHardtanh) return activate_words(act, x, n, y);
  }
  if (!is_piecewise(act.kind)) return 0;
  const V lo = act.lo - V{}, hi = act.hi - V{}, slope = act.slope - V{};
  // One loop per kind: the stores to y may alias act, so a loop that tested act.kind would reload it every vector.
  return with_piecewise(act.kind, [&](auto kind) {
    int64_t i = 0;
    for (; i + W <= n; i += W) store_vec(piecewise<decltype(kind)::value>(load_vec<S>(x + i), lo, hi, slope), y + i);
    return i;
  });
}

#if defined(__AVX512F__)
// The fused output of float32 values written during their count (finite_row64's emit, the bitmap fills' too):
// activation kKind of each vector of values, stored at y + i, lanes outside `live` left alone. The values are read
// once for both, where counting them and then activating them from cache read them twice.
template <int kKind>
struct RowActivation {
  static constexpr bool kWrites = true;
  float* y;
  __m512 lo, hi, slope;
  RowActivation(const Act<float>& act, float* row)
      : y(row), lo(_mm512_set1_ps(act.lo)), hi(_mm512_set1_ps(act.hi)), slope(_mm512_set1_ps(act.slope)) {}
  // The 16 values of x, from position i.
  void one(int64_t i, __m512 x, __mmask16 live) const {
    const __m512 r = piecewise<kKind>(x, lo, hi, slope);
    if (live == 0xffff) {
      _mm512_storeu_ps(y + i, r);
    } else {
      _mm512_mask_storeu_ps(y + i, live, r);
    }
  }
  // The 64 values of x0..x3, from position i (bit l of live: value i + l).
  void operator()(int64_t i, __m512 x0, __m512 x1, __m512 x2, __m512 x3, uint64_t live) const {
    const __m512 x[4] = {x0, x1, x2, x3};
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) one(i + 16 * v, x[v], static_cast<__mmask16>(live >> (16 * v)));
  }
};

// f(RowActivation<kind>(act, y)) for act's piecewise kind (is_piecewise(act.kind) holds): one instantiation of the
// counting loop that f runs per kind.
template <class F>
inline decltype(auto) with_row_activation(const Act<float>& act, float* y, F&& f) {
  return with_piecewise(act.kind, [&](auto kind) { return f(RowActivation<decltype(kind)::value>(act, y)); });
}
#endif

// Fused output of the values at (o, c, i0..i0+n) of x's view: read again while they are still in cache.
template <class S, class T = typename Traits<S>::T>
inline void write_activation(const Job<S>& job, int64_t o, int64_t c, int64_t i0, int64_t n, bool along_c,
                             T* buf) {
  const View &v = job.v, &yv = job.yv;
  const int64_t xs = along_c ? v.s_channel : v.s_inner, ys = along_c ? yv.s_channel : yv.s_inner;
  const S* xp = job.x + o * v.s_outer + c * v.s_channel + i0 * v.s_inner;
  S* yp = job.y + o * yv.s_outer + c * yv.s_channel + i0 * yv.s_inner;
  if (xs == 1 && ys == 1) {
    const int64_t done = activate_contiguous(job.act, xp, n, yp);
    xp += done;
    yp += done;
    n -= done;
  }
  for (int64_t done = 0; done < n; done += kChunk) {
    const int64_t m = std::min(kChunk, n - done);
    const T* vals = buf;
    if constexpr (std::is_same_v<S, T>) {
      if (xs == 1) vals = xp + done;
    }
    if (vals == buf) load_values(xp + done * xs, xs, m, buf);
    apply_activation(job.act, vals, m, yp + done * ys, ys);
  }
}

}  // namespace
}  // namespace nepenthe
