// CUDA counting and fused-activation kernels (no libtorch: raw device pointers, strides and a stream).
//
// Two layouts, as on CPU. Row kernel (inner stride 1, or any strides): a work item is one channel over a
// block of rows and inner positions, read with 16-byte vector loads where a row is aligned. Channel kernel
// (channel stride 1): a work item is a block of positions x up to 256 channels, consecutive threads reading
// consecutive channels (coalesced). Each thread keeps its comparison counts in registers (uint32); a block
// reduces them into shared-memory counters and adds each item's exact per-state counts into the int64 counts
// with atomicAdd. Blocks walk the items grid-stride. No host synchronisation: everything runs on the
// caller's stream.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "count_cuda.h"

namespace nepenthe {
namespace {

constexpr int kThreads = 256;
constexpr int kAcc = 1 + 2 * kMaxThresholds;  // [valid, gt_0..gt_6, tie_0..tie_6] at fixed positions
constexpr int kTie0 = 1 + kMaxThresholds;
constexpr int64_t kMinItem = 1 << 13;   // elements per work item: enough to amortize its block reduction,
constexpr int64_t kMaxItem = 1 << 16;   // and small enough that mid-sized tensors still fill every SM
constexpr int64_t kWantItems = 2048;
constexpr int64_t kMaxBlocks = 4096;

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

template <class T>
struct Params {
  Thresholds<T> th;
  int act;
  T lo, hi, slope;
};

template <class T>
__device__ __forceinline__ void count_value(T x, const Thresholds<T>& th, uint32_t* acc) {
  acc[0] += x == x;
#pragma unroll
  for (int k = 0; k < kMaxThresholds; ++k) {
    if (k < th.k) acc[1 + k] += x > th.greater[k];
  }
  if (th.ignore_ties) {
#pragma unroll
    for (int k = 0; k < kMaxThresholds; ++k) {
      if (k < th.k) acc[kTie0 + k] += x == th.tie[k];
    }
  }
}

// Bit-exact with torch's CUDA kernels for relu/hardtanh/leaky_relu: NaN propagates, and a value at or below the
// lower bound becomes the bound, so relu(-0.0) is +0.0 as on torch's GPU (its CPU kernels keep -0.0). GELU in T.
template <class T>
__device__ __forceinline__ T activation(T x, const Params<T>& p) {
  switch (p.act) {
    case kRelu:
      return x <= T(0) ? T(0) : x;
    case kHardtanh:
      return x <= p.lo ? p.lo : (x > p.hi ? p.hi : x);
    case kLeakyRelu:
      return x > T(0) ? x : x * p.slope;
    case kGeluErf:
      return T(0.5) * x * (T(1) + erf(x * T(0.70710678118654752440)));
    case kGeluTanh:
      return T(0.5) * x * (T(1) + tanh(T(0.79788456080286535588) * (x + T(0.044715) * x * x * x)));
    default:
      return x;
  }
}

// Per-state count s of the comparison counts c (fixed positions).
__device__ __forceinline__ unsigned long long state_of(const uint32_t* c, int k, bool ignore_ties, int s) {
  const uint32_t lower = c[s], upper = s < k ? c[s + 1] : 0u, ties = (ignore_ties && s < k) ? c[kTie0 + s] : 0u;
  return static_cast<unsigned long long>(lower - upper - ties);
}

template <class S, class T = typename Dev<S>::T>
__device__ __forceinline__ void visit(const S* x, S* y, int64_t xi, int64_t yi, const Params<T>& p, uint32_t* acc) {
  const T v = Dev<S>::load(x[xi]);
  count_value(v, p.th, acc);
  if (y != nullptr) y[yi] = Dev<S>::store(activation(v, p));
}

template <class S>
struct RowArgs {
  const S* x;
  S* y;
  View v, yv;
  int64_t rows, inner, row_blocks, inner_blocks;  // rows and inner positions per item (one channel each)
  unsigned long long* counts;
};

template <class S>
__global__ void __launch_bounds__(kThreads) rows_kernel(RowArgs<S> a, Params<typename Dev<S>::T> p) {
  using T = typename Dev<S>::T;
  constexpr int kVec = 16 / sizeof(S);
  __shared__ uint32_t shared[kAcc];
  const int tid = threadIdx.x, lane = tid & 31;
  const int nacc = p.th.ignore_ties ? kAcc : 1 + kMaxThresholds;
  const int64_t items = a.v.channels * a.row_blocks * a.inner_blocks;
  if (tid < kAcc) shared[tid] = 0;
  __syncthreads();
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t ib = item % a.inner_blocks;
    const int64_t c = (item / a.inner_blocks) % a.v.channels;
    const int64_t rb = item / (a.inner_blocks * a.v.channels);
    const int64_t o0 = rb * a.rows, o1 = min(a.v.outer, o0 + a.rows);
    const int64_t i0 = ib * a.inner, i1 = min(a.v.inner, i0 + a.inner), len = i1 - i0;
    uint32_t acc[kAcc];
#pragma unroll
    for (int j = 0; j < kAcc; ++j) acc[j] = 0;
    if (len >= kThreads) {
      for (int64_t o = o0; o < o1; ++o) {
        const int64_t xbase = o * a.v.s_outer + c * a.v.s_channel + i0 * a.v.s_inner;
        const int64_t ybase = o * a.yv.s_outer + c * a.yv.s_channel + i0 * a.yv.s_inner;
        int64_t done = 0;
        if (a.v.s_inner == 1 && (reinterpret_cast<uintptr_t>(a.x + xbase) % 16) == 0) {
          const int64_t nvec = len / kVec;
          for (int64_t q = tid; q < nvec; q += kThreads) {
            union {
              uint4 raw;
              S s[kVec];
            } u;
            u.raw = *reinterpret_cast<const uint4*>(a.x + xbase + q * kVec);
#pragma unroll
            for (int e = 0; e < kVec; ++e) {
              const T v = Dev<S>::load(u.s[e]);
              count_value(v, p.th, acc);
              if (a.y != nullptr) a.y[ybase + (q * kVec + e) * a.yv.s_inner] = Dev<S>::store(activation(v, p));
            }
          }
          done = nvec * kVec;
        }
        for (int64_t i = done + tid; i < len; i += kThreads) {
          visit(a.x, a.y, xbase + i * a.v.s_inner, ybase + i * a.yv.s_inner, p, acc);
        }
      }
    } else {
      // Short rows: the block covers several rows at once, thread tid at row tid / len, position tid % len.
      const int64_t per = kThreads / len, r = tid / len, i = i0 + tid % len;
      if (r < per) {
        for (int64_t o = o0 + r; o < o1; o += per) {
          visit(a.x, a.y, o * a.v.s_outer + c * a.v.s_channel + i * a.v.s_inner,
                o * a.yv.s_outer + c * a.yv.s_channel + i * a.yv.s_inner, p, acc);
        }
      }
    }
#pragma unroll
    for (int j = 0; j < kAcc; ++j) {  // unrolled so that acc stays in registers
      if (j < nacc) {
        uint32_t s = acc[j];
        for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
        if (lane == 0 && s != 0) atomicAdd(&shared[j], s);
      }
    }
    __syncthreads();
    if (tid <= p.th.k) {
      const unsigned long long n = state_of(shared, p.th.k, p.th.ignore_ties, tid);
      if (n != 0) atomicAdd(a.counts + c * (p.th.k + 1) + tid, n);
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
};

template <class S>
__global__ void __launch_bounds__(kThreads) channels_kernel(ChannelArgs<S> a, Params<typename Dev<S>::T> p) {
  __shared__ uint32_t shared[kThreads * kAcc];
  const int tid = threadIdx.x;
  const int nacc = p.th.ignore_ties ? kAcc : 1 + kMaxThresholds;
  const ChannelPlan& plan = a.plan;
  const int64_t items = plan.items(a.v.outer);
  for (int j = tid; j < kThreads * kAcc; j += kThreads) shared[j] = 0;
  __syncthreads();
  const int64_t per = kThreads / plan.chans, r = tid / plan.chans, lane_c = tid % plan.chans;
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
        visit(a.x, a.y, o * a.v.s_outer + c * a.v.s_channel + q * a.v.s_inner,
              o * a.yv.s_outer + c * a.yv.s_channel + q * a.yv.s_inner, p, acc);
      }
#pragma unroll
      for (int j = 0; j < kAcc; ++j) {
        if (j < nacc && acc[j] != 0) atomicAdd(&shared[lane_c * kAcc + j], acc[j]);
      }
    }
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
  }
}

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
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
  }
  p.act = r.y != nullptr ? r.activation.kind : kNone;
  p.lo = static_cast<T>(r.activation.p0);
  p.hi = static_cast<T>(r.activation.p1);
  p.slope = static_cast<T>(r.activation.p0);
  View v = r.view, yv = r.y_view;
  if (v.inner == 1) v.s_inner = v.s_channel == 1 ? 0 : 1;  // a size-1 dimension's stride means nothing
  if (yv.inner == 1) yv.s_inner = 0;
  const auto stream = reinterpret_cast<cudaStream_t>(r.stream);
  const int64_t target = clamp64(ceil_div(v.outer * v.channels * v.inner, kWantItems), kMinItem, kMaxItem);
  auto* counts = reinterpret_cast<unsigned long long*>(r.counts);
  if (v.s_inner != 1 && v.s_channel == 1) {
    // More than kThreads channels: blocks of 128 (or kThreads when that divides C) keep every thread busy.
    const int64_t max_chans = v.channels <= kThreads || v.channels % kThreads == 0 ? kThreads : kThreads / 2;
    ChannelArgs<S> a{static_cast<const S*>(r.x), static_cast<S*>(r.y), v, yv,
                     plan_channels(v, target, max_chans), counts};
    const int64_t blocks = std::min(a.plan.items(v.outer), kMaxBlocks);
    channels_kernel<S><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a, p);
    check_launch("nepenthe channels_kernel launch");
  } else {
    RowArgs<S> a{static_cast<const S*>(r.x), static_cast<S*>(r.y), v, yv, 1, 1, 1, 1, counts};
    a.inner = clamp64(v.inner, 1, target);
    a.rows = a.inner == v.inner ? clamp64(target / a.inner, 1, v.outer) : 1;
    a.row_blocks = ceil_div(v.outer, a.rows);
    a.inner_blocks = ceil_div(v.inner, a.inner);
    const int64_t blocks = std::min(v.channels * a.row_blocks * a.inner_blocks, kMaxBlocks);
    rows_kernel<S><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a, p);
    check_launch("nepenthe rows_kernel launch");
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
