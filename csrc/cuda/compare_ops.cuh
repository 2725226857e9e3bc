// The comparisons the CUDA counting kernels are made of, at as few instructions per value as the GPU allows.
//
// - One value (float32, float64, or a 16-bit value widened to float32): a compare into a predicate and a
//   predicated add, 2 instructions. Written as `acc += x > t`, nvcc computes acc + 1 and then selects, 3.
// - Two float16 (sm_53+) or bfloat16 (sm_90+) values at once, in the 32-bit word that holds them: one packed
//   compare (set.gt.u32.f16x2 / .bf16x2) gives 0xffff in each half that compares true, and subtracting that mask
//   from a 32-bit counter counts both halves at once (half an add per compare, with three-input adds). The
//   counter then holds the low half's count n_lo in its low 16 bits and n_hi - n_lo (mod 2^16) in its high 16
//   bits: subtracting 0x0000ffff adds 1 to the low half and 0xffff to the high half, and the low half never
//   carries while n_lo < 2^16. Each lane must count fewer than 2^16 values before it is decoded.
// The pair helpers are host-callable too (cuda_fp16/cuda_bf16 emulate the compares on the host), so
// tests/native/check_pairs_cuda.cu checks them, and the thresholds they compare with, without a GPU.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>

namespace nepenthe {

// acc += (a > b), acc += (a == b), acc += (a is a number): a compare into a predicate, then a predicated add.
// Host code (tests/native/cuda_emulation.h runs the kernels on the CPU) gets the same counts in plain C++.
#if defined(__CUDA_ARCH__)
__device__ __forceinline__ void add_if_greater(uint32_t& acc, float a, float b) {
  asm("{ .reg .pred p; setp.gt.f32 p, %1, %2; @p add.u32 %0, %0, 1; }" : "+r"(acc) : "f"(a), "f"(b));
}
__device__ __forceinline__ void add_if_greater(uint32_t& acc, double a, double b) {
  asm("{ .reg .pred p; setp.gt.f64 p, %1, %2; @p add.u32 %0, %0, 1; }" : "+r"(acc) : "d"(a), "d"(b));
}
__device__ __forceinline__ void add_if_equal(uint32_t& acc, float a, float b) {
  asm("{ .reg .pred p; setp.eq.f32 p, %1, %2; @p add.u32 %0, %0, 1; }" : "+r"(acc) : "f"(a), "f"(b));
}
__device__ __forceinline__ void add_if_equal(uint32_t& acc, double a, double b) {
  asm("{ .reg .pred p; setp.eq.f64 p, %1, %2; @p add.u32 %0, %0, 1; }" : "+r"(acc) : "d"(a), "d"(b));
}
__device__ __forceinline__ void add_if_number(uint32_t& acc, float a) {
  asm("{ .reg .pred p; setp.num.f32 p, %1, %1; @p add.u32 %0, %0, 1; }" : "+r"(acc) : "f"(a));
}
__device__ __forceinline__ void add_if_number(uint32_t& acc, double a) {
  asm("{ .reg .pred p; setp.num.f64 p, %1, %1; @p add.u32 %0, %0, 1; }" : "+r"(acc) : "d"(a));
}
#else
template <class T>
inline void add_if_greater(uint32_t& acc, T a, T b) {
  acc += a > b;
}
template <class T>
inline void add_if_equal(uint32_t& acc, T a, T b) {
  acc += a == b;
}
template <class T>
inline void add_if_number(uint32_t& acc, T a) {
  acc += a == a;
}
#endif

// The packed type of two S values (__half2 for __half, __nv_bfloat162 for __nv_bfloat16).
template <class S>
struct PairOf;
template <>
struct PairOf<__half> {
  using type = __half2;
};
template <>
struct PairOf<__nv_bfloat16> {
  using type = __nv_bfloat162;
};

template <class S>
__host__ __device__ inline typename PairOf<S>::type pair_from_bits(uint32_t w) {
  typename PairOf<S>::type p;
  memcpy(static_cast<void*>(&p), &w, sizeof(w));  // __half2 has no trivial copy-assignment: bytes on purpose
  return p;
}

// Threshold t (float32, as the other kernels compare) as an S pair that compares the same: the largest S at or
// below t. For S values v, v > t exactly when v > round_down(t): there is no S value in (round_down(t), t].
// Below the lowest finite S that is -inf (v > -inf unless v is -inf), above the largest it is the largest.
template <class S>
inline uint32_t pair_threshold(float t);
template <>
inline uint32_t pair_threshold<__half>(float t) {
  const uint16_t bits = __half_as_ushort(__float2half_rd(t));
  return bits * 0x10001u;
}
template <>
inline uint32_t pair_threshold<__nv_bfloat16>(float t) {
  const uint16_t bits = __bfloat16_as_ushort(__float2bfloat16_rd(t));
  return bits * 0x10001u;
}

// v rounded to nearest S, in both halves of a word.
template <class S>
inline uint32_t pair_value(float v);
template <>
inline uint32_t pair_value<__half>(float v) {
  return __half_as_ushort(__float2half_rn(v)) * 0x10001u;
}
template <>
inline uint32_t pair_value<__nv_bfloat16>(float v) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(v)) * 0x10001u;
}

// Counts the two S values in word w into NT + 1 packed counters: [values that are numbers, v > thresholds[k]...]
// (thresholds from pair_threshold).
template <class S, int NT>
__host__ __device__ __forceinline__ void count_pair(uint32_t w, const uint32_t* thresholds, uint32_t* packed) {
  const auto v = pair_from_bits<S>(w);
  packed[0] -= __heq2_mask(v, v);  // NaN is unequal to itself
#if defined(__CUDA_ARCH__)  // device code only: the host compiler (the emulation, the checkers) warns on it
#pragma unroll
#endif
  for (int k = 0; k < NT; ++k) packed[1 + k] -= __hgt2_mask(v, pair_from_bits<S>(thresholds[k]));
}

// The counts of the low and high halves of a packed counter, and their sum.
__host__ __device__ __forceinline__ uint32_t low_count(uint32_t packed) { return packed & 0xffffu; }
__host__ __device__ __forceinline__ uint32_t high_count(uint32_t packed) {
  return ((packed >> 16) + packed) & 0xffffu;
}
__host__ __device__ __forceinline__ uint32_t pair_count(uint32_t packed) {
  return low_count(packed) + high_count(packed);
}

}  // namespace nepenthe
