// SIMD vectors as wide as the target's registers (kVecBytes), through GCC's vector extensions: stored values
// loaded as vectors of their compute type, lane helpers, and reading ahead of tensors that come from memory
// (kMemoryBytes).
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
#include <limits>
#include <type_traits>

#include "cpu_storage.h"

namespace nepenthe {
namespace {

// SIMD through GCC vector extensions: 64-byte vectors, lowered to AVX-512, AVX2 or SSE by the target. A lane
// comparison is -1 where true, so subtracting it counts; NaN lanes compare false everywhere, so NaN padding
// counts nowhere.
template <class T>
struct Simd;

// Vector width: the widest registers the target has. 64-byte vectors on a target without AVX-512 would be split
// by GCC and passed through memory between functions (-Wpsabi): about 10x slower, measured on an AVX2 build.
#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif

template <>
struct Simd<float> {
  typedef float V __attribute__((vector_size(kVecBytes)));
  typedef int32_t I __attribute__((vector_size(kVecBytes)));
  static constexpr int kWidth = kVecBytes / 4;
};

template <>
struct Simd<double> {
  typedef double V __attribute__((vector_size(kVecBytes)));
  typedef int64_t I __attribute__((vector_size(kVecBytes)));
  static constexpr int kWidth = kVecBytes / 8;
};

// kWidth bfloat16/float16 bit patterns, and the same widened to 32 bits.
typedef uint16_t U16xW __attribute__((vector_size(kVecBytes / 2)));
typedef uint32_t U32xW __attribute__((vector_size(kVecBytes)));

// A loaded vector kept in its register. GCC folds a load into each instruction that uses the vector (a memory
// operand each), so a vector two instructions use was read from memory twice. Zen 4 reads one 512-bit vector a
// cycle, so those reads, not the arithmetic, set the pace: a float32 sign count with its NaN guard took 1.41x a sum's
// time as folded and 1.06x read once (benchmarks/ab/guard_cost.cpp). The empty asm tells the compiler the register
// may have changed, so it cannot read memory again in its place.
template <class V>
inline V in_register(V v) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  asm("" : "+v"(v));
#endif
  return v;
}

// One vector of compute-type values from kWidth consecutive stored values, in a register (in_register).
template <class S, class T = typename Traits<S>::T>
inline typename Simd<T>::V load_vec(const S* p) {
  using V = typename Simd<T>::V;
  V v;
  if constexpr (std::is_same_v<S, T>) {
    std::memcpy(&v, p, sizeof v);
    return in_register(v);
  } else if constexpr (std::is_same_v<S, BF16>) {
#if defined(__AVX512F__)
    // Spelled out: GCC splits the generic widening below into 256-bit halves (6 instructions instead of 2).
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    const __m512i w = _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
    std::memcpy(&v, &w, sizeof v);
#elif defined(__AVX2__)
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m256i w = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
    std::memcpy(&v, &w, sizeof v);
#else
    U16xW h;
    std::memcpy(&h, p, sizeof h);
    v = (V)(__builtin_convertvector(h, U32xW) << 16);
#endif
  } else {
#if defined(__AVX512F__)
    const __m512 f = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    std::memcpy(&v, &f, sizeof v);
#elif defined(__F16C__)
    static_assert(kVecBytes == 32, "F16C widens 8 values to one 256-bit vector");
    const __m256 f = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    std::memcpy(&v, &f, sizeof v);
#else
    for (int l = 0; l < Simd<T>::kWidth; ++l) v[l] = Traits<S>::load(p[l]);
#endif
  }
  return v;
}

// The first m < kWidth stored values, the other lanes NaN.
template <class S, class T = typename Traits<S>::T>
inline typename Simd<T>::V load_partial(const S* p, int64_t m) {
  typename Simd<T>::V v = typename Simd<T>::V{} + std::numeric_limits<T>::quiet_NaN();
  for (int64_t l = 0; l < m; ++l) v[l] = Traits<S>::load(p[l]);
  return v;
}

template <class I>
inline I lane_index() {
  I idx;
  for (size_t l = 0; l < sizeof(I) / sizeof(idx[0]); ++l) idx[l] = static_cast<decltype(idx[0] + 0)>(l);
  return idx;
}

template <class I>
inline int64_t lane_sum(I v) {
  int64_t s = 0;
  for (size_t l = 0; l < sizeof(I) / sizeof(v[0]); ++l) s += v[l];
  return s;
}

// Prefetch the cache line at p into L1 (prefetcht0 on x86; whatever the target has elsewhere).
inline void prefetch_line(const void* p) { __builtin_prefetch(p, 0, 3); }

// Tensors this large are read from memory rather than the caches (a 32 MiB L3): the row, tile and byte-lane loops
// then prefetch ahead (4 KiB ahead measured 6-20% faster from memory, and up to 5% slower from the caches). With
// prefetching, float32 counts through 512-bit compares everywhere: from memory as fast as the 256-bit compares
// into vector registers that used to read memory-resident tensors (those measured 1.4x faster than 512-bit
// compares without prefetching, in session 2), and 1.8x faster on an L2-resident stream (19-38% on a 19 MB map).
constexpr int64_t kMemoryBytes = 24 << 20;

// How far ahead the float row and tile loops prefetch from memory. This machine's memory runs at two speeds, for
// minutes at a time (x.sum() of 154 MB in 1.5 ms or in 2.7 ms). In the fast spells 4 KiB ahead left MobileNet-V2
// block1 float32 at 1.14-1.20x the sum (NCHW and channels_last); 8 KiB brought it to 0.99-1.04, and made no
// difference in the slow spells. 16 KiB gained a little more in the fast spells but cost 3-7% in the slow ones
// (benchmarks/ab/ab_torch.sh, 2026-11-26).
constexpr int64_t kPrefetchBytes = 8 << 10;

// Element offset of the row (of `stride` elements of `bytes` each) about `distance` bytes ahead (4 KiB unless
// said), for prefetching; 0 for a stride of 0 (every position reads the same row: an expanded tensor, or a single
// position).
inline int64_t rows_ahead(int64_t stride, int64_t bytes, int64_t distance = 4096) {
  return stride > 0 ? stride * std::max<int64_t>(1, distance / (bytes * stride)) : 0;
}

}  // namespace
}  // namespace nepenthe
