// A/B timing of two builds of the CPU counting kernel in one process (see benchmarks/ab/ab.sh).
//
// Both builds of csrc/cpu/count_cpu.cpp are compiled with their namespace renamed (-Dnepenthe=nepA / nepB) and
// linked here; each round times a hand-written OpenMP float sum of the same bytes, then A and B in alternating
// order, so a slow spell of the shared machine hits all three. Prints min and median per build and B/A.
//
// Arguments: N C HW layout dtype K threads rounds (ab_case.h says what the first six mean).
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "ab_case.h"

namespace nepA {
struct CountRequest;
void count_cpu(const CountRequest&);
}  // namespace nepA
namespace nepB {
struct CountRequest;
void count_cpu(const CountRequest&);
}  // namespace nepB

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The bytes of x read as float32 (a stand-in for x.sum(): one read of the same memory).
__attribute__((noinline)) float sum_floats(const float* x, int64_t n, int threads) {
  float total = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t per = (n / nt) & ~int64_t{63};
    const int64_t b = t * per, e = t == nt - 1 ? n : b + per;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = b;
    for (; i + 32 <= e; i += 32) {
      a0 = _mm256_add_ps(a0, _mm256_loadu_ps(x + i));
      a1 = _mm256_add_ps(a1, _mm256_loadu_ps(x + i + 8));
      a2 = _mm256_add_ps(a2, _mm256_loadu_ps(x + i + 16));
      a3 = _mm256_add_ps(a3, _mm256_loadu_ps(x + i + 24));
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    float s = 0;
    for (float v : lanes) s += v;
    for (; i < e; ++i) s += x[i];
    total += s;
  }
  return total;
}

double min_us(std::vector<double> v) { return *std::min_element(v.begin(), v.end()) * 1e6; }

double median_us(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2] * 1e6;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 9) {
    std::fprintf(stderr, "usage: %s N C HW nchw|cl dtype(0 f32, 1 f16, 2 bf16) K(1|2) threads rounds\n", argv[0]);
    return 2;
  }
  const AbCase ab = AbCase::parse(argv);
  const int threads = std::atoi(argv[7]), rounds = std::atoi(argv[8]), dtype = ab.dtype;
  const int64_t n = ab.elements();
  const size_t elem = ab.element_bytes();

  // Activation-like values: Gaussian with 30% exact zeros, no NaN (the kernels' fast paths run).
  std::vector<float> xf(n);
  std::mt19937 gen(1);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  for (auto& v : xf) v = uniform(gen) < 0.3f ? 0.0f : normal(gen);
  std::vector<uint16_t> x16(n);
  for (int64_t i = 0; i < n; ++i) {
    if (dtype == 1) {
      const _Float16 h = static_cast<_Float16>(xf[i]);
      std::memcpy(&x16[i], &h, 2);
    } else {
      uint32_t bits;
      std::memcpy(&bits, &xf[i], 4);
      x16[i] = static_cast<uint16_t>(bits >> 16);
    }
  }

  std::vector<int64_t> counts(ab.channels * (ab.k + 1));
  nepenthe::CountRequest r = ab.request(dtype == 0 ? static_cast<const void*>(xf.data()) : x16.data(), counts.data());
  r.threads = threads;

  std::vector<double> ta, tb, ts;
  auto run_a = [&] {
    const double t0 = now();
    nepA::count_cpu(reinterpret_cast<const nepA::CountRequest&>(r));
    ta.push_back(now() - t0);
  };
  auto run_b = [&] {
    const double t0 = now();
    nepB::count_cpu(reinterpret_cast<const nepB::CountRequest&>(r));
    tb.push_back(now() - t0);
  };
  for (int i = 0; i < rounds; ++i) {
    const double t0 = now();
    volatile float s = sum_floats(static_cast<const float*>(r.x), static_cast<int64_t>(n * elem / 4), threads);
    (void)s;
    ts.push_back(now() - t0);
    if (i & 1) {
      run_a();
      run_b();
    } else {
      run_b();
      run_a();
    }
  }
  std::printf("%s threads%d: min A %.1f B %.1f B/A %.3f | median A %.1f B %.1f B/A %.3f | sum min %.1f us, B/sum "
              "%.2f\n",
              ab.label().c_str(), threads, min_us(ta), min_us(tb), min_us(tb) / min_us(ta), median_us(ta),
              median_us(tb), median_us(tb) / median_us(ta), min_us(ts), min_us(tb) / min_us(ts));
  return 0;
}
