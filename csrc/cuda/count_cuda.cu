// CUDA counting and fused-activation kernels (no libtorch: raw device pointers, strides and a stream).
//
// Three kernels, chosen by layout:
// - rows_kernel (inner stride 1, or any strides): a work item is one channel over a block of rows and inner
//   positions, read with 16-byte vector loads where a row is aligned, kUnroll loads in flight per thread; the
//   fused variant stores 16-byte vectors where the output row is contiguous and aligned.
// - channels_vec_kernel (channel stride 1, 1 or 2 thresholds without ties, 16-byte aligned positions; fused: the
//   output laid out like the input): each thread reads one 16-byte group of consecutive channels at kUnroll
//   positions at a time and keeps one set of counts per channel of its group.
// - channels_kernel (channel stride 1 otherwise, and channels of fewer than 32 values in any layout):
//   consecutive threads read consecutive channels, one element each.
// Fused kernels apply an activation fixed at compile time where the thresholds are its own (with_activation).
// Comparisons are compare_ops.cuh's: a predicate and a predicated add per value and threshold, and, with ReLU's
// or ReLU6's thresholds, float16 (bfloat16 from sm_90) two values per packed compare, fused or not.
// Each thread keeps its comparison counts in registers (uint32); a block reduces them into shared-memory
// counters and adds each item's exact per-state counts into the int64 counts with atomicAdd. Grids hold as many
// blocks as fit on the device at once, each walking about kItemsPerBlock items, so no SM idles while a last
// wave runs. No host synchronisation: everything runs on the caller's stream.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "compare_ops.cuh"
#include "count_cuda.h"

namespace nepenthe {
namespace {

constexpr int kThreads = 256;
constexpr int kAcc = 1 + 2 * kMaxThresholds;  // [valid, gt_0..gt_6, tie_0..tie_6] at fixed positions
constexpr int kTie0 = 1 + kMaxThresholds;
constexpr int kUnroll = 4;                // 16-byte loads each thread keeps in flight when only counting
constexpr int64_t kMinItem = 1 << 13;     // elements per work item: enough to amortize its block reduction,
constexpr int64_t kMaxItem = 1 << 16;     // small enough that every resident block gets several
constexpr int64_t kMaxPending = int64_t{1} << 31;  // positions a block's shared uint32 counters may hold
constexpr int64_t kItemsPerBlock = 8;     // so the blocks finishing last leave SMs idle for little of the run
constexpr int kMaxDevices = 16;           // devices whose SM count and kernel occupancy are remembered

template <class S>
struct Dev;

template <>
struct Dev<float> {
  using T = float;
  __device__ static T load(float v) { return v; }
  __device__ static float store(float v) { return v; }
};

template <>
struct Dev<double> {
  using T = double;
  __device__ static T load(double v) { return v; }
  __device__ static double store(double v) { return v; }
};

template <>
struct Dev<__half> {
  using T = float;
  __device__ static T load(__half v) { return __half2float(v); }
  __device__ static __half store(float v) { return __float2half_rn(v); }
};

template <>
struct Dev<__nv_bfloat16> {
  using T = float;
  __device__ static T load(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
};

// relu and hardtanh of two 16-bit values at once (clamp_pair): the bounds as pair thresholds (pair_threshold) for
// the comparisons, and as the 16-bit values they become (rounded to nearest, as Dev::store rounds them).
struct PairClamp {
  bool on;  // fused relu or hardtanh of 16-bit values compared in pairs
  uint32_t lo, hi, lo_out, hi_out;
};

template <class T>
struct Params {
  Thresholds<T> th;
  uint32_t pair[kMaxThresholds];  // 16-bit inputs: th.greater as pair_threshold, for count_pair
  PairClamp clamp;
  int act;
  T lo, hi, slope;
};

// Whether 16-bit S values are compared two at a time (count_pair) on the architecture being compiled for:
// set.*.f16x2 exists from sm_53 on, set.*.bf16x2 from sm_90 (cuda_bf16 emulates it one value at a time before).
// NEPENTHE_EMULATED_ARCH: the architecture tests/native/cuda_emulation.h emulates on the host.
template <class S>
__device__ constexpr bool paired() {
#if defined(__CUDA_ARCH__)
  constexpr int arch = __CUDA_ARCH__;
#elif defined(NEPENTHE_EMULATED_ARCH)
  constexpr int arch = NEPENTHE_EMULATED_ARCH;
#else
  constexpr int arch = 0;
#endif
  if constexpr (std::is_same_v<S, __half>) return arch >= 530;
  if constexpr (std::is_same_v<S, __nv_bfloat16>) return arch >= 900;
  return false;
}

// NT > 0: exactly NT thresholds and no ties, known at compile time (ReLU 1, ReLU6 2), so the comparisons unroll
// without run-time guards and only 1 + NT counters live. NT == 0: th.k and th.ignore_ties read at run time.
template <int NT>
__host__ __device__ constexpr int counters() {
  return NT > 0 ? 1 + NT : kAcc;
}

template <int NT, class T>
__device__ __forceinline__ void count_value(T x, const Thresholds<T>& th, uint32_t* acc) {
  add_if_number(acc[0], x);
  if constexpr (NT > 0) {
#pragma unroll
    for (int k = 0; k < NT; ++k) add_if_greater(acc[1 + k], x, th.greater[k]);
  } else {
#pragma unroll
    for (int k = 0; k < kMaxThresholds; ++k) {
      if (k < th.k) add_if_greater(acc[1 + k], x, th.greater[k]);
    }
    if (th.ignore_ties) {
#pragma unroll
      for (int k = 0; k < kMaxThresholds; ++k) {
        if (k < th.k) add_if_equal(acc[kTie0 + k], x, th.tie[k]);
      }
    }
  }
}

// The kVec values of one 16-byte vector.
template <class S>
union Vec16 {
  uint4 raw;
  S s[16 / sizeof(S)];
};

// Value e of a 16-byte vector, taken from its 32-bit words with register operations (a union indexed by e can
// land in local memory); e is a compile-time constant once the callers' loops unroll.
__device__ __forceinline__ uint32_t word(const uint4& raw, int w) {
  return w == 0 ? raw.x : (w == 1 ? raw.y : (w == 2 ? raw.z : raw.w));
}

template <class S>
__device__ __forceinline__ typename Dev<S>::T lane(const uint4& raw, int e);

template <>
__device__ __forceinline__ float lane<float>(const uint4& raw, int e) {
  return __uint_as_float(word(raw, e));
}

template <>
__device__ __forceinline__ double lane<double>(const uint4& raw, int e) {
  return __hiloint2double(static_cast<int>(word(raw, 2 * e + 1)), static_cast<int>(word(raw, 2 * e)));
}

template <>
__device__ __forceinline__ float lane<__half>(const uint4& raw, int e) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(word(raw, e / 2) >> (16 * (e % 2)))));
}

template <>
__device__ __forceinline__ float lane<__nv_bfloat16>(const uint4& raw, int e) {
  const uint32_t w = word(raw, e / 2);  // a bfloat16 is the upper half of a float32
  return __uint_as_float(e % 2 == 0 ? w << 16 : w & 0xffff0000u);
}

template <int NT, class S, class T = typename Dev<S>::T>
__device__ __forceinline__ void count_vector(uint4 raw, const Thresholds<T>& th, uint32_t* acc) {
#pragma unroll
  for (int e = 0; e < 16 / static_cast<int>(sizeof(S)); ++e) count_value<NT>(lane<S>(raw, e), th, acc);
}

// A vector read past the end of its row: NaN in every dtype, so it counts in no state.
__device__ __forceinline__ uint4 nan_vector() { return make_uint4(~0u, ~0u, ~0u, ~0u); }

// raw[u] = v[u * stride] where u * step < limit, NaN vectors after. The unguarded form when all kUnroll are in
// range issues every load before the first is used: with a single guarded form ptxas schedules the first
// vector's compares between the loads and waits on it with only two loads in flight.
__device__ __forceinline__ void load_vectors(const uint4* v, int64_t stride, int64_t step, int64_t limit,
                                             uint4 (&raw)[kUnroll]) {
  if ((kUnroll - 1) * step < limit) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) raw[u] = __ldg(v + u * stride);
  } else {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) raw[u] = u * step < limit ? __ldg(v + u * stride) : nan_vector();
  }
}

// The 16-byte vector holding kVec values (the inverse of lane()), built from 32-bit words in registers.
__device__ __forceinline__ uint32_t pair(unsigned short lo, unsigned short hi) {
  return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
}

__device__ __forceinline__ uint4 pack(const float* v) {
  return make_uint4(__float_as_uint(v[0]), __float_as_uint(v[1]), __float_as_uint(v[2]), __float_as_uint(v[3]));
}

__device__ __forceinline__ uint4 pack(const double* v) {
  return make_uint4(static_cast<uint32_t>(__double2loint(v[0])), static_cast<uint32_t>(__double2hiint(v[0])),
                    static_cast<uint32_t>(__double2loint(v[1])), static_cast<uint32_t>(__double2hiint(v[1])));
}

__device__ __forceinline__ uint4 pack(const __half* v) {
  return make_uint4(pair(__half_as_ushort(v[0]), __half_as_ushort(v[1])),
                    pair(__half_as_ushort(v[2]), __half_as_ushort(v[3])),
                    pair(__half_as_ushort(v[4]), __half_as_ushort(v[5])),
                    pair(__half_as_ushort(v[6]), __half_as_ushort(v[7])));
}

__device__ __forceinline__ uint4 pack(const __nv_bfloat16* v) {
  return make_uint4(pair(__bfloat16_as_ushort(v[0]), __bfloat16_as_ushort(v[1])),
                    pair(__bfloat16_as_ushort(v[2]), __bfloat16_as_ushort(v[3])),
                    pair(__bfloat16_as_ushort(v[4]), __bfloat16_as_ushort(v[5])),
                    pair(__bfloat16_as_ushort(v[6]), __bfloat16_as_ushort(v[7])));
}

// The activation a kernel applies, fixed at compile time (Activation's codes; kNone: the kernel only counts), or
// kAnyActivation: read from p.act at run time, a switch per value (the generic paths and rare pairings).
constexpr int kAnyActivation = 100;

// Blocks per SM a kernel's register use must allow. Fused kernels keep at least the 3 (80 registers a thread) they
// had with a run-time activation: with a fixed one, ptxas otherwise overlaps more of the unrolled vectors and takes
// 100-120 registers (2 blocks, 16 warps an SM). GELU's, long chains of arithmetic with plenty of independent work,
// get 2: capped at 80, the 16-bit ones spill. Counting alone leaves ptxas free.
template <int A>
__host__ __device__ constexpr int min_blocks() {
  if (A == kNone) return 1;
  return A == kGeluErf || A == kGeluTanh ? 2 : 3;
}

// Bit-exact with torch's CUDA kernels for relu/hardtanh/leaky_relu: NaN propagates, and a value at or below the
// lower bound becomes the bound, so relu(-0.0) is +0.0 as on torch's GPU (its CPU kernels keep -0.0). GELU in T.
template <int A, class T>
__device__ __forceinline__ T activation(T x, const Params<T>& p) {
  if constexpr (A == kRelu) {
    return x <= T(0) ? T(0) : x;
  } else if constexpr (A == kHardtanh) {
    return x <= p.lo ? p.lo : (x > p.hi ? p.hi : x);
  } else if constexpr (A == kLeakyRelu) {
    return x > T(0) ? x : x * p.slope;
  } else if constexpr (A == kGeluErf) {
    return T(0.5) * x * (T(1) + erf(x * T(0.70710678118654752440)));
  } else if constexpr (A == kGeluTanh) {
    return T(0.5) * x * (T(1) + tanh(T(0.79788456080286535588) * (x + T(0.044715) * x * x * x)));
  } else if constexpr (A == kAnyActivation) {
    switch (p.act) {
      case kRelu:
        return activation<kRelu>(x, p);
      case kHardtanh:
        return activation<kHardtanh>(x, p);
      case kLeakyRelu:
        return activation<kLeakyRelu>(x, p);
      case kGeluErf:
        return activation<kGeluErf>(x, p);
      case kGeluTanh:
        return activation<kGeluTanh>(x, p);
      default:
        return x;
    }
  } else {
    return x;
  }
}

// The sum of v over the warp, in lane 0 (the other lanes hold partial sums). tests/native/cuda_emulation.h sums
// the warp's values in one step, which saves its thread switches.
__device__ __forceinline__ uint32_t warp_sum(uint32_t v) {
#if defined(NEPENTHE_CUDA_EMULATION)
  return emulation::warp_sum(v);
#else
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
#endif
}

// relu/hardtanh of the two S values in word w exactly as activation() computes them: NaN kept, a value at or below
// the lower bound becomes the bound, one above the upper bound becomes that bound. From packed compares and bit
// masks: 3 compares and 4 logical operations per two values, instead of widening, comparing and rounding each.
template <class S>
__device__ __forceinline__ uint32_t clamp_pair(uint32_t w, const PairClamp& c) {
  const auto v = pair_from_bits<S>(w);
  const uint32_t low = __heq2_mask(v, v) & ~__hgt2_mask(v, pair_from_bits<S>(c.lo));  // a number <= lo
  const uint32_t high = __hgt2_mask(v, pair_from_bits<S>(c.hi));
  return (w & ~(low | high)) | (c.lo_out & low) | (c.hi_out & high);
}

// The activations of one 16-byte vector of 16-bit values, without counting (fused kernels that count in pairs).
template <int A, class S, class T = typename Dev<S>::T>
__device__ __forceinline__ uint4 activate_pairs(uint4 raw, const Params<T>& p) {
  if (A == kRelu || A == kHardtanh || (A == kAnyActivation && p.clamp.on)) {
    return make_uint4(clamp_pair<S>(raw.x, p.clamp), clamp_pair<S>(raw.y, p.clamp), clamp_pair<S>(raw.z, p.clamp),
                      clamp_pair<S>(raw.w, p.clamp));
  }
  constexpr int kVec = 16 / sizeof(S);
  S out[kVec];
#pragma unroll
  for (int e = 0; e < kVec; ++e) out[e] = Dev<S>::store(activation<A>(lane<S>(raw, e), p));
  return pack(out);
}

// Count one 16-byte vector and return the vector of its activations (fused kernels).
template <int NT, int A, class S, class T = typename Dev<S>::T>
__device__ __forceinline__ uint4 count_activate(uint4 raw, const Params<T>& p, uint32_t* acc) {
  constexpr int kVec = 16 / sizeof(S);
  S out[kVec];
#pragma unroll
  for (int e = 0; e < kVec; ++e) {
    const T v = lane<S>(raw, e);
    count_value<NT>(v, p.th, acc);
    out[e] = Dev<S>::store(activation<A>(v, p));
  }
  return pack(out);
}

// Per-state count s of the comparison counts c (fixed positions).
__device__ __forceinline__ unsigned long long state_of(const uint32_t* c, int k, bool ignore_ties, int s) {
  const uint32_t lower = c[s], upper = s < k ? c[s + 1] : 0u, ties = (ignore_ties && s < k) ? c[kTie0 + s] : 0u;
  return static_cast<unsigned long long>(lower - upper - ties);
}

// Count x[xi]; fused (A != kNone, y not null), store its activation at y[yi].
template <int NT, int A, class S, class T = typename Dev<S>::T>
__device__ __forceinline__ void visit(const S* x, S* y, int64_t xi, int64_t yi, const Params<T>& p, uint32_t* acc) {
  const T v = Dev<S>::load(x[xi]);
  count_value<NT>(v, p.th, acc);
  if constexpr (A != kNone) {
    if (y != nullptr) y[yi] = Dev<S>::store(activation<A>(v, p));
  }
}

template <class S>
struct RowArgs {
  const S* x;
  S* y;
  View v, yv;
  int64_t rows, inner, row_blocks, inner_blocks;  // rows and inner positions per item (one channel each)
  unsigned long long* counts;
};

template <class S, int NT, int A>
__global__ void __launch_bounds__(kThreads, min_blocks<A>()) rows_kernel(RowArgs<S> a, Params<typename Dev<S>::T> p) {
  using T = typename Dev<S>::T;
  constexpr bool kFused = A != kNone;
  constexpr int kVec = 16 / sizeof(S);
  constexpr int kN = counters<NT>();
  // With thresholds known at compile time, 16-bit vectors are counted two values at a time (fused or not), into
  // packed counters decoded into acc once per item (per lane at most kMaxItem / 2 < 2^16 values, compare_ops.cuh).
  constexpr bool kPairs = NT > 0 && paired<S>();
  static_assert(kMaxItem / 2 < (1 << 16), "packed 16-bit counters would overflow");
  __shared__ uint32_t shared[kAcc];
  const int tid = threadIdx.x, lane = tid & 31;
  const int k = NT > 0 ? NT : p.th.k;
  const bool ties = NT > 0 ? false : p.th.ignore_ties;
  const int nacc = ties ? kAcc : 1 + k;
  const int64_t items = a.v.channels * a.row_blocks * a.inner_blocks;
  if (tid < kAcc) shared[tid] = 0;
  __syncthreads();
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t ib = item % a.inner_blocks;
    const int64_t c = (item / a.inner_blocks) % a.v.channels;
    const int64_t rb = item / (a.inner_blocks * a.v.channels);
    const int64_t o0 = rb * a.rows, o1 = min(a.v.outer, o0 + a.rows);
    const int64_t i0 = ib * a.inner, i1 = min(a.v.inner, i0 + a.inner), len = i1 - i0;
    uint32_t acc[kN], packed[kN];
#pragma unroll
    for (int j = 0; j < kN; ++j) acc[j] = packed[j] = 0;
    if (len >= kThreads) {
      for (int64_t o = o0; o < o1; ++o) {
        const int64_t xbase = o * a.v.s_outer + c * a.v.s_channel + i0 * a.v.s_inner;
        const int64_t ybase = o * a.yv.s_outer + c * a.yv.s_channel + i0 * a.yv.s_inner;
        // Vector loads from the first 16-byte boundary of the row on; the elements before it (head) and after the
        // last whole vector go one by one.
        int64_t head = len, nvec = 0;
        if (a.v.s_inner == 1) {
          const uintptr_t misalign = reinterpret_cast<uintptr_t>(a.x + xbase) % 16;
          head = min(len, static_cast<int64_t>((16 - misalign) % 16 / sizeof(S)));
          nvec = (len - head) / kVec;
        }
        const int64_t vbase = xbase + head;  // 16-byte aligned when nvec > 0
        if constexpr (kFused) {
          // The activations go out as 16-byte vectors where y's row is contiguous and aligned like x's.
          const bool y_vectors =
              a.yv.s_inner == 1 && reinterpret_cast<uintptr_t>(a.y + ybase + head) % 16 == 0;
          const uint4* vx = reinterpret_cast<const uint4*>(a.x + vbase);
          for (int64_t q = tid; q < nvec; q += kUnroll * kThreads) {
            uint4 raw[kUnroll];
            load_vectors(vx + q, kThreads, kThreads, nvec - q, raw);
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
              const int64_t qu = q + u * kThreads;
              if (qu < nvec) {
                uint4 out;
                if constexpr (kPairs) {
#pragma unroll
                  for (int w = 0; w < 4; ++w) count_pair<S, NT>(word(raw[u], w), p.pair, packed);
                  out = activate_pairs<A, S>(raw[u], p);
                } else {
                  out = count_activate<NT, A, S>(raw[u], p, acc);
                }
                if (y_vectors) {
                  reinterpret_cast<uint4*>(a.y + ybase + head)[qu] = out;
                } else {
                  Vec16<S> o;
                  o.raw = out;
#pragma unroll
                  for (int e = 0; e < kVec; ++e) a.y[ybase + (head + qu * kVec + e) * a.yv.s_inner] = o.s[e];
                }
              }
            }
          }
        } else {
          const uint4* vx = reinterpret_cast<const uint4*>(a.x + vbase);
          for (int64_t q = tid; q < nvec; q += kUnroll * kThreads) {
            uint4 raw[kUnroll];
            load_vectors(vx + q, kThreads, kThreads, nvec - q, raw);
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
              if constexpr (kPairs) {
#pragma unroll
                for (int w = 0; w < 4; ++w) count_pair<S, NT>(word(raw[u], w), p.pair, packed);
              } else {
                count_vector<NT, S>(raw[u], p.th, acc);
              }
            }
          }
        }
        const int64_t tail = head + nvec * kVec;  // [0, head) and [tail, len) one element at a time
        for (int64_t i = tid; i < head + len - tail; i += kThreads) {
          const int64_t at = i < head ? i : tail + (i - head);
          visit<NT, A>(a.x, a.y, xbase + at * a.v.s_inner, ybase + at * a.yv.s_inner, p, acc);
        }
      }
    } else {
      // Short rows: the block covers several rows at once, thread tid at row tid / len, position tid % len.
      const int64_t per = kThreads / len, r = tid / len, i = i0 + tid % len;
      if (r < per) {
        // kUnroll rows at a time, all loads issued first; a row past the end reads as NaN, which counts in no
        // state (and is not written).
        const S* xc = a.x + c * a.v.s_channel + i * a.v.s_inner;
        for (int64_t o = o0 + r; o < o1; o += per * kUnroll) {
          T v[kUnroll];
#pragma unroll
          for (int u = 0; u < kUnroll; ++u) {
            const int64_t ou = o + u * per;
            v[u] = ou < o1 ? Dev<S>::load(xc[ou * a.v.s_outer]) : T(NAN);
          }
#pragma unroll
          for (int u = 0; u < kUnroll; ++u) count_value<NT>(v[u], p.th, acc);
          if constexpr (kFused) {
            S* yc = a.y + c * a.yv.s_channel + i * a.yv.s_inner;
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
              const int64_t ou = o + u * per;
              if (ou < o1) yc[ou * a.yv.s_outer] = Dev<S>::store(activation<A>(v[u], p));
            }
          }
        }
      }
    }
    if constexpr (kPairs) {
#pragma unroll
      for (int j = 0; j < kN; ++j) acc[j] += pair_count(packed[j]);
    }
#pragma unroll
    for (int j = 0; j < kN; ++j) {  // unrolled so that acc stays in registers
      if (j < nacc) {
        const uint32_t s = warp_sum(acc[j]);
        if (lane == 0 && s != 0) atomicAdd(&shared[j], s);
      }
    }
    __syncthreads();
    if (tid <= k) {
      const unsigned long long n = state_of(shared, k, ties, tid);
      if (n != 0) atomicAdd(a.counts + c * (k + 1) + tid, n);
    }
    __syncthreads();
    if (tid < kAcc) shared[tid] = 0;
    __syncthreads();
  }
}

template <class S>
struct ChannelArgs {
  const S* x;
  S* y;
  View v, yv;
  ChannelPlan plan;  // plan.chans <= kThreads
  unsigned long long* counts;
  int flush_items;   // items a block counts into shared memory between flushes (flush_items())
};

template <class S>
__global__ void __launch_bounds__(kThreads) channels_kernel(ChannelArgs<S> a, Params<typename Dev<S>::T> p) {
  __shared__ uint32_t shared[kThreads * kAcc];
  const int tid = threadIdx.x;
  const int nacc = p.th.ignore_ties ? kAcc : 1 + p.th.k;
  const ChannelPlan& plan = a.plan;
  const int64_t items = plan.items(a.v.outer);
  for (int j = tid; j < kThreads * kAcc; j += kThreads) shared[j] = 0;
  __syncthreads();
  const int64_t per = kThreads / plan.chans, r = tid / plan.chans, lane_c = tid % plan.chans;
  int since = 0;  // items counted into `shared` since its last flush (see channels_vec_kernel)
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t cb = item % plan.chan_blocks;
    const int64_t pb = (item / plan.chan_blocks) % plan.pos_blocks;
    const int64_t o = item / (plan.chan_blocks * plan.pos_blocks);
    const int64_t c0 = cb * plan.chans, c1 = min(a.v.channels, c0 + plan.chans);
    const int64_t q0 = pb * plan.positions, q1 = min(a.v.inner, q0 + plan.positions);
    const int64_t c = c0 + lane_c;
    uint32_t acc[kAcc];
#pragma unroll
    for (int j = 0; j < kAcc; ++j) acc[j] = 0;
    if (r < per && c < c1) {
      for (int64_t q = q0 + r; q < q1; q += per) {
        visit<0, kAnyActivation>(a.x, a.y, o * a.v.s_outer + c * a.v.s_channel + q * a.v.s_inner,
                                 o * a.yv.s_outer + c * a.yv.s_channel + q * a.yv.s_inner, p, acc);
      }
#pragma unroll
      for (int j = 0; j < kAcc; ++j) {
        if (j < nacc && acc[j] != 0) atomicAdd(&shared[lane_c * kAcc + j], acc[j]);
      }
    }
    if (++since < a.flush_items && item + gridDim.x < items) continue;
    __syncthreads();
    for (int64_t idx = tid; idx < (c1 - c0) * (p.th.k + 1); idx += kThreads) {
      const int64_t ch = idx / (p.th.k + 1);
      const int s = static_cast<int>(idx % (p.th.k + 1));
      const unsigned long long n = state_of(shared + ch * kAcc, p.th.k, p.th.ignore_ties, s);
      if (n != 0) atomicAdd(a.counts + (c0 + ch) * (p.th.k + 1) + s, n);
    }
    __syncthreads();
    for (int j = tid; j < kThreads * kAcc; j += kThreads) shared[j] = 0;
    __syncthreads();
    since = 0;
  }
}

template <class S>
struct ChannelVecArgs {
  const S* x;
  S* y;                       // fused: the activation, laid out exactly as x (unused when only counting)
  View v;                     // channel stride 1; position (inner) and outer strides keep 16-byte alignment
  int64_t groups;             // 16-byte channel groups: C / kVec
  int64_t chunk_groups;       // groups per channel chunk: one thread each per position (<= kThreads)
  int64_t chunks;             // channel chunks
  int64_t positions;          // positions per item
  int64_t pos_blocks;         // items per (outer index, chunk)
  unsigned long long* counts;
  int flush_items;            // items a block counts into shared memory between flushes (flush_items())
  int hold_items;             // items a thread counts in registers between adds into shared memory (hold_items())
};

template <class S, int NT, int A>
__global__ void __launch_bounds__(kThreads, min_blocks<A>())
    channels_vec_kernel(ChannelVecArgs<S> a, Params<typename Dev<S>::T> p) {
  using T = typename Dev<S>::T;
  constexpr bool kFused = A != kNone;
  constexpr int kVec = 16 / sizeof(S);
  constexpr int kN = 1 + NT;
  // 16-bit channels are counted two at a time (count_pair), fused or not: per lane at most a.positions values,
  // which launch_channels_vec keeps below 2^16.
  constexpr bool kPairs = paired<S>();
  __shared__ uint32_t shared[kThreads * kVec * kN];  // [channel of the chunk][valid, gt_0..gt_{NT-1}]
  const int tid = threadIdx.x, nthreads = blockDim.x;
  const int64_t G = a.chunk_groups, per = nthreads / G, r = tid / G, g = tid % G;
  const int64_t items = a.v.outer * a.chunks * a.pos_blocks;
  for (int64_t j = tid; j < G * kVec * kN; j += nthreads) shared[j] = 0;
  __syncthreads();
  // A thread's counts stay in registers from item to item while its items count the same channels (a.hold_items
  // > 1 only then), and go into shared memory every a.hold_items items and before each flush: one round of shared
  // atomics (kVec * kN a thread, bank conflicts among threads of one warp) per a.hold_items items, not per item.
  uint32_t acc[kVec][kN], packed[4][kN];  // packed[w]: channels 2w (low half) and 2w + 1 of 16-bit words
#pragma unroll
  for (int e = 0; e < kVec; ++e) {
#pragma unroll
    for (int j = 0; j < kN; ++j) acc[e][j] = packed[e % 4][j] = 0;
  }
  int since = 0;  // items counted into `shared` since its last flush (the same for every thread of the block)
  int held = 0;   // items counted in registers since their last add into `shared`
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t cb = item % a.chunks;
    const int64_t pb = (item / a.chunks) % a.pos_blocks;
    const int64_t o = item / (a.chunks * a.pos_blocks);
    const int64_t g0 = cb * G, gn = min(G, a.groups - g0);
    const int64_t q0 = pb * a.positions, q1 = min(a.v.inner, q0 + a.positions);
    if (g < gn) {
      const int64_t base = o * a.v.s_outer + (g0 + g) * kVec;  // element offset of this group at position 0
      for (int64_t q = q0 + r; q < q1; q += per * kUnroll) {
        uint4 raw[kUnroll];
        const uint4* vx = reinterpret_cast<const uint4*>(a.x + base + q * a.v.s_inner);
        load_vectors(vx, per * a.v.s_inner / kVec, per, q1 - q, raw);
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int64_t qu = q + u * per;
          if constexpr (kFused) {
            if (qu < q1) {
              uint4 out;
              if constexpr (kPairs) {
#pragma unroll
                for (int w = 0; w < 4; ++w) count_pair<S, NT>(word(raw[u], w), p.pair, packed[w]);
                out = activate_pairs<A, S>(raw[u], p);
              } else {
                S values[kVec];
#pragma unroll
                for (int e = 0; e < kVec; ++e) {
                  const T v = lane<S>(raw[u], e);
                  count_value<NT>(v, p.th, acc[e]);
                  values[e] = Dev<S>::store(activation<A>(v, p));
                }
                out = pack(values);
              }
              uint4* y = reinterpret_cast<uint4*>(a.y + base + qu * a.v.s_inner);
              __stwb(y, out);  // one 16-byte store (a plain assignment here came out as four 4-byte stores)
            }
          } else if constexpr (kPairs) {
#pragma unroll
            for (int w = 0; w < 4; ++w) count_pair<S, NT>(word(raw[u], w), p.pair, packed[w]);
          } else {
#pragma unroll
            for (int e = 0; e < kVec; ++e) count_value<NT>(lane<S>(raw[u], e), p.th, acc[e]);
          }
        }
      }
    }
    const bool flush = ++since >= a.flush_items || item + gridDim.x >= items;
    if (++held >= a.hold_items || flush) {
      if (g < gn) {
        if constexpr (kPairs) {
#pragma unroll
          for (int w = 0; w < 4; ++w) {
#pragma unroll
            for (int j = 0; j < kN; ++j) {
              acc[2 * w][j] = low_count(packed[w][j]);
              acc[2 * w + 1][j] = high_count(packed[w][j]);
            }
          }
        }
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
#pragma unroll
          for (int j = 0; j < kN; ++j) {
            if (acc[e][j] != 0) atomicAdd(&shared[(g * kVec + e) * kN + j], acc[e][j]);
          }
        }
      }
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
#pragma unroll
        for (int j = 0; j < kN; ++j) acc[e][j] = packed[e % 4][j] = 0;
      }
      held = 0;
    }
    // Flush the block's counts to global memory every a.flush_items items and after its last: once per block
    // where its items all count the same channels (flush_items()). A flush after every item costs three
    // barriers, during which the block loads nothing, and C * (NT + 1) global atomics: Swin-T's 384-channel
    // tokens come in items of 38-80 positions, and on the H200 took 1.34-1.36x x.sum()'s time, about the same
    // time as on the H100, whose memory is 1.4x slower (session 13; this change and a.hold_items are not yet
    // timed).
    if (!flush) continue;
    __syncthreads();
    for (int64_t idx = tid; idx < gn * kVec * (NT + 1); idx += nthreads) {
      const int64_t ch = idx / (NT + 1);
      const int s = static_cast<int>(idx % (NT + 1));
      const uint32_t* c = shared + ch * kN;
      const unsigned long long n = static_cast<unsigned long long>(c[s] - (s < NT ? c[s + 1] : 0u));
      if (n != 0) atomicAdd(a.counts + (g0 * kVec + ch) * (NT + 1) + s, n);
    }
    __syncthreads();
    for (int64_t j = tid; j < gn * kVec * kN; j += nthreads) shared[j] = 0;
    __syncthreads();
    since = 0;
  }
}

// Launches kernel(args...) on `blocks` blocks of `threads` threads on the stream, and reports a failed launch.
// Under tests/native/cuda_emulation.h (NEPENTHE_CUDA_EMULATION), the kernel runs on the host instead.
template <class... Params, class... Args>
void launch(void (*kernel)(Params...), int64_t blocks, int threads, cudaStream_t stream, const char* what,
            const Args&... args) {
#if defined(NEPENTHE_CUDA_EMULATION)
  (void)stream;
  emulation::launch(kernel, blocks, threads, args...);
#else
  kernel<<<static_cast<unsigned>(blocks), threads, 0, stream>>>(args...);
#endif
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

int current_device() {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return dev;
}

int multiprocessors(int dev) {
  static std::atomic<int> cache[kMaxDevices];
  if (dev >= 0 && dev < kMaxDevices && cache[dev].load(std::memory_order_relaxed) > 0) return cache[dev];
  int n = 0;
  if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n < 1) {
    cudaGetLastError();
    n = 1;
  }
  if (dev >= 0 && dev < kMaxDevices) cache[dev].store(n, std::memory_order_relaxed);
  return n;
}

// Blocks of `block` threads of Kernel that the current device runs at once (remembered per kernel, device and
// block size: the kernel is a template argument so that kernels of the same signature keep separate counts).
template <auto Kernel>
int64_t resident_blocks(int block) {
  static std::atomic<int> cache[kMaxDevices][kThreads + 1];
  const int dev = current_device();
  const bool cached = dev >= 0 && dev < kMaxDevices && block >= 1 && block <= kThreads;
  int per_sm = cached ? cache[dev][block].load(std::memory_order_relaxed) : 0;
  if (per_sm < 1) {
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, Kernel, block, 0) != cudaSuccess || per_sm < 1) {
      cudaGetLastError();
      per_sm = 1;
    }
    if (cached) cache[dev][block].store(per_sm, std::memory_order_relaxed);
  }
  return static_cast<int64_t>(per_sm) * multiprocessors(dev);
}

// Elements per work item: about kItemsPerBlock items for each block that fits on the device at once.
int64_t item_elements(const View& v, int64_t slots) {
  return clamp64(ceil_div(v.numel(), slots * kItemsPerBlock), kMinItem, kMaxItem);
}

template <class S, int NT, int A>
void launch_rows(const CountRequest& r, const View& v, const View& yv, const Params<typename Dev<S>::T>& p,
                 cudaStream_t stream) {
  constexpr auto kernel = rows_kernel<S, NT, A>;
  const int64_t slots = resident_blocks<kernel>(kThreads);
  const int64_t target = item_elements(v, slots);
  RowArgs<S> a{static_cast<const S*>(r.x), static_cast<S*>(r.y), v, yv, 1, 1, 1, 1,
               reinterpret_cast<unsigned long long*>(r.counts)};
  a.inner = clamp64(v.inner, 1, target);
  a.rows = a.inner == v.inner ? clamp64(target / a.inner, 1, v.outer) : 1;
  a.row_blocks = ceil_div(v.outer, a.rows);
  a.inner_blocks = ceil_div(v.inner, a.inner);
  const int64_t blocks = std::min(v.channels * a.row_blocks * a.inner_blocks, slots);
  launch(kernel, blocks, kThreads, stream, "nepenthe rows_kernel launch", a, p);
}

// Items a block of a channel kernel counts into its shared counters before it flushes them to global memory. Item i
// counts channel chunk i % chunks, and a block walks items blockIdx.x, blockIdx.x + blocks, ...: when `blocks` is
// a multiple of `chunks` (one chunk: every channels_last and token tensor up to 2048 16-bit or 1024 float32
// channels) its items all count the same channels, and it flushes once, unless its uint32 counters (at most one
// count per position) could pass kMaxPending first. Otherwise it flushes after every item.
int flush_items(int64_t blocks, int64_t chunks, int64_t positions) {
  if (blocks % chunks != 0) return 1;
  return static_cast<int>(clamp64(kMaxPending / positions, 1, int64_t{1} << 30));
}

// Items a thread of channels_vec_kernel counts in registers before it adds them into shared memory: as many as its
// packed 16-bit counters hold (a thread counts at most `per_item` positions an item), where the block's items all
// count the same channels (flush_items > 1); else one. Emulated (tests/native), two, so that the tests see counts
// held across items and added between flushes.
int hold_items(int flush_items, int64_t per_item) {
  if (flush_items == 1) return 1;
#if defined(NEPENTHE_CUDA_EMULATION)
  (void)per_item;
  return 2;
#else
  return static_cast<int>(clamp64(0xffff / per_item, 1, int64_t{1} << 30));
#endif
}

template <class S>
void launch_channels(const CountRequest& r, const View& v, const View& yv, const Params<typename Dev<S>::T>& p,
                     cudaStream_t stream) {
  const int64_t slots = resident_blocks<channels_kernel<S>>(kThreads);
  // More than kThreads channels: blocks of 128 (or kThreads when that divides C) keep every thread busy.
  const int64_t max_chans = v.channels <= kThreads || v.channels % kThreads == 0 ? kThreads : kThreads / 2;
  ChannelArgs<S> a{static_cast<const S*>(r.x), static_cast<S*>(r.y), v, yv,
                   plan_channels(v, item_elements(v, slots), max_chans),
                   reinterpret_cast<unsigned long long*>(r.counts), 1};
  const int64_t blocks = std::min(a.plan.items(v.outer), slots);
  a.flush_items = flush_items(blocks, a.plan.chan_blocks, a.plan.positions);
  launch(channels_kernel<S>, blocks, kThreads, stream, "nepenthe channels_kernel launch", a, p);
}

// Whether channels_vec_kernel can read v: channel stride 1, whole 16-byte channel groups, aligned positions.
template <class S>
bool vector_channels(const CountRequest& r, const View& v) {
  constexpr int64_t kVec = 16 / sizeof(S);
  const auto aligned = [](int64_t stride) { return (stride * static_cast<int64_t>(sizeof(S))) % 16 == 0; };
  return v.s_channel == 1 && v.channels % kVec == 0 && reinterpret_cast<uintptr_t>(r.x) % 16 == 0 &&
         aligned(v.s_inner) && (v.outer == 1 || aligned(v.s_outer));
}

// Positions each thread reads per work item, at least: a few rounds of kUnroll loads between the block's flushes.
constexpr int64_t kMinRounds = 4;

template <class S, int NT, int A>
void launch_channels_vec(const CountRequest& r, View v, const Params<typename Dev<S>::T>& p, cudaStream_t stream) {
  constexpr int64_t kVec = 16 / sizeof(S);
  // One position axis where the outer index allows: (N, C) rows, or outer blocks that follow each other.
  if (v.outer > 1 && v.inner == 1) {
    v.inner = v.outer;
    v.s_inner = v.s_outer;
    v.outer = 1;
    v.s_outer = 0;
  } else if (v.outer > 1 && v.s_outer == v.inner * v.s_inner) {
    v.inner *= v.outer;
    v.outer = 1;
    v.s_outer = 0;
  }
  ChannelVecArgs<S> a{static_cast<const S*>(r.x), static_cast<S*>(r.y), v, v.channels / kVec, 1, 1, 1, 1,
                      reinterpret_cast<unsigned long long*>(r.counts), 1, 1};
  a.chunks = ceil_div(a.groups, kThreads);
  a.chunk_groups = ceil_div(a.groups, a.chunks);
  const int64_t per = kThreads / a.chunk_groups;
  const int block = static_cast<int>(per * a.chunk_groups);
  constexpr auto kernel = channels_vec_kernel<S, NT, A>;
  const int64_t slots = resident_blocks<kernel>(block);
  const int64_t positions = std::max(item_elements(v, slots) / (a.chunk_groups * kVec), per * kUnroll * kMinRounds);
  a.positions = clamp64(positions, 1, v.inner);
  static_assert(std::max(kMaxItem / kVec, kThreads * kUnroll * kMinRounds) < (1 << 16),
                "channels_vec_kernel's packed 16-bit counters would overflow");
  a.pos_blocks = ceil_div(v.inner, a.positions);
  const int64_t blocks = std::min(v.outer * a.chunks * a.pos_blocks, slots);
  a.flush_items = flush_items(blocks, a.chunks, a.positions);
  a.hold_items = hold_items(a.flush_items, ceil_div(a.positions, per));
  launch(kernel, blocks, block, stream, "nepenthe channels_vec_kernel launch", a, p);
}

template <int A>
using ActivationCode = std::integral_constant<int, A>;

// Calls f(ActivationCode<A>{}) with the activation `act` (kNone: counting only) fixed at compile time where the
// kernels are compiled for it with NT thresholds: the pairings the profiler makes (relu, leaky_relu and GELU with
// threshold 0, hardtanh and relu6 with their two bounds). Other pairings, and NT == 0 (thresholds read at run
// time), get kAnyActivation. A fixed activation keeps the others' code out of the loop: GELU's, inlined beside
// relu's, had taken the fused 16-bit kernels to 80 registers, with a branch per value.
template <int NT, class F>
void with_activation(int act, F&& f) {
  if (act == kNone) return f(ActivationCode<kNone>{});
  if constexpr (NT == 1) {
    switch (act) {
      case kRelu:
        return f(ActivationCode<kRelu>{});
      case kLeakyRelu:
        return f(ActivationCode<kLeakyRelu>{});
      case kGeluErf:
        return f(ActivationCode<kGeluErf>{});
      case kGeluTanh:
        return f(ActivationCode<kGeluTanh>{});
      default:
        break;
    }
  } else if constexpr (NT == 2) {
    if (act == kHardtanh) return f(ActivationCode<kHardtanh>{});
  }
  f(ActivationCode<kAnyActivation>{});
}

template <class S>
void run(const CountRequest& r) {
  using T = typename Dev<S>::T;
  Params<T> p{};
  p.th.k = r.num_thresholds;
  p.th.ignore_ties = r.ignore_ties;
  for (int k = 0; k < r.num_thresholds; ++k) {
    p.th.greater[k] = static_cast<T>(r.greater[k]);
    p.th.tie[k] = static_cast<T>(r.tie[k]);
    if constexpr (sizeof(S) == 2) p.pair[k] = pair_threshold<S>(static_cast<float>(r.greater[k]));
  }
  const bool fused = r.y != nullptr;
  p.act = fused ? r.activation.kind : kNone;
  p.lo = static_cast<T>(r.activation.p0);
  p.hi = static_cast<T>(r.activation.p1);
  p.slope = static_cast<T>(r.activation.p0);
  if constexpr (sizeof(S) == 2) {
    p.clamp.on = p.act == kRelu || p.act == kHardtanh;
    const float lo = p.act == kRelu ? 0.0f : p.lo, hi = p.act == kRelu ? INFINITY : p.hi;
    p.clamp.lo = pair_threshold<S>(lo);
    p.clamp.hi = pair_threshold<S>(hi);
    p.clamp.lo_out = pair_value<S>(lo);
    p.clamp.hi_out = pair_value<S>(hi);
  }
  View v = r.view, yv = r.y_view;
  if (v.inner == 1) v.s_inner = v.s_channel == 1 ? 0 : 1;  // a size-1 dimension's stride means nothing
  if (yv.inner == 1) yv.s_inner = 0;
  const auto stream = reinterpret_cast<cudaStream_t>(r.stream);
  const int nt = r.ignore_ties ? 0 : r.num_thresholds;  // thresholds known at compile time (0: read at run time)
  // Channels of fewer values than an eighth of a block ((C, 3) read along C, or one image of tiny maps) go to
  // channels_kernel, a block of channels per work item: rows_kernel would run a block reduction for each channel
  // with most of its threads idle (600k channels of 3 values took minutes in the CUDA emulation).
  const bool few_per_channel = v.outer * v.inner < kThreads / 8;
  if ((v.s_inner != 1 && v.s_channel == 1) || few_per_channel) {
    // A fused output goes out through the same vector offsets, so it must be laid out (and aligned) like x.
    const bool y_like_x = !fused || (yv.s_outer == v.s_outer && yv.s_channel == v.s_channel &&
                                     yv.s_inner == v.s_inner && reinterpret_cast<uintptr_t>(r.y) % 16 == 0);
    if ((nt == 1 || nt == 2) && y_like_x && vector_channels<S>(r, v)) {
      const auto vec = [&](auto nt_code) {
        constexpr int NT = decltype(nt_code)::value;
        with_activation<NT>(p.act, [&](auto a) { launch_channels_vec<S, NT, decltype(a)::value>(r, v, p, stream); });
      };
      if (nt == 1) {
        vec(std::integral_constant<int, 1>{});
      } else {
        vec(std::integral_constant<int, 2>{});
      }
    } else {
      launch_channels<S>(r, v, yv, p, stream);
    }
    return;
  }
  const auto rows = [&](auto nt_code) {
    constexpr int NT = decltype(nt_code)::value;
    with_activation<NT>(p.act, [&](auto a) { launch_rows<S, NT, decltype(a)::value>(r, v, yv, p, stream); });
  };
  if (nt == 1) {
    rows(std::integral_constant<int, 1>{});
  } else if (nt == 2) {
    rows(std::integral_constant<int, 2>{});
  } else {
    rows(std::integral_constant<int, 0>{});
  }
}

}  // namespace

void count_cuda(const CountRequest& r) {
  switch (r.dtype) {
    case kFloat32:
      run<float>(r);
      break;
    case kFloat16:
      run<__half>(r);
      break;
    case kBFloat16:
      run<__nv_bfloat16>(r);
      break;
    case kFloat64:
      run<double>(r);
      break;
    default:
      throw std::invalid_argument("unknown dtype code");
  }
}

}  // namespace nepenthe

namespace nepenthe {

int cuda_runtime_version() {
  int version = 0;
  return cudaRuntimeGetVersion(&version) == cudaSuccess ? version : -1;
}

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later calls report their own
    return -1;
  }
  return count;
}

}  // namespace nepenthe
