// What a NaN guard costs, and why: float32 values > 0 counted from their signs (the row path's count_row_signs:
// three saturating packs and one byte compare per 64 values), with each way of noticing a NaN, against a plain
// 512-bit sum of the same values; one thread, interleaved, best of 300 rounds. Each guard runs twice: as GCC compiles
// it, and with each vector pinned in its register after its load (in_register, csrc/cpu/cpu_simd.h).
//
//   g++ -O3 -march=native benchmarks/ab/guard_cost.cpp -o /tmp/guard_cost && /tmp/guard_cost 16384 1048576
//
// Each argument is a count of float32 values (16384: 64 KiB, in L2; 1048576: 4 MiB, in L3). On the Zen 4 VM
// (session 24) the count without a guard took the sum's time (1.00), every guard as compiled 1.41-1.58x it, and the
// same guards with their vectors pinned 0.98-1.10x. GCC folds the load into each instruction that uses a vector, so
// a vector the guard and the count both use is read twice, and Zen 4 reads one 512-bit vector a cycle.
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

volatile float sink_sum = 0;  // keeps the timed calls from being optimized away
volatile int64_t sink_count = 0;

enum Guard { kNone, kAdd, kFmaZero, kShiftMax, kFpClass, kUnordPairs };
constexpr const char* kNames[] = {"no guard (counts NaN wrong)", "float add (the kernels' guard)",
                                  "fma(x, 0, s)", "max of bits << 1", "fpclass NaN or infinity",
                                  "unordered pairs (NaN only)"};

__attribute__((noinline)) float sum(const float* p, int64_t n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  for (int64_t i = 0; i < n; i += 64) {
    s0 = _mm512_add_ps(s0, _mm512_loadu_ps(p + i));
    s1 = _mm512_add_ps(s1, _mm512_loadu_ps(p + i + 16));
    s2 = _mm512_add_ps(s2, _mm512_loadu_ps(p + i + 32));
    s3 = _mm512_add_ps(s3, _mm512_loadu_ps(p + i + 48));
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

inline __m512 guard_step(Guard g, __m512 s, __m512 x, __m512i& m, __mmask16& k) {
  switch (g) {
    case kAdd:
      return _mm512_add_ps(s, x);
    case kFmaZero:  // x * 0 is 0 for finite x, NaN otherwise
      return _mm512_fmadd_ps(x, _mm512_setzero_ps(), s);
    case kShiftMax:  // bits << 1 >= 0xff000000 exactly for NaN and infinity
      m = _mm512_max_epu32(m, _mm512_slli_epi32(_mm512_castps_si512(x), 1));
      return s;
    case kFpClass:
      k = static_cast<__mmask16>(k | _mm512_fpclass_ps_mask(x, 0x99));
      return s;
    default:
      return s;
  }
}

// Values > 0 of p[0, n) (n a multiple of 64); *flagged: the guard saw a NaN or an infinity.
template <Guard G, bool kOnce>
__attribute__((noinline)) int64_t count_positive(const float* p, int64_t n, bool* flagged) {
  __m512 s[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  __m512i m = _mm512_setzero_si512();
  __mmask16 k = 0;
  int64_t positive = 0;
  for (int64_t i = 0; i < n; i += 64) {
    __m512 x[4];
    for (int v = 0; v < 4; ++v) {
      x[v] = _mm512_loadu_ps(p + i + 16 * v);
      if (kOnce) asm("" : "+v"(x[v]));  // the value is in a register now: every use reads it there
      s[v] = guard_step(G, s[v], x[v], m, k);
    }
    if constexpr (G == kUnordPairs) {  // one compare looks at two vectors: a lane is unordered if either is NaN
      k = static_cast<__mmask16>(k | _mm512_cmp_ps_mask(x[0], x[1], _CMP_UNORD_Q) |
                                 _mm512_cmp_ps_mask(x[2], x[3], _CMP_UNORD_Q));
    }
    const __m512i lo = _mm512_packs_epi32(_mm512_castps_si512(x[0]), _mm512_castps_si512(x[1]));
    const __m512i hi = _mm512_packs_epi32(_mm512_castps_si512(x[2]), _mm512_castps_si512(x[3]));
    positive += __builtin_popcountll(_mm512_cmpgt_epi8_mask(_mm512_packs_epi16(lo, hi), _mm512_setzero_si512()));
  }
  const __m512 t = _mm512_add_ps(_mm512_add_ps(s[0], s[1]), _mm512_add_ps(s[2], s[3]));
  *flagged = _mm512_cmp_ps_mask(_mm512_sub_ps(t, t), _mm512_setzero_ps(), _CMP_NEQ_UQ) != 0 || k != 0 ||
             _mm512_cmpge_epu32_mask(m, _mm512_set1_epi32(static_cast<int>(0xff000000u))) != 0;
  return positive;
}

template <Guard G, bool kOnce>
void time_guard(const std::vector<float>& v) {
  const int64_t n = static_cast<int64_t>(v.size());
  double best_sum = 1e30, best_count = 1e30;
  bool flagged = false;
  for (int r = 0; r < 300; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    sink_sum = sum(v.data(), n);
    const auto t1 = std::chrono::steady_clock::now();
    sink_count = count_positive<G, kOnce>(v.data(), n, &flagged);
    const auto t2 = std::chrono::steady_clock::now();
    best_sum = std::min(best_sum, std::chrono::duration<double, std::micro>(t1 - t0).count());
    best_count = std::min(best_count, std::chrono::duration<double, std::micro>(t2 - t1).count());
  }
  std::printf("%9lld values  %-32s %-17s sum %7.1f us  count %7.1f us  count / sum %.2f%s\n", static_cast<long long>(n),
              kNames[G], kOnce ? "loaded once" : "loads as compiled", best_sum, best_count, best_count / best_sum,
              flagged ? "  (flagged a NaN: wrong)" : "");
}

}  // namespace

int main(int argc, char** argv) {
  for (int a = 1; a < argc; ++a) {
    const int64_t n = std::max<int64_t>(64, std::atoll(argv[a]) / 64 * 64);
    std::vector<float> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = static_cast<float>(i * 7919 % 1000) - 500.0f;
    time_guard<kNone, false>(v);
    time_guard<kAdd, false>(v);
    time_guard<kAdd, true>(v);
    time_guard<kFmaZero, true>(v);
    time_guard<kShiftMax, true>(v);
    time_guard<kFpClass, true>(v);
    time_guard<kUnordPairs, false>(v);
    time_guard<kUnordPairs, true>(v);
  }
}
