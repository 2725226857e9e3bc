// A/B timing of two builds of the CUDA counting kernels in one process, on one GPU (see benchmarks/ab/ab_cuda.sh).
//
// Both builds of csrc/cuda/count_cuda.cu are compiled with their namespace renamed (-Dnepenthe=nepA / nepB) and
// linked here. Each round times a hand-written read of the same bytes (16-byte loads summed as float32: the
// yardstick of x.sum()), then A and B in alternating order; each timing is `reps` back-to-back launches between two
// CUDA events, divided by reps. Before timing, one launch of each build is checked against a count made on the
// host from the same values (so a GPU session also gets an independent check of both builds' counts).
//
// Arguments: N C HW layout dtype K rounds [activation] (ab_case.h says what the first six mean). With an activation
// (relu, relu6, gelu), both builds run their fused kernels, which also write the activation of x into y, and the
// yardstick is a copy of the same bytes (a 16-byte read and a 16-byte write); relu and relu6 outputs must be
// bit-equal between the builds, GELU's are reported (its float rounding may differ with the code around it).
// Prints one line per case; exits 1 if a build's counts differ from the host's or relu/relu6 outputs differ.
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

// v[u] = x[i + u * step] for the four u, zeros past nvec: four 16-byte loads in flight per thread.
__device__ void load4(const uint4* x, int64_t i, int64_t step, int64_t nvec, uint4 (&v)[4]) {
#pragma unroll
  for (int u = 0; u < 4; ++u) v[u] = i + u * step < nvec ? __ldg(x + i + u * step) : make_uint4(0, 0, 0, 0);
}

// A read of the same bytes: 16-byte loads, four in flight per thread, summed as float32, one atomic per warp
// (x.sum()'s yardstick).
__global__ void read_sum(const uint4* x, int64_t nvec, float* out) {
  float s = 0.0f;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < nvec; i += 4 * step) {
    uint4 v[4];
    load4(x, i, step, nvec, v);
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      s += __uint_as_float(v[u].x) + __uint_as_float(v[u].y) + __uint_as_float(v[u].z) + __uint_as_float(v[u].w);
    }
  }
  for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
  if ((threadIdx.x & 31) == 0) atomicAdd(out, s);
}

// A copy of the same bytes, 16-byte loads and stores, four in flight per thread (a fused kernel's yardstick: it
// reads x and writes y once each).
__global__ void copy_vectors(const uint4* x, uint4* y, int64_t nvec) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < nvec; i += 4 * step) {
    uint4 v[4];
    load4(x, i, step, nvec, v);
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      if (i + u * step < nvec) y[i + u * step] = v[u];
    }
  }
}

// The fused activation named on the command line ("" or "none": counting only).
bool parse_activation(const std::string& name, nepenthe::ActivationArgs& act) {
  if (name.empty() || name == "none") {
    act = {nepenthe::kNone, 0.0, 0.0};
  } else if (name == "relu") {
    act = {nepenthe::kRelu, 0.0, 0.0};
  } else if (name == "relu6") {
    act = {nepenthe::kHardtanh, 0.0, 6.0};
  } else if (name == "gelu") {
    act = {nepenthe::kGeluErf, 0.0, 0.0};
  } else {
    return false;
  }
  return true;
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
    std::fprintf(stderr, "usage: %s N C HW nchw|cl dtype(0 f32, 1 f16, 2 bf16) K(1|2) rounds [relu|relu6|gelu]\n",
                 argv[0]);
    return 2;
  }
  const std::string act_name = argc > 8 ? argv[8] : "";
  nepenthe::ActivationArgs act{};
  if (!parse_activation(act_name, act)) {
    std::fprintf(stderr, "unknown activation %s (relu, relu6, gelu or none)\n", act_name.c_str());
    return 2;
  }
  const bool fused = act.kind != nepenthe::kNone;
  const AbCase ab = AbCase::parse(argv);
  const int rounds = std::atoi(argv[7]), dtype = ab.dtype, k = ab.k;
  const int64_t n = ab.elements(), channels = ab.channels;
  const size_t bytes = n * ab.element_bytes();

  void* x = nullptr;
  void* y = nullptr;
  int64_t* counts = nullptr;
  float* sum = nullptr;
  check(cudaMalloc(&x, bytes + 16), "cudaMalloc x");
  check(cudaMalloc(&counts, channels * (k + 1) * sizeof(int64_t)), "cudaMalloc counts");
  check(cudaMalloc(&sum, sizeof(float)), "cudaMalloc sum");
  if (fused) check(cudaMalloc(&y, bytes + 16), "cudaMalloc y");
  fill<<<1024, 256>>>(x, dtype, n);
  check(cudaDeviceSynchronize(), "fill");

  nepenthe::CountRequest r = ab.request(x, counts);
  r.stream = 0;
  if (fused) {
    r.y = y;
    r.activation = act;
  }
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
  std::vector<uint8_t> outputs[2];
  const auto verify = [&](const char* name, auto run, std::vector<uint8_t>& out) {
    std::vector<int64_t> got(want.size());
    check(cudaMemset(counts, 0, got.size() * sizeof(int64_t)), "memset");
    run();
    check(cudaDeviceSynchronize(), name);
    check(cudaMemcpy(got.data(), counts, got.size() * sizeof(int64_t), cudaMemcpyDeviceToHost), "copy counts");
    if (got != want) {
      exact = false;
      std::printf("MISMATCH: build %s's counts differ from the host's\n", name);
    }
    if (fused) {
      out.resize(bytes);
      check(cudaMemcpy(out.data(), y, bytes, cudaMemcpyDeviceToHost), "copy y");
    }
  };
  verify("A", run_a, outputs[0]);
  verify("B", run_b, outputs[1]);
  std::string output_note;
  if (fused) {
    const size_t eb = ab.element_bytes();
    int64_t differ = 0;
    for (int64_t i = 0; i < n; ++i) differ += std::memcmp(&outputs[0][i * eb], &outputs[1][i * eb], eb) != 0;
    output_note = " | " + act_name + " outputs: " + std::to_string(differ) + " differ";
    if (differ != 0 && act.kind != nepenthe::kGeluErf) {
      exact = false;
      std::printf("MISMATCH: the builds' %s outputs differ in %lld elements\n", act_name.c_str(),
                  static_cast<long long>(differ));
    }
  }

  const int reps = std::max<int64_t>(3, std::min<int64_t>(50, (int64_t{1} << 30) / static_cast<int64_t>(bytes)));
  const int64_t nvec = static_cast<int64_t>(bytes / 16);
  std::vector<double> ta, tb, ts;
  for (int i = 0; i < rounds; ++i) {
    if (fused) {
      const auto* from = static_cast<const uint4*>(x);
      auto* to = static_cast<uint4*>(y);
      ts.push_back(time_us([&] { copy_vectors<<<2048, 256>>>(from, to, nvec); }, reps));
    } else {
      ts.push_back(time_us([&] { read_sum<<<2048, 256>>>(static_cast<const uint4*>(x), nvec, sum); }, reps));
    }
    if (i & 1) {
      ta.push_back(time_us(run_a, reps));
      tb.push_back(time_us(run_b, reps));
    } else {
      tb.push_back(time_us(run_b, reps));
      ta.push_back(time_us(run_a, reps));
    }
  }
  const double ma = median(ta), mb = median(tb), ms = median(ts);
  const char* yard = fused ? "copy" : "read";
  std::printf("%s%s%s (%.0f MB): median A %.1f B %.1f us, B/A %.3f | %s %.1f us (%.0f GB/s read), A/%s %.2f B/%s %.2f"
              " | %s%s\n",
              ab.label().c_str(), fused ? " fused " : "", fused ? act_name.c_str() : "", bytes / 1e6, ma, mb, mb / ma,
              yard, ms, bytes / ms / 1e3, yard, ma / ms, yard, mb / ms, exact ? "counts exact" : "WRONG (see MISMATCH)",
              output_note.c_str());
  return exact ? 0 : 1;
}
