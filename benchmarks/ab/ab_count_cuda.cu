// A/B timing of two builds of the CUDA counting kernels in one process, on one GPU (see benchmarks/ab/ab_cuda.sh).
//
// Both builds of csrc/cuda/count_cuda.cu are compiled with their namespace renamed (-Dnepenthe=nepA / nepB) and
// linked here. Each round times a hand-written read of the same bytes (16-byte loads summed as float32: the
// yardstick of x.sum()), then A and B in alternating order; each timing is `reps` back-to-back launches between two
// CUDA events, divided by reps. Before timing, one launch of each build is checked against a count made on the
// host from the same values (so a GPU session also gets an independent check of both builds' counts).
//
// Arguments: N C HW layout dtype K rounds (ab_case.h says what the first six mean).
// Prints one line per case; exits 1 if a build's counts differ from the host's.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "ab_case.h"

namespace nepA {
struct CountRequest;
void count_cuda(const CountRequest&);
}  // namespace nepA
namespace nepB {
struct CountRequest;
void count_cuda(const CountRequest&);
}  // namespace nepB

namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(err));
    std::exit(2);
  }
}

__device__ uint32_t mix(uint64_t i) {
  uint64_t z = i + 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return static_cast<uint32_t>(z ^ (z >> 31));
}

// Activation-like values: 30% exact zeros, the rest uniform in [-8, 8); one in 4096 NaN, +-inf or -0.0.
__global__ void fill(void* x, int dtype, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint32_t h = mix(static_cast<uint64_t>(i));
    float v = (h & 1023u) < 307u ? 0.0f : (static_cast<float>(h >> 10) * (1.0f / 4194304.0f) - 0.5f) * 16.0f;
    if ((h >> 20) % 4096u == 0) {
      const float specials[4] = {NAN, INFINITY, -INFINITY, -0.0f};
      v = specials[h & 3u];
    }
    if (dtype == 0) {
      static_cast<float*>(x)[i] = v;
    } else if (dtype == 1) {
      static_cast<__half*>(x)[i] = __float2half_rn(v);
    } else {
      static_cast<__nv_bfloat16*>(x)[i] = __float2bfloat16_rn(v);
    }
  }
}

// A read of the same bytes: 16-byte loads, four in flight per thread, summed as float32, one atomic per warp
// (x.sum()'s yardstick).
__global__ void read_sum(const uint4* x, int64_t nvec, float* out) {
  float s = 0.0f;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < nvec; i += 4 * step) {
    uint4 v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) v[u] = i + u * step < nvec ? __ldg(x + i + u * step) : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      s += __uint_as_float(v[u].x) + __uint_as_float(v[u].y) + __uint_as_float(v[u].z) + __uint_as_float(v[u].w);
    }
  }
  for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
  if ((threadIdx.x & 31) == 0) atomicAdd(out, s);
}

double widen(const std::vector<uint8_t>& host, int dtype, int64_t i) {
  if (dtype == 0) {
    float f;
    std::memcpy(&f, host.data() + 4 * i, 4);
    return f;
  }
  uint16_t b;
  std::memcpy(&b, host.data() + 2 * i, 2);
  if (dtype == 2) {
    const uint32_t bits = static_cast<uint32_t>(b) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
  const int e = (b >> 10) & 0x1f, m = b & 0x3ff;
  const double s = (b & 0x8000) ? -1.0 : 1.0;
  if (e == 0x1f) return m ? NAN : s * INFINITY;
  return e == 0 ? s * std::ldexp(m, -24) : s * std::ldexp(1024 + m, e - 25);
}

template <class F>
double time_us(F launch, int reps) {
  cudaEvent_t a, b;
  check(cudaEventCreate(&a), "event");
  check(cudaEventCreate(&b), "event");
  check(cudaEventRecord(a), "record");
  for (int i = 0; i < reps; ++i) launch();
  check(cudaEventRecord(b), "record");
  check(cudaEventSynchronize(b), "sync");
  float ms = 0;
  check(cudaEventElapsedTime(&ms, a, b), "elapsed");
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return 1000.0 * ms / reps;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 8) {
    std::fprintf(stderr, "usage: %s N C HW nchw|cl dtype(0 f32, 1 f16, 2 bf16) K(1|2) rounds\n", argv[0]);
    return 2;
  }
  const AbCase ab = AbCase::parse(argv);
  const int rounds = std::atoi(argv[7]), dtype = ab.dtype, k = ab.k;
  const int64_t n = ab.elements(), channels = ab.channels;
  const size_t bytes = n * ab.element_bytes();

  void* x = nullptr;
  int64_t* counts = nullptr;
  float* sum = nullptr;
  check(cudaMalloc(&x, bytes + 16), "cudaMalloc x");
  check(cudaMalloc(&counts, channels * (k + 1) * sizeof(int64_t)), "cudaMalloc counts");
  check(cudaMalloc(&sum, sizeof(float)), "cudaMalloc sum");
  fill<<<1024, 256>>>(x, dtype, n);
  check(cudaDeviceSynchronize(), "fill");

  nepenthe::CountRequest r = ab.request(x, counts);
  r.stream = 0;
  auto run_a = [&] { nepA::count_cuda(reinterpret_cast<const nepA::CountRequest&>(r)); };
  auto run_b = [&] { nepB::count_cuda(reinterpret_cast<const nepB::CountRequest&>(r)); };

  // The host's counts: channel c of value i, state = number of thresholds below it, NaN in none.
  std::vector<uint8_t> host(bytes);
  check(cudaMemcpy(host.data(), x, bytes, cudaMemcpyDeviceToHost), "copy x");
  std::vector<int64_t> want(channels * (k + 1), 0);
  for (int64_t i = 0; i < n; ++i) {
    const double v = widen(host, dtype, i);
    if (std::isnan(v)) continue;
    const int64_t c = ab.channels_last ? i % channels : (i / ab.hw) % channels;
    want[c * (k + 1) + (v > 0.0) + (k > 1 && v > 6.0)] += 1;
  }
  bool exact = true;
  const auto verify = [&](const char* name, auto run) {
    std::vector<int64_t> got(want.size());
    check(cudaMemset(counts, 0, got.size() * sizeof(int64_t)), "memset");
    run();
    check(cudaDeviceSynchronize(), name);
    check(cudaMemcpy(got.data(), counts, got.size() * sizeof(int64_t), cudaMemcpyDeviceToHost), "copy counts");
    if (got != want) {
      exact = false;
      std::printf("MISMATCH: build %s's counts differ from the host's\n", name);
    }
  };
  verify("A", run_a);
  verify("B", run_b);

  const int reps = std::max<int64_t>(3, std::min<int64_t>(50, (int64_t{1} << 30) / static_cast<int64_t>(bytes)));
  const int64_t nvec = static_cast<int64_t>(bytes / 16);
  std::vector<double> ta, tb, ts;
  for (int i = 0; i < rounds; ++i) {
    ts.push_back(time_us([&] { read_sum<<<2048, 256>>>(static_cast<const uint4*>(x), nvec, sum); }, reps));
    if (i & 1) {
      ta.push_back(time_us(run_a, reps));
      tb.push_back(time_us(run_b, reps));
    } else {
      tb.push_back(time_us(run_b, reps));
      ta.push_back(time_us(run_a, reps));
    }
  }
  const double ma = median(ta), mb = median(tb), ms = median(ts);
  std::printf("%s (%.0f MB): median A %.1f B %.1f us, B/A %.3f | read %.1f us (%.0f GB/s), A/read %.2f B/read %.2f"
              " | %s\n",
              ab.label().c_str(), bytes / 1e6, ma, mb, mb / ma, ms, bytes / ms / 1e3, ma / ms, mb / ms,
              exact ? "counts exact" : "COUNTS WRONG");
  return exact ? 0 : 1;
}
