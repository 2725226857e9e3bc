// C++/OpenMP counting and fused-activation kernels for CPU tensors (no libtorch: raw pointers and strides).
//
// Two fast layouts. Rows with inner stride 1 (contiguous NCHW) are counted along the row; channels with stride
// 1 (channels_last, token tensors) are counted across each position's channel vector, one channel per SIMD
// lane. Short contiguous rows (7x7 maps) take a short-row path: on AVX-512 and AVX2, comparison bitmaps with a
// popcount per row. Any other strides take the row path through a gather. Each loaded vector (float16/bfloat16
// widened to float32) is compared with every threshold while it sits in a register, and the comparisons are
// counted in lane counters (count_args.h explains why K + 1 comparison counts give the state counts). Work items
// add their exact counts into per-thread int64 tables, summed per channel at the end, so threads never contend
// and never need atomics (except when the tables would be too large). docs/ARCHITECTURE.md lists which view
// takes which path.
#include "count_cpu.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace nepenthe {
namespace {

constexpr int64_t kChunk = 2048;           // gather/activation buffer length: 8 KiB of float32, stays in L1
constexpr int64_t kItemTarget = 1 << 15;   // elements per work item (row path)
constexpr int64_t kMinRun = 1024;          // row path: elements of one channel per item, to amortize a flush
constexpr int64_t kChanTarget = 1 << 17;   // elements per work item (channel path)
constexpr int64_t kL1Bytes = 16 << 10;     // channel path: bytes of input re-read from L1 by successive tiles
constexpr int64_t kMaxItemChans = 2048;    // channels per item (channel path)
constexpr int64_t kParallelMin = 1 << 16;  // below this many elements, threads cost more than they save
constexpr int64_t kSmallInner = 256;       // short-row path: rows (H*W) up to this length
constexpr int64_t kTableBytes = 16 << 10;  // short-row path: per-channel lane-counter table, stays in L1
constexpr int64_t kSmallItem = 1 << 17;    // short-row path: elements per work item
constexpr int64_t kMinPositions = 1024;    // channel path: positions per item, to amortize the per-channel flush

struct BF16 {
  uint16_t bits;
};

// IEEE half precision: GCC's _Float16 on x86 (C++ since GCC 12), __fp16 on Arm (storage only: arithmetic and
// conversions go through float, rounding to nearest even).
#if defined(__aarch64__) || defined(__arm__)
using Half = __fp16;
#else
using Half = _Float16;
#endif

// Prefetch the cache line at p into L1 (prefetcht0 on x86; whatever the target has elsewhere).
inline void prefetch_line(const void* p) { __builtin_prefetch(p, 0, 3); }

// Storage type S -> compute type T, and back for the fused output (round to nearest even, as torch does).
template <class S>
struct Traits;

template <>
struct Traits<float> {
  using T = float;
  static T load(float v) { return v; }
  static float store(float v) { return v; }
};

template <>
struct Traits<double> {
  using T = double;
  static T load(double v) { return v; }
  static double store(double v) { return v; }
};

template <>
struct Traits<Half> {
  using T = float;
  static T load(Half v) { return static_cast<float>(v); }
  static Half store(float v) { return static_cast<Half>(v); }
};

template <>
struct Traits<BF16> {
  using T = float;
  static T load(BF16 v) {
    uint32_t bits = static_cast<uint32_t>(v.bits) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  }
  static BF16 store(float f) {
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return BF16{static_cast<uint16_t>((bits >> 16) | 0x40u)};
    return BF16{static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16)};
  }
};

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
inline float exp_approx(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
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
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

inline float gelu_erf_gate(float x) {  // (1 + erf(x / sqrt 2)) / 2
  const float z = std::fabs(x) * 0.70710678118654752440f;
  const float t = 1.0f / (1.0f + 0.3275911f * z);
  float q = 1.061405429f;
  q = q * t - 1.453152027f;
  q = q * t + 1.421413741f;
  q = q * t - 0.284496736f;
  q = q * t + 0.254829592f;
  const float half_erfc = 0.5f * q * t * exp_approx(-z * z);
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
  if constexpr (std::is_same_v<S, Half>) {  // n <= kChunk: compute in float32, then convert in bulk
    T out[kChunk];
    apply_activation_strided<true>(act, v, n, out, int64_t{1});
    store_half(out, n, y, ys);
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

// One vector of compute-type values from kWidth consecutive stored values.
template <class S, class T = typename Traits<S>::T>
inline typename Simd<T>::V load_vec(const S* p) {
  using V = typename Simd<T>::V;
  V v;
  if constexpr (std::is_same_v<S, T>) {
    std::memcpy(&v, p, sizeof v);
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
  typename Simd<T>::V v;
  for (int l = 0; l < Simd<T>::kWidth; ++l) v[l] = std::numeric_limits<T>::quiet_NaN();
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

// Tensors this large are read from memory rather than the caches (a 32 MiB L3): the row, tile and byte-lane loops
// then prefetch about 4 KiB ahead (from memory 6-20% faster; from the caches up to 5% slower). With prefetching,
// float32 counts through 512-bit compares everywhere: from memory as fast as the 256-bit compares into vector
// registers that used to read memory-resident tensors (those measured 1.4x faster than 512-bit compares without
// prefetching, in session 2), and 1.8x faster on an L2-resident stream (19-38% on a 19 MB map).
constexpr int64_t kMemoryBytes = 24 << 20;

// Element offset of the row (of `stride` elements of `bytes` each) about 4 KiB ahead, for prefetching; 0 for a
// stride of 0 (every position reads the same row: an expanded tensor, or a single position).
inline int64_t rows_ahead(int64_t stride, int64_t bytes) {
  return stride > 0 ? stride * std::max<int64_t>(1, 4096 / (bytes * stride)) : 0;
}

// Comparison counts [valid, gt_0..gt_{K-1}, tie_0..tie_{K-1}] kept in vector registers; every comparison of a
// loaded vector is made while it sits in a register. Lane counters are int32 for float: flush before 2^31
// values per lane. kFromMemory: the job's tensor is read from memory (kMemoryBytes), so rows prefetch.
template <class T, int K, bool kTies, bool kFromMemory = false>
struct Counter {
  using V = typename Simd<T>::V;
  using I = typename Simd<T>::I;
  static constexpr int W = Simd<T>::kWidth;
  static constexpr int kAcc = 1 + K * (kTies ? 2 : 1);
  // The row and tile loops prefetch. AVX2 builds too: from memory, channels_last float16 with 96 channels
  // measured 20% faster, 384 bfloat16 channels 28%, NCHW float32 11%.
  static constexpr bool kPrefetch = kFromMemory && kVecBytes >= 32;
  V g[K], t[K];
  I acc[kAcc];

  Counter() = default;
  explicit Counter(const Thresholds<T>& thr) {
    for (int k = 0; k < K; ++k) {
      g[k] = thr.greater[k] - V{};
      t[k] = thr.tie[k] - V{};
    }
    clear();
  }
  void clear() {
    for (int j = 0; j < kAcc; ++j) acc[j] = I{};
  }
  inline void add(V x, I keep) {
    acc[0] -= (x == x) & keep;
    for (int k = 0; k < K; ++k) acc[1 + k] -= (x > g[k]) & keep;
    if constexpr (kTies) {
      for (int k = 0; k < K; ++k) acc[1 + K + k] -= (x == t[k]) & keep;
    }
  }
  inline void add(V x) { add(x, I{} - 1); }

  // The W stored values at p.
  template <class S>
  inline void add_at(const S* p) {
    add(load_vec<S>(p));
  }

  // Lane counts of comparison j.
  inline I total(int j) const { return acc[j]; }

  // n contiguous stored values; a tail shorter than a vector is read as an overlapping, masked vector.
  template <class S>
  inline void add_row(const S* p, int64_t n) {
    int64_t i = 0;
    if constexpr (kPrefetch && !std::is_same_v<S, double>) {  // about 4 KiB ahead
      for (; i + W <= n; i += W) {
        prefetch_line(reinterpret_cast<const char*>(p + i + 4096 / sizeof(S)));
        add_at(p + i);
      }
    }
    for (; i + W <= n; i += W) add_at(p + i);
    if (i == n) return;
    if (n >= W) {
      add(load_vec<S>(p + n - W), lane_index<I>() >= static_cast<decltype(acc[0][0] + 0)>(i - (n - W)));
    } else {
      add(load_partial<S>(p, n));
    }
  }

  // Adds the comparison counts of all lanes to sums[0..kAcc) (a thread's table, no atomics) and clears.
  void flush_into(int64_t* sums) {
    for (int j = 0; j < kAcc; ++j) sums[j] += lane_sum(total(j));
    clear();
  }

  // Adds the per-state counts of all lanes together to counts[0..K] (atomically) and clears.
  void flush_total(int64_t* counts, bool ignore_ties) {
    int64_t sums[kAcc];
    for (int j = 0; j < kAcc; ++j) sums[j] = lane_sum(total(j));
    add_states(counts, sums, ignore_ties);
    clear();
  }
  static void add_states(int64_t* counts, const int64_t* sums, bool ignore_ties) {
    for (int s = 0; s <= K; ++s) {
      const int64_t n = state_count(sums, K, ignore_ties, s);
      if (n != 0) __atomic_fetch_add(counts + s, n, __ATOMIC_RELAXED);
    }
  }
};

// Per-thread int64 comparison counts of every channel: work items add into their thread's table without atomics,
// and write_states (called by every thread of the region) turns each channel's sum over threads into states,
// each channel by one thread. Used when the tables stay small (kMaxTableEntries); otherwise items add their
// states with atomics.
constexpr int64_t kMaxTableEntries = 1 << 22;

template <int K, bool kTies>
struct ThreadTables {
  static constexpr int kAcc = 1 + K * (kTies ? 2 : 1);  // comparisons: valid, gt_0.., tie_0..
  int64_t channels;
  int threads;
  bool by_comparison;  // entry (c, j) of a table at j * channels + c (else c * kAcc + j)
  std::vector<int64_t> data;
  ThreadTables(int64_t c, int t, bool by_comparison = false)
      : channels(c), threads(t), by_comparison(by_comparison), data(static_cast<size_t>(c * kAcc * t)) {}
  static bool fits(int64_t c, int t) { return c * kAcc * t <= kMaxTableEntries; }
  int64_t* mine() { return data.data() + omp_get_thread_num() * channels * kAcc; }
  // values_per_channel >= 0: comparison 0 of the tables counts NaN, and valid = values_per_channel - NaN.
  // Channels go in blocks of kBlock; in either layout a block's entries are one contiguous run per table (per
  // comparison and table when by_comparison), summed over the threads with unit-stride vector adds.
  void write_states(int64_t* counts, int64_t values_per_channel = -1) {
    constexpr int64_t kBlock = 64;
    const int64_t table_size = channels * kAcc;
#pragma omp for schedule(static)
    for (int64_t c0 = 0; c0 < channels; c0 += kBlock) {
      const int64_t n = std::min(kBlock, channels - c0);
      int64_t sums[kAcc][kBlock];  // comparison j of channel c0 + i
      if (by_comparison) {
        for (int j = 0; j < kAcc; ++j) {
          const int64_t* in = data.data() + j * channels + c0;
          for (int64_t i = 0; i < n; ++i) sums[j][i] = in[i];
          for (int t = 1; t < threads; ++t) {
            for (int64_t i = 0; i < n; ++i) sums[j][i] += in[t * table_size + i];
          }
        }
      } else {
        int64_t flat[kAcc * kBlock];
        const int64_t* in = data.data() + c0 * kAcc;
        for (int64_t e = 0; e < n * kAcc; ++e) flat[e] = in[e];
        for (int t = 1; t < threads; ++t) {
          for (int64_t e = 0; e < n * kAcc; ++e) flat[e] += in[t * table_size + e];
        }
        for (int64_t i = 0; i < n; ++i) {
          for (int j = 0; j < kAcc; ++j) sums[j][i] = flat[i * kAcc + j];
        }
      }
      if (values_per_channel >= 0) {
        for (int64_t i = 0; i < n; ++i) sums[0][i] = values_per_channel - sums[0][i];
      }
      for (int64_t i = 0; i < n; ++i) {
        int64_t* out = counts + (c0 + i) * (K + 1);
        for (int s = 0; s <= K; ++s) {
          const int64_t upper = s < K ? sums[s + 1][i] : 0;
          const int64_t ties = kTies && s < K ? sums[1 + K + s][i] : 0;
          out[s] += sums[s][i] - upper - ties;
        }
      }
    }
  }
};

// Values x[0], x[s], ..., x[(n-1)s] in compute precision, in buf.
template <class S, class T = typename Traits<S>::T>
inline void load_values(const S* x, int64_t s, int64_t n, T* buf) {
  if (s == 1) {
    int64_t i = 0;
    for (; i + Simd<T>::kWidth <= n; i += Simd<T>::kWidth) {  // load_vec: float16 widens without scalar code
      const typename Simd<T>::V v = load_vec<S>(x + i);
      std::memcpy(buf + i, &v, sizeof v);
    }
    for (; i < n; ++i) buf[i] = Traits<S>::load(x[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) buf[i] = Traits<S>::load(x[i * s]);
  }
}

template <class S>
struct Job {
  using T = typename Traits<S>::T;
  const S* x;
  View v;
  Thresholds<T> th;
  int64_t* counts;
  S* y;  // fused output, or nullptr
  View yv;
  Act<T> act;
  int threads;
  bool by_channel;  // channel stride 1 and inner stride not 1: count across each position's channels
};

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
  if (act.kind != kRelu && act.kind != kHardtanh && act.kind != kLeakyRelu) return 0;
  const V zero = V{}, lo = act.lo - V{}, hi = act.hi - V{}, slope = act.slope - V{};
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const V v = load_vec<S>(x + i);
    V r;
    if (act.kind == kRelu) {
      r = v < zero ? zero : v;
    } else if (act.kind == kHardtanh) {
      r = v < lo ? lo : (v > hi ? hi : v);
    } else {
      r = v > zero ? v : v * slope;
    }
    store_vec(r, y + i);
  }
  return i;
}

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

#if defined(__AVX512F__)
// False if any lane of a float sum is NaN or infinite: the NaN guards' test (a NaN among the summed values, or an
// infinity, or an overflow; the last two only send a block down the exact path for nothing).
inline bool all_finite(__m512 s) {
  return _mm512_cmp_ps_mask(_mm512_sub_ps(s, s), _mm512_setzero_ps(), _CMP_NEQ_UQ) == 0;
}
#endif

#if defined(__AVX512BW__)
// Bit b set where byte b of four float32 vectors packed twice with signed saturation is > 0: the values > 0 (and
// NaN with a clear sign bit). Packing works within 128-bit lanes, so bit 16i + 4v + e is value 16v + 4i + e.
inline __mmask64 positive_bytes(__m512 x0, __m512 x1, __m512 x2, __m512 x3) {
  const __m512i lo = _mm512_packs_epi32(_mm512_castps_si512(x0), _mm512_castps_si512(x1));
  const __m512i hi = _mm512_packs_epi32(_mm512_castps_si512(x2), _mm512_castps_si512(x3));
  return _mm512_cmpgt_epi8_mask(_mm512_packs_epi16(lo, hi), _mm512_setzero_si512());
}

#define NEP_SIGN_ROWS 1
// Row path, float32 with the single threshold 0.0 (ReLU), no ties: a row's values > 0 are counted from the signs
// of their bits, as in byte_sweep's kSign: 64 values packed to 64 signed bytes, compared with 0 into one 64-bit
// mask, popcounted. Valid values are the row's length unless a float sum of its values (four chains) is NaN or
// infinite: then nothing is added and the row returns false, to be counted the exact way. The tail is read with
// masked loads that fill zeros, which are not > 0 and add nothing to the sums. kPrefetch is ignored here.
template <bool kPrefetch>
inline bool count_row_signs(const float* p, int64_t n, int64_t& valid, int64_t& positive) {
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t pos = 0;
  auto add64 = [&](__m512 x0, __m512 x1, __m512 x2, __m512 x3) {
    s0 = _mm512_add_ps(s0, x0);
    s1 = _mm512_add_ps(s1, x1);
    s2 = _mm512_add_ps(s2, x2);
    s3 = _mm512_add_ps(s3, x3);
    pos += __builtin_popcountll(positive_bytes(x0, x1, x2, x3));
  };
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    add64(_mm512_loadu_ps(p + i), _mm512_loadu_ps(p + i + 16), _mm512_loadu_ps(p + i + 32),
          _mm512_loadu_ps(p + i + 48));
  }
  if (i < n) {
    const uint64_t m = (n - i == 64) ? ~uint64_t{0} : (uint64_t{1} << (n - i)) - 1;
    add64(_mm512_maskz_loadu_ps(static_cast<__mmask16>(m), p + i),
          _mm512_maskz_loadu_ps(static_cast<__mmask16>(m >> 16), p + i + 16),
          _mm512_maskz_loadu_ps(static_cast<__mmask16>(m >> 32), p + i + 32),
          _mm512_maskz_loadu_ps(static_cast<__mmask16>(m >> 48), p + i + 48));
  }
  if (!all_finite(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)))) return false;
  valid += n;
  positive += pos;
  return true;
}
#endif

#if defined(__AVX2__) && !defined(__AVX512F__)
#define NEP_SIGN_ROWS 1
// count_row_signs for AVX2 (see the AVX-512 version above): 32 values packed twice with signed saturation to 32
// signed bytes, compared with 0 into one 32-bit mask, popcounted (the packing's lane order does not matter to a
// count). Per 32 values 15 instructions instead of 20 comparisons and subtractions: ResNet-18 layer1 NCHW float32
// measured 1.15x faster, with kPrefetch (about 4 KiB ahead; 51 MB maps 4% faster, 8% slower without).
template <bool kPrefetch>
inline bool count_row_signs(const float* p, int64_t n, int64_t& valid, int64_t& positive) {
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  const __m256i zero = _mm256_setzero_si256();
  int64_t pos = 0;
  auto add32 = [&](__m256 x0, __m256 x1, __m256 x2, __m256 x3) {
    s0 = _mm256_add_ps(s0, x0);
    s1 = _mm256_add_ps(s1, x1);
    s2 = _mm256_add_ps(s2, x2);
    s3 = _mm256_add_ps(s3, x3);
    const __m256i w01 = _mm256_packs_epi32(_mm256_castps_si256(x0), _mm256_castps_si256(x1));
    const __m256i w23 = _mm256_packs_epi32(_mm256_castps_si256(x2), _mm256_castps_si256(x3));
    const __m256i b = _mm256_packs_epi16(w01, w23);
    pos += __builtin_popcount(static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpgt_epi8(b, zero))));
  };
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    if constexpr (kPrefetch) {
      prefetch_line(reinterpret_cast<const char*>(p + i + 1024));
      prefetch_line(reinterpret_cast<const char*>(p + i + 1040));
    }
    add32(_mm256_loadu_ps(p + i), _mm256_loadu_ps(p + i + 8), _mm256_loadu_ps(p + i + 16),
          _mm256_loadu_ps(p + i + 24));
  }
  if (i < n) {  // masked loads fill zeros, which are not > 0 and add nothing to the sums
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256 x[4];
    for (int v = 0; v < 4; ++v) {
      const __m256i left = _mm256_set1_epi32(static_cast<int>(std::clamp<int64_t>(n - i - 8 * v, 0, 8)));
      x[v] = _mm256_maskload_ps(p + i + 8 * v, _mm256_cmpgt_epi32(left, lane));
    }
    add32(x[0], x[1], x[2], x[3]);
  }
  const __m256 s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
  if (_mm256_movemask_ps(_mm256_cmp_ps(_mm256_sub_ps(s, s), _mm256_setzero_ps(), _CMP_NEQ_UQ)) != 0) return false;
  valid += n;
  positive += pos;
  return true;
}
#endif

// 16-bit values compared in their own bits (word lanes), with no widening to float32. A 16-bit float's bits order
// like its value once read as a key: the sign-magnitude bits with the magnitude flipped for negative values (key),
// or, when every threshold is >= +0, simply as a signed integer (a negative value's sign bit makes it smaller than
// any non-negative threshold). A threshold is replaced by the largest 16-bit value at or below it (-0 read as +0),
// so for a 16-bit value v, v > t exactly when key(v) > key(t16). NaN's bits lie beyond infinity's: a positive NaN
// would count above every threshold, so a run whose largest magnitude bits exceed infinity's is counted again
// exactly (float32 comparisons).
struct WordThresholds {
  uint16_t bits[kMaxThresholds];  // key of the largest 16-bit value <= greater[k]
  uint16_t inf;                   // magnitude bits of +infinity
  bool key;                       // some threshold is below -0: compare keys, not raw bits
  template <class S>
  WordThresholds(const Thresholds<float>& th, S) : inf(std::is_same_v<S, BF16> ? 0x7f80 : 0x7c00), key(false) {
    for (int k = 0; k < th.k; ++k) {
      uint16_t b = at_or_below<S>(th.greater[k]);
      if (b == 0x8000) b = 0;  // -0: v > -0 exactly when v > +0
      key = key || (b & 0x8000) != 0;
      bits[k] = b;
    }
    if (key) {
      for (int k = 0; k < th.k; ++k) bits[k] = key_of(bits[k]);
    }
  }
  static uint16_t key_of(uint16_t b) { return (b & 0x8000) ? b ^ 0x7fff : b; }
  static float value(uint16_t b, BF16) {
    const uint32_t w = static_cast<uint32_t>(b) << 16;
    float f;
    std::memcpy(&f, &w, sizeof f);
    return f;
  }
  static float value(uint16_t b, Half) {
    Half h;
    std::memcpy(&h, &b, sizeof h);
    return static_cast<float>(h);
  }
  // The largest 16-bit S value <= t (t is not NaN): a nearby value (truncated or rounded), stepped down once if
  // it lies above t.
  template <class S>
  static uint16_t at_or_below(float t) {
    uint16_t b;
    if constexpr (std::is_same_v<S, BF16>) {
      uint32_t w;
      std::memcpy(&w, &t, sizeof w);
      b = static_cast<uint16_t>(w >> 16);  // toward zero
    } else {
      const Half h = static_cast<Half>(t);  // nearest; beyond the largest finite value, infinity
      std::memcpy(&b, &h, sizeof b);
    }
    if (value(b, S{}) > t) b = (b & 0x7fff) == 0 ? 0x8001 : (b & 0x8000) ? b + 1 : b - 1;
    return b;
  }
};

// relu and hardtanh of n contiguous float16/bfloat16 values compared in their own 16 bits, as keys
// (WordThresholds), with no widening to float32 and no rounding back: a value below the lower bound becomes the
// bound (rounded to nearest, as torch rounds it), one above the upper bound that bound, and NaN and -0.0 stay
// (bit-exact with torch's CPU kernels). x < lo exactly when key(x) <= key of the largest 16-bit value below lo;
// x > hi exactly when key(x) > key of the largest at or below hi; NaN is neither. Whole vectors only; returns how
// many values it wrote.
template <class S>
int64_t activate_words(const Act<float>& act, const S* x, int64_t n, S* y) {
  typedef int16_t I16 __attribute__((vector_size(kVecBytes)));
  constexpr int L = kVecBytes / 2;
  const float lo = act.kind == kRelu ? 0.0f : act.lo, hi = act.kind == kRelu ? INFINITY : act.hi;
  uint16_t below = WordThresholds::at_or_below<S>(lo);
  if (WordThresholds::value(below, S{}) == lo) {  // the largest value strictly below lo (-0.0 equals +0.0)
    below = (below & 0x7fff) == 0 ? 0x8001 : (below & 0x8000) ? below + 1 : below - 1;
  }
  const auto as_bits = [](float v) {
    const S s = Traits<S>::store(v);  // rounded to nearest even, as the float path stores it
    uint16_t b;
    std::memcpy(&b, &s, sizeof b);
    return static_cast<int16_t>(b);
  };
  const int16_t inf = std::is_same_v<S, BF16> ? 0x7f80 : 0x7c00;
  const int16_t lo_key = static_cast<int16_t>(WordThresholds::key_of(below));
  const int16_t hi_key = static_cast<int16_t>(WordThresholds::key_of(WordThresholds::at_or_below<S>(hi)));
  const I16 lo_bits = as_bits(lo) - I16{}, hi_bits = as_bits(hi) - I16{};
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    I16 b;
    std::memcpy(&b, x + i, sizeof b);
    const I16 key = b ^ ((b >> 15) & 0x7fff);
    const I16 number = (b & 0x7fff) <= inf;
    const I16 out = (number & (key <= lo_key)) ? lo_bits : ((number & (key > hi_key)) ? hi_bits : b);
    std::memcpy(y + i, &out, sizeof out);
  }
  return i;
}

// The word-lane thresholds of a job, where kOn (16-bit storage takes the word path); else a placeholder.
template <bool kOn, class S, class T>
auto word_thresholds_if(const Thresholds<T>& th) {
  if constexpr (kOn) {
    return WordThresholds(th, S{});
  } else {
    return char{};
  }
}

#if defined(__AVX512BW__) || (defined(__AVX2__) && !defined(__AVX512F__))
#define NEP_WORD_LANES 1
// Word-lane channel counters (channel path, float16/bfloat16 storage, AVX-512BW or AVX2, no ties, K <= 2):
// WordOps::kLanes channels per vector compared in their own 16 bits, with no widening to float32 (WordThresholds
// explains the comparison). Counters are uint16 lanes in registers over chunks of at most 65535 positions; valid
// counts are the chunk's positions.
#if defined(__AVX512BW__)
struct WordOps {
  using V = __m512i;
  static constexpr int kLanes = 32;
  static constexpr int kTileCounters = 8;  // G x K counters per tile held in registers (12 / K spilled)
  static V splat(uint16_t b) { return _mm512_set1_epi16(static_cast<short>(b)); }
  static V zero() { return _mm512_setzero_si512(); }
  static V load(const uint16_t* p) { return _mm512_loadu_si512(p); }
  static void store(uint8_t* p, V v) { _mm512_storeu_si512(p, v); }
  static V max(V a, V b) { return _mm512_max_epu16(a, b); }
  static V magnitude(V x) { return _mm512_and_si512(x, _mm512_set1_epi16(0x7fff)); }
  // the magnitude bits of negative values flipped (their sign spread by an arithmetic shift)
  static V key(V x) { return _mm512_xor_si512(x, magnitude(_mm512_srai_epi16(x, 15))); }
  static V count_above(V c, V x, V t) {  // c + 1 in the lanes where x > t (signed)
    return _mm512_mask_sub_epi16(c, _mm512_cmpgt_epi16_mask(x, t), c, _mm512_set1_epi16(-1));
  }
  static bool any_above(V top, V inf) { return _mm512_cmpgt_epu16_mask(top, inf) != 0; }
  // the two halves of uint16 lanes widened to int32 lanes (float vectors' slots)
  static __m512i low(V c) { return _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(c, 0)); }
  static __m512i high(V c) { return _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(c, 1)); }
};
#else
struct WordOps {
  using V = __m256i;
  static constexpr int kLanes = 16;
  static constexpr int kTileCounters = 12;  // 16 registers: MobileNet-V2's 96 channels with two thresholds, spilled
  static V splat(uint16_t b) { return _mm256_set1_epi16(static_cast<short>(b)); }
  static V zero() { return _mm256_setzero_si256(); }
  static V load(const uint16_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static void store(uint8_t* p, V v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
  static V max(V a, V b) { return _mm256_max_epu16(a, b); }
  static V magnitude(V x) { return _mm256_and_si256(x, _mm256_set1_epi16(0x7fff)); }
  static V key(V x) { return _mm256_xor_si256(x, magnitude(_mm256_srai_epi16(x, 15))); }
  static V count_above(V c, V x, V t) { return _mm256_sub_epi16(c, _mm256_cmpgt_epi16(x, t)); }
  static bool any_above(V top, V inf) {  // magnitudes are <= 0x7fff: a signed compare is exact
    return _mm256_movemask_epi8(_mm256_cmpgt_epi16(top, inf)) != 0;
  }
  static __m256i low(V c) { return _mm256_cvtepu16_epi32(_mm256_castsi256_si128(c)); }
  static __m256i high(V c) { return _mm256_cvtepu16_epi32(_mm256_extracti128_si256(c, 1)); }
};
#endif
using WordVec = WordOps::V;
constexpr int kWordLanes = WordOps::kLanes;

#endif

// Row path, float16/bfloat16 with one or two thresholds, no ties: a row's values compared as words
// (WordThresholds), kVecBytes / 2 per vector in uint16 lane counters, two vectors a step. Per 16 values that is a
// load, a compare per threshold, a subtraction per threshold and the NaN test's and + max, instead of two
// widenings and twice the float comparisons (AVX2: ResNet-18 layer1 NCHW float16 measured 2x faster). Valid
// values are the row's length unless its largest magnitude bits exceed infinity's (NaN): then nothing is added and
// the row returns false, to be counted the exact way. Rows shorter than a vector return false too.
typedef int16_t I16xV __attribute__((vector_size(kVecBytes)));
typedef uint16_t U16xV __attribute__((vector_size(kVecBytes)));

template <int K, bool kKey, bool kPrefetch>
bool count_row_words(const uint16_t* p, int64_t n, const WordThresholds& wt, int64_t* sums) {
  constexpr int L = kVecBytes / 2;
  if (n < L) return false;
  I16xV t[K];
  for (int k = 0; k < K; ++k) t[k] = I16xV{} + static_cast<int16_t>(wt.bits[k]);
  const I16xV magnitude = I16xV{} + 0x7fff;
  I16xV c[2][K] = {};
  U16xV top[2] = {};
  int64_t above[K] = {};
  auto add = [&](int h, I16xV x, I16xV keep) {
    const U16xV m = (U16xV)(x & magnitude);
    top[h] = top[h] > m ? top[h] : m;
    const I16xV kx = kKey ? x ^ ((x >> 15) & magnitude) : x;
    for (int k = 0; k < K; ++k) c[h][k] -= (kx > t[k]) & keep;
  };
  auto flush = [&] {
    for (int h = 0; h < 2; ++h) {
      for (int k = 0; k < K; ++k) {
        const U16xV u = (U16xV)c[h][k];
        for (int l = 0; l < L; ++l) above[k] += u[l];
        c[h][k] = I16xV{};
      }
    }
  };
  const I16xV all = I16xV{} - 1;
  int64_t i = 0;
  while (i + 2 * L <= n) {
    const int64_t end = std::min(n, i + int64_t{65535} * L);  // 2 x 65535 vectors: a uint16 lane never wraps
    for (; i + 2 * L <= end; i += 2 * L) {
      if constexpr (kPrefetch) {  // about 4 KiB ahead, each cache line of the step
        for (int b = 0; b < 2 * kVecBytes; b += 64) {
          prefetch_line(reinterpret_cast<const char*>(p + i) + 4096 + b);
        }
      }
      I16xV x0, x1;
      std::memcpy(&x0, p + i, sizeof x0);
      std::memcpy(&x1, p + i + L, sizeof x1);
      add(0, x0, all);
      add(1, x1, all);
    }
    flush();
  }
  if (i + L <= n) {
    I16xV x;
    std::memcpy(&x, p + i, sizeof x);
    add(0, x, all);
    i += L;
  }
  if (i < n) {  // the tail: an overlapping vector, the values already counted masked off
    I16xV x;
    std::memcpy(&x, p + n - L, sizeof x);
    add(1, x, lane_index<I16xV>() >= static_cast<int16_t>(i - (n - L)));
  }
  flush();
  const U16xV m = top[0] > top[1] ? top[0] : top[1];
  for (int l = 0; l < L; ++l) {
    if (m[l] > wt.inf) return false;
  }
  sums[0] += n;
  for (int k = 0; k < K; ++k) sums[1 + k] += above[k];
  return true;
}

// Row path: inner stride 1 (contiguous NCHW), or any strides through a gather. An item counts a block of
// channels over a block of rows, channel by channel, so a channel's vector counters live across its rows.
template <class S, int K, bool kTies, bool kFromMemory>
void run_rows(const Job<S>& job) {
  using T = typename Traits<S>::T;
  const View& v = job.v;
  const int64_t rows = clamp64(kMinRun / std::max<int64_t>(1, std::min(v.inner, kItemTarget)), 1, v.outer);
  RowPlan p{};
  p.inner = clamp64(v.inner, 1, kItemTarget);
  p.rows = p.inner == v.inner ? rows : 1;
  p.chans = clamp64(kItemTarget / (p.rows * p.inner), 1, v.channels);
  p.row_blocks = ceil_div(v.outer, p.rows);
  p.chan_blocks = ceil_div(v.channels, p.chans);
  p.inner_blocks = ceil_div(v.inner, p.inner);
  const int64_t items = p.items();
  const bool parallel = job.threads > 1 && items > 1 && v.outer * v.channels * v.inner >= kParallelMin;
  // Whole rows of consecutive channels that lie back to back in x and in y (contiguous NCHW): the fused output
  // of an item's rows is then written as one run per outer index instead of one short run per row.
  const bool slabs = job.y != nullptr && p.inner == v.inner && v.s_inner == 1 && v.s_channel == v.inner &&
                     job.yv.s_inner == 1 && job.yv.s_channel == v.inner;
  using Ctr = Counter<T, K, kTies, kFromMemory>;
  const int threads = parallel ? job.threads : 1;
  using Tables = ThreadTables<K, kTies>;
  static_assert(Tables::kAcc == Ctr::kAcc, "tables hold the counter's comparisons");
  const bool use_tables = Tables::fits(v.channels, threads);
  Tables tables(use_tables ? v.channels : 0, threads);
#if defined(NEP_SIGN_ROWS)
  constexpr bool kSigns = std::is_same_v<S, float> && K == 1 && !kTies;
  const bool signs = kSigns && v.s_inner == 1 && job.th.greater[0] == 0;
#else
  constexpr bool kSigns = false;
  const bool signs = false;
#endif
  // AVX-512 builds count memory-resident rows the float way: word rows measured 1.2x slower there (1.4x with
  // prefetching), though 1.6x faster from L3.
  constexpr bool kWordRows = sizeof(S) == 2 && K <= 2 && !kTies && (kVecBytes == 32 || !kFromMemory);
  const bool word_rows = kWordRows && v.s_inner == 1;
  const auto word_th = word_thresholds_if<kWordRows, S>(job.th);
  constexpr bool kQuick = kSigns || kWordRows;  // some rows may be counted by count_row_signs or count_row_words
#pragma omp parallel num_threads(threads) if (parallel)
  {
    std::vector<T> buf(kChunk);
    Ctr counter(job.th);
    int64_t* table = use_tables ? tables.mine() : nullptr;
    int64_t quick_counts[Ctr::kAcc] = {};  // comparison counts of the rows count_row_signs or _words took
#pragma omp for schedule(static)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t ib = item % p.inner_blocks;
      const int64_t cb = (item / p.inner_blocks) % p.chan_blocks;
      const int64_t rb = item / (p.inner_blocks * p.chan_blocks);
      const int64_t o0 = rb * p.rows, o1 = std::min(v.outer, o0 + p.rows);
      const int64_t c0 = cb * p.chans, c1 = std::min(v.channels, c0 + p.chans);
      const int64_t i0 = ib * p.inner, i1 = std::min(v.inner, i0 + p.inner);
      for (int64_t c = c0; c < c1; ++c) {
        for (int64_t o = o0; o < o1; ++o) {
          const S* row = job.x + o * v.s_outer + c * v.s_channel + i0 * v.s_inner;
          // counted by count_row_signs (a NaN-free float32 row against threshold 0.0) or count_row_words
          bool quick = false;
#if defined(NEP_SIGN_ROWS)
          if constexpr (kSigns) {
            quick = signs && count_row_signs<Ctr::kPrefetch>(row, i1 - i0, quick_counts[0], quick_counts[1]);
          }
#endif
          if constexpr (kWordRows) {
            if (word_rows) {
              const auto* bits = reinterpret_cast<const uint16_t*>(row);
              quick = word_th.key ? count_row_words<K, true, Ctr::kPrefetch>(bits, i1 - i0, word_th, quick_counts)
                                  : count_row_words<K, false, Ctr::kPrefetch>(bits, i1 - i0, word_th, quick_counts);
            }
          }
          if (quick) {
            // nothing more to count; the fused output below is still written
          } else if (v.s_inner == 1) {
            counter.add_row(row, i1 - i0);
          } else {
            for (int64_t i = 0; i < i1 - i0; i += kChunk) {
              const int64_t n = std::min(kChunk, i1 - i0 - i);
              load_values(row + i * v.s_inner, v.s_inner, n, buf.data());
              counter.add_row(buf.data(), n);
            }
          }
          if (job.y != nullptr && !slabs) write_activation(job, o, c, i0, i1 - i0, false, buf.data());
        }
        if (table != nullptr) {
          counter.flush_into(table + c * Ctr::kAcc);
        } else {
          counter.flush_total(job.counts + c * (K + 1), job.th.ignore_ties);
        }
        if (kQuick && (signs || word_rows)) {
          if (table != nullptr) {
            for (int j = 0; j < Ctr::kAcc; ++j) table[c * Ctr::kAcc + j] += quick_counts[j];
          } else {
            Ctr::add_states(job.counts + c * (K + 1), quick_counts, job.th.ignore_ties);
          }
          std::fill(quick_counts, quick_counts + Ctr::kAcc, int64_t{0});
        }
      }
      if (job.y != nullptr && slabs) {
        for (int64_t o = o0; o < o1; ++o) write_activation(job, o, c0, 0, (c1 - c0) * v.inner, false, buf.data());
      }
    }
    if (use_tables) tables.write_states(job.counts);
  }
}

// Counts n back-to-back rows of `inner` >= W values each (the channels of one outer index in contiguous NCHW)
// as one run of full vectors: a vector inside a row adds to the register counters; one that straddles two rows
// is added twice, masked to each side, and the finished row's counters are added to its channel's table entry.
// Only the end of the run takes an overlapping masked vector, instead of every row.
template <class S, class Ctr>
inline void stream_slab(Ctr& counter, const S* base, int64_t n, int64_t inner, typename Ctr::I* table) {
  using I = typename Ctr::I;
  using Lane = decltype(I{}[0] + 0);
  constexpr int W = Ctr::W;
  constexpr int A = Ctr::kAcc;
  const int64_t len = n * inner;
  const I lane = lane_index<I>();
  auto flush = [&](int64_t c) {
    I* t = table + c * A;
    for (int j = 0; j < A; ++j) t[j] += counter.total(j);
    counter.clear();
  };
  int64_t i = 0, e = inner, c = 0;  // next value, end of row c; invariant i <= e since inner >= W
  for (;;) {
    for (; i + W <= e; i += W) counter.add(load_vec<S>(base + i));
    if (i + W > len) break;
    const typename Ctr::V x = load_vec<S>(base + i);
    const I lo = lane < static_cast<Lane>(e - i);
    counter.add(x, lo);
    flush(c);
    ++c;
    e += inner;
    counter.add(x, ~lo);
    i += W;
  }
  if (i < len) {  // fewer than W values left, in row c and perhaps row c + 1: an overlapping vector, masked
    const int64_t p = len - W;
    const typename Ctr::V x = load_vec<S>(base + p);
    const I keep = lane >= static_cast<Lane>(i - p);
    const I lo = lane < static_cast<Lane>(e - p);
    counter.add(x, keep & lo);
    if (e < len) {
      flush(c);
      ++c;
      counter.add(x, keep & ~lo);
    }
  }
  flush(c);
}

// Short-row path: inner stride 1 with short rows (7x7 maps), count only. Per-row setup and per-channel flushes
// dominate such rows when an item walks channel by channel, and jumping between outer indices defeats the
// prefetcher. Here an item walks its rows in memory order (outer index, then channel: for contiguous NCHW one
// sequential run per outer index) and keeps each channel's vector lane counters in a table in L1, loaded and
// stored around the row; the table becomes per-state counts once per item.
template <class S, int K, bool kTies, bool kFromMemory>
void run_short_rows(const Job<S>& job) {
  using T = typename Traits<S>::T;
  using Ctr = Counter<T, K, kTies, kFromMemory>;
  using I = typename Ctr::I;
  constexpr int A = Ctr::kAcc;
  const View& v = job.v;
  int64_t chans = clamp64(kTableBytes / (A * static_cast<int64_t>(sizeof(I))), 1, v.channels);
  const int64_t chan_blocks = ceil_div(v.channels, chans);
  chans = ceil_div(v.channels, chan_blocks);
  int64_t rows = clamp64(kSmallItem / (chans * v.inner), 1, v.outer);
  if (job.threads > 1 && chan_blocks < job.threads) {  // enough items to keep every thread busy
    rows = std::min(rows, std::max<int64_t>(1, ceil_div(v.outer, ceil_div(job.threads, chan_blocks))));
  }
  const int64_t row_blocks = ceil_div(v.outer, rows);
  const int64_t items = row_blocks * chan_blocks;
  const bool parallel = job.threads > 1 && items > 1 && v.outer * v.channels * v.inner >= kParallelMin;
  const bool stream = v.s_channel == v.inner && v.inner >= Ctr::W;
#pragma omp parallel num_threads(job.threads) if (parallel)
  {
    std::vector<I> table(static_cast<size_t>(A * chans));
    Ctr counter(job.th);
#pragma omp for schedule(static)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t cb = item % chan_blocks, rb = item / chan_blocks;
      const int64_t c0 = cb * chans, n = std::min(v.channels, c0 + chans) - c0;
      const int64_t o0 = rb * rows, o1 = std::min(v.outer, o0 + rows);
      std::fill(table.begin(), table.begin() + A * n, I{});
      for (int64_t o = o0; o < o1; ++o) {
        const S* base = job.x + o * v.s_outer + c0 * v.s_channel;
        if (stream) {
          stream_slab(counter, base, n, v.inner, table.data());
          continue;
        }
        for (int64_t c = 0; c < n; ++c) {
          I* t = table.data() + c * A;
          counter.clear();
          counter.add_row(base + c * v.s_channel, v.inner);
          for (int j = 0; j < A; ++j) t[j] += counter.total(j);
        }
      }
      for (int64_t c = 0; c < n; ++c) {
        int64_t sums[A];
        for (int j = 0; j < A; ++j) sums[j] = lane_sum(table[c * A + j]);
        Ctr::add_states(job.counts + (c0 + c) * (K + 1), sums, job.th.ignore_ties);
      }
    }
  }
}

// Float lanes of one vector for the bitmap and byte-lane paths, and their comparisons as bit masks (bit l = lane l).
#if defined(__AVX512F__)
#define NEP_BITMAPS 1
struct Lanes {  // 16 lanes; comparisons land in mask registers
  using Vec = __m512;
  using Mask = uint16_t;
  static constexpr int N = 16;
  static Vec splat(float v) { return _mm512_set1_ps(v); }
  static Vec zero() { return _mm512_setzero_ps(); }
  static Vec add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
  static Mask gt(Vec x, Vec t) { return _mm512_cmp_ps_mask(x, t, _CMP_GT_OQ); }
  static Mask eq(Vec x, Vec t) { return _mm512_cmp_ps_mask(x, t, _CMP_EQ_OQ); }
  static Mask unord(Vec x) { return _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q); }
  static bool finite(Vec s) { return all_finite(s); }
};
#elif defined(__AVX2__)
#define NEP_BITMAPS 1
struct Lanes {  // 8 lanes; comparisons are vectors, moved to a byte
  using Vec = __m256;
  using Mask = uint8_t;
  static constexpr int N = 8;
  static Vec splat(float v) { return _mm256_set1_ps(v); }
  static Vec zero() { return _mm256_setzero_ps(); }
  static Vec add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
  static Mask bits(Vec c) { return static_cast<Mask>(_mm256_movemask_ps(c)); }
  static Mask gt(Vec x, Vec t) { return bits(_mm256_cmp_ps(x, t, _CMP_GT_OQ)); }
  static Mask eq(Vec x, Vec t) { return bits(_mm256_cmp_ps(x, t, _CMP_EQ_OQ)); }
  static Mask unord(Vec x) { return bits(_mm256_cmp_ps(x, x, _CMP_UNORD_Q)); }
  static bool finite(Vec s) { return bits(_mm256_cmp_ps(_mm256_sub_ps(s, s), zero(), _CMP_NEQ_UQ)) == 0; }
};
#endif

#if defined(NEP_BITMAPS)
// Bitmap short-row path (float compute, AVX-512 or AVX2): each vector's comparisons become bit masks stored side
// by side, one bitmap per comparison, for a block of whole rows; then each row's count is a popcount over its bit
// range. A row costs a few scalar instructions per comparison instead of a masked split, a table flush and a
// reload of vector counters, and the vector loop is a plain stream over memory. Used for contiguous NCHW rows up
// to kSmallInner values (7x7 maps and the like).
constexpr int64_t kBitBlock = 4096;  // values per bitmap block: 512 bytes per comparison

// Bits [lo, lo + len) of a bitmap (padded by 8 bytes) set to one; kOneRead: len <= 57, so one 64-bit read from
// lo's byte holds them all.
template <bool kOneRead>
inline int64_t count_bits(const uint8_t* bits, int64_t lo, int64_t len) {
  int64_t total = 0;
  for (;;) {
    const int64_t take = kOneRead ? len : std::min<int64_t>(len, 56);
    uint64_t word;
    std::memcpy(&word, bits + (lo >> 3), sizeof word);
    total += __builtin_popcountll((word >> (lo & 7)) & ((uint64_t{1} << take) - 1));  // take < 64
    if (kOneRead || (len -= take) == 0) return total;
    lo += take;
  }
}

#if defined(__AVX512VBMI__) && defined(__AVX512VPOPCNTDQ__)
#define NEP_ROW_WINDOWS 1
// Eight rows of inner <= 57 bits span exactly `inner` bytes, so every group of eight rows sits at the same bit
// offsets from its first byte: one byte permutation puts each row's 8-byte window in a 64-bit lane, a shift and a
// mask leave its bits, and one popcount counts all eight rows.
struct RowWindows {
  __m512i bytes, shift, keep;
  explicit RowWindows(int64_t inner) {
    alignas(64) uint8_t idx[64];
    alignas(64) uint64_t sh[8];
    for (int r = 0; r < 8; ++r) {
      const int64_t lo = inner * r;
      for (int b = 0; b < 8; ++b) idx[8 * r + b] = static_cast<uint8_t>((lo >> 3) + b);
      sh[r] = static_cast<uint64_t>(lo & 7);
    }
    bytes = _mm512_load_si512(idx);
    shift = _mm512_load_si512(sh);
    keep = _mm512_set1_epi64(static_cast<long long>((uint64_t{1} << inner) - 1));
  }
  // Adds the set bits of each of eight rows (group g of the bitmap) to t[0..7]; reads 64 bytes from its start.
  inline void add(const uint8_t* bits, int64_t inner, int64_t g, int64_t* t) const {
    const __m512i w = _mm512_permutexvar_epi8(bytes, _mm512_loadu_si512(bits + g * inner));
    const __m512i n = _mm512_popcnt_epi64(_mm512_and_si512(_mm512_srlv_epi64(w, shift), keep));
    _mm512_storeu_si512(t, _mm512_add_epi64(_mm512_loadu_si512(t), n));
  }
};
#endif

// Adds to t[r] the set bits of row r (bits [r * inner, (r + 1) * inner) of `bits`), for `rows` rows.
template <bool kOneRead>
inline void count_rows(const uint8_t* bits, int64_t rows, int64_t inner, int64_t* t, const void* windows) {
  int64_t r = 0;
#if defined(NEP_ROW_WINDOWS)
  if constexpr (kOneRead) {
    const auto* w = static_cast<const RowWindows*>(windows);
    for (; r + 8 <= rows; r += 8) w->add(bits, inner, r / 8, t + r);
  }
#else
  (void)windows;
#endif
  for (; r < rows; ++r) t[r] += count_bits<kOneRead>(bits, r * inner, inner);
}

template <int K, bool kTies>
struct MaskSet {
  static constexpr int kAcc = 1 + K * (kTies ? 2 : 1);
  Lanes::Vec g[K], t[K];
  template <class T>  // float; float64 jobs build one they never use
  explicit MaskSet(const Thresholds<T>& th) {
    for (int k = 0; k < K; ++k) {
      g[k] = Lanes::splat(static_cast<float>(th.greater[k]));
      t[k] = Lanes::splat(static_cast<float>(th.tie[k]));
    }
  }
  // Comparison masks of one vector into word w of bitmaps 1.. (gt_0.., tie_0..). Bitmap 0 holds NaN lanes,
  // filled only for blocks that may hold NaN: valid counts come from sizes.
  inline void store(Lanes::Vec x, Lanes::Mask* maps, int64_t stride, int64_t w) const {
    for (int k = 0; k < K; ++k) maps[(1 + k) * stride + w] = Lanes::gt(x, g[k]);
    if constexpr (kTies) {
      for (int k = 0; k < K; ++k) maps[(1 + K + k) * stride + w] = Lanes::eq(x, t[k]);
    }
  }
};

// One bitmap, in words of one vector's mask: a block's masks, a vector of slack, 8 words (>= 8 bytes) of padding.
constexpr int64_t kMapWords = kBitBlock / Lanes::N + 8;

template <class S>
inline Lanes::Vec load_lanes(const S* p) {
  const auto v = load_vec<S>(p);
  static_assert(sizeof(v) == sizeof(Lanes::Vec), "float vectors are as wide as the lanes");
  return reinterpret_cast<const Lanes::Vec&>(v);
}

template <class S>
inline Lanes::Vec load_lanes_partial(const S* p, int64_t m) {
  const auto v = load_partial<S>(p, m);
  return reinterpret_cast<const Lanes::Vec&>(v);
}

#if defined(NEP_WORD_LANES) && !defined(__AVX512F__)
#define NEP_WORD_BITMAPS 1
// Bitmap comparisons of float16/bfloat16 values without ties and with 1-2 thresholds, AVX2: 32 values a step
// compared in their own 16 bits (WordThresholds), each comparison's two word masks packed into one 32-bit mask,
// instead of four widenings, compares and mask moves per comparison.
template <int K>
struct WordMasks {
  __m256i t[K];
  __m256i inf;
  bool key;
  template <class S>
  WordMasks(const Thresholds<float>& th, S) {
    const WordThresholds wt(th, S{});
    for (int k = 0; k < K; ++k) t[k] = _mm256_set1_epi16(static_cast<short>(wt.bits[k]));
    inf = _mm256_set1_epi16(static_cast<short>(wt.inf));
    key = wt.key;
  }
  // The comparison masks of values [0, m) from p (m <= kBitBlock; words past m read as +0) into bitmaps 1..K of
  // `maps` (bitmap j at j * map_bytes, bit i of a bitmap is value i); false if a value is NaN (then the bitmaps
  // are not usable: NaN would compare above every threshold).
  bool fill(const uint16_t* p, int64_t m, uint8_t* maps, int64_t map_bytes) const {
    return key ? fill_as<true>(p, m, maps, map_bytes) : fill_as<false>(p, m, maps, map_bytes);
  }
  template <bool kKey>
  bool fill_as(const uint16_t* p, int64_t m, uint8_t* maps, int64_t map_bytes) const {
    __m256i top = WordOps::zero();
    auto step = [&](__m256i x0, __m256i x1, int64_t g) {
      top = WordOps::max(top, WordOps::max(WordOps::magnitude(x0), WordOps::magnitude(x1)));
      if constexpr (kKey) {
        x0 = WordOps::key(x0);
        x1 = WordOps::key(x1);
      }
      for (int k = 0; k < K; ++k) {
        // packing works within 128-bit lanes: bytes [x0 0-7, x1 0-7 | x0 8-15, x1 8-15], put back in order
        const __m256i b = _mm256_packs_epi16(_mm256_cmpgt_epi16(x0, t[k]), _mm256_cmpgt_epi16(x1, t[k]));
        const auto bits = static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_permute4x64_epi64(b, 0xD8)));
        std::memcpy(maps + (1 + k) * map_bytes + 4 * g, &bits, sizeof bits);
      }
    };
    int64_t g = 0;
    for (; 32 * g + 32 <= m; ++g) step(WordOps::load(p + 32 * g), WordOps::load(p + 32 * g + 16), g);
    if (32 * g < m) {
      alignas(32) uint16_t tail[32] = {};
      std::memcpy(tail, p + 32 * g, static_cast<size_t>(m - 32 * g) * sizeof(uint16_t));
      step(_mm256_load_si256(reinterpret_cast<const __m256i*>(tail)),
           _mm256_load_si256(reinterpret_cast<const __m256i*>(tail + 16)), g);
    }
    return !WordOps::any_above(top, inf);
  }
};

// The WordMasks of a job, where kOn (16-bit storage takes word bitmaps); else a placeholder.
template <bool kOn, class S, int K, class T>
auto word_masks_if(const Thresholds<T>& th) {
  if constexpr (kOn) {
    return WordMasks<K>(th, S{});
  } else {
    return std::nullptr_t{};
  }
}
#endif

// Counts n back-to-back rows of `inner` values (one outer index's channels in contiguous NCHW) into the
// per-channel comparison counts table[j * stride_j + c], through bitmaps in `maps` (kAcc x kMapWords words, then
// 64 bytes of padding). Rows go in blocks of whole rows; the block's last vector may read into the next row (its
// bits are never counted), except at the end of the run, which is read partially. `windows`: the RowWindows of
// `inner` where rows are counted eight at a time. after_block(r0, values) runs once each block of rows from r0
// is counted (the fused activation of its values, while they are in L1). words: a WordMasks that fills a block's
// bitmaps from 16-bit values in their own bits (the float comparisons count a block that holds NaN), or nullptr.
template <class S, int K, bool kTies, bool kOneRead, class Words, class AfterBlock>
void bitmap_slab(const MaskSet<K, kTies>& ms, const S* base, int64_t n, int64_t inner, int64_t* table,
                 int64_t stride_j, Lanes::Mask* maps, const void* windows, const Words* words,
                 AfterBlock&& after_block) {
  constexpr int A = MaskSet<K, kTies>::kAcc;
  constexpr int N = Lanes::N;
  const int64_t len = n * inner;
  const int64_t fit = kBitBlock / inner;
  const int64_t block_rows = fit >= 8 ? fit & ~int64_t{7} : std::max<int64_t>(1, fit);  // whole groups of 8
  for (int64_t r0 = 0; r0 < n; r0 += block_rows) {
    const int64_t r1 = std::min(n, r0 + block_rows);
    const S* p = base + r0 * inner;
    const int64_t span = (r1 - r0) * inner, avail = len - r0 * inner;
    const int64_t full = std::min(span + N - 1, avail) / N;  // vectors that lie inside the run
    const int64_t part = avail - N * full;  // values of a last, partial vector (its padding is NaN)
    const auto real = static_cast<Lanes::Mask>((1u << std::min<int64_t>(part, N)) - 1);
    constexpr int64_t kMapBytes = kMapWords * static_cast<int64_t>(sizeof(Lanes::Mask));
    bool nan = false;
    bool filled = false;  // by words, NaN-free
    if constexpr (!std::is_same_v<Words, std::nullptr_t>) {
      filled = words->fill(reinterpret_cast<const uint16_t*>(p), span, reinterpret_cast<uint8_t*>(maps), kMapBytes);
    }
    if (!filled) {
      // NaN guard: a float sum of the block's values per lane (two chains) is NaN or infinite if any value is NaN
      // (or infinite, or the sum overflows: then the exact NaN count below finds none). An add costs less than a
      // comparison and a mask move per vector.
      Lanes::Vec sum0 = Lanes::zero(), sum1 = Lanes::zero();
      int64_t w = 0;
      for (; w + 2 <= full; w += 2) {
        const Lanes::Vec x0 = load_lanes(p + N * w), x1 = load_lanes(p + N * w + N);
        ms.store(x0, maps, kMapWords, w);
        ms.store(x1, maps, kMapWords, w + 1);
        sum0 = Lanes::add(sum0, x0);
        sum1 = Lanes::add(sum1, x1);
      }
      if (w < full) {
        const Lanes::Vec x = load_lanes(p + N * w);
        ms.store(x, maps, kMapWords, w);
        sum0 = Lanes::add(sum0, x);
      }
      nan = !Lanes::finite(Lanes::add(sum0, sum1));
      if (N * full < span) {
        const Lanes::Vec x = load_lanes_partial(p + N * full, part);
        ms.store(x, maps, kMapWords, full);
        nan = nan || (Lanes::unord(x) & real) != 0;
      }
    }
    const uint8_t* bits = reinterpret_cast<const uint8_t*>(maps);
    for (int j = 1; j < A; ++j) {
      count_rows<kOneRead>(bits + j * kMapBytes, r1 - r0, inner, table + j * stride_j + r0, windows);
    }
    if (nan) {  // rare: the block holds NaN (or the vector after it does); count them row by row
      for (int64_t v = 0; v < full; ++v) maps[v] = Lanes::unord(load_lanes(p + N * v));
      if (N * full < span) maps[full] = Lanes::unord(load_lanes_partial(p + N * full, part)) & real;
      count_rows<kOneRead>(bits, r1 - r0, inner, table + r0, windows);
    }
    after_block(r0, span);
  }
}

template <class S, int K, bool kTies>
void run_short_rows_bitmap(const Job<S>& job) {
  constexpr int A = MaskSet<K, kTies>::kAcc;
  const View& v = job.v;
  const bool parallel = job.threads > 1 && v.outer * v.channels * v.inner >= kParallelMin;
  const int threads = parallel ? job.threads : 1;
  // One block of outer indices per thread; with fewer outer indices than threads, split the channels too.
  const int64_t chan_blocks = std::min<int64_t>(v.channels, ceil_div(threads, v.outer));
  const int64_t chans = ceil_div(v.channels, chan_blocks);
  const int64_t row_blocks = std::min<int64_t>(v.outer, ceil_div(threads, chan_blocks) * 4);
  const int64_t rows = ceil_div(v.outer, row_blocks);
  const int64_t items = ceil_div(v.outer, rows) * chan_blocks;
  ThreadTables<K, kTies> tables(v.channels, threads, /*by_comparison=*/true);
  static_assert(decltype(tables)::kAcc == A, "tables hold the bitmaps' comparisons");
  const MaskSet<K, kTies> ms(job.th);
#if defined(NEP_WORD_BITMAPS)
  // float16/bfloat16 without ties, 1-2 thresholds: bitmaps filled from the values' own bits
  constexpr bool kWordBits = sizeof(S) == 2 && !kTies && K <= 2;
  const auto word_masks = word_masks_if<kWordBits, S, K>(job.th);
  const auto* words = kWordBits ? &word_masks : nullptr;
#else
  const std::nullptr_t* words = nullptr;
#endif
  const bool one_read = v.inner <= 57;
#if defined(NEP_ROW_WINDOWS)
  const RowWindows row_windows(one_read ? v.inner : 1);
  const void* windows = &row_windows;
#else
  const void* windows = nullptr;
#endif
#pragma omp parallel num_threads(threads) if (parallel)
  {
    int64_t* table = tables.mine();
    std::vector<Lanes::Mask> maps(static_cast<size_t>(A * kMapWords + 64 / sizeof(Lanes::Mask)));
    std::vector<typename Traits<S>::T> buf(job.y != nullptr ? kChunk : 0);
#pragma omp for schedule(static)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t cb = item % chan_blocks, rb = item / chan_blocks;
      const int64_t c0 = cb * chans, n = std::min(v.channels, c0 + chans) - c0;
      const int64_t o0 = rb * rows, o1 = std::min(v.outer, o0 + rows);
      for (int64_t o = o0; o < o1; ++o) {
        const S* base = job.x + o * v.s_outer + c0 * v.s_channel;
        // Fused: y's rows lie back to back like x's (run_k checks), so a block's values are one run of y.
        auto after_block = [&](int64_t r0, int64_t values) {
          if (job.y != nullptr) write_activation(job, o, c0 + r0, 0, values, false, buf.data());
        };
        if (one_read) {
          bitmap_slab<S, K, kTies, true>(ms, base, n, v.inner, table + c0, v.channels, maps.data(), windows, words,
                                         after_block);
        } else {
          bitmap_slab<S, K, kTies, false>(ms, base, n, v.inner, table + c0, v.channels, maps.data(), windows, words,
                                          after_block);
        }
      }
    }
    tables.write_states(job.counts, v.outer * v.inner);
  }
}
#endif

#if defined(__AVX512F__)
// Where byte_sweep keeps the counter row of comparison j and group g while it sweeps a block: in L1, or for a
// single group in registers (no store-to-load chain through L1 from one position to the next; channels_last
// fp16/bf16 with 64 channels measured 35-40% faster).
struct RowsInMemory {
  uint8_t* counters;
  int64_t groups;
  __m512i get(int j, int64_t g) const { return _mm512_loadu_si512(counters + 64 * (j * groups + g)); }
  void set(int j, int64_t g, __m512i v) { _mm512_storeu_si512(counters + 64 * (j * groups + g), v); }
  void done() {}
};

template <int A>
struct RowsInRegisters {
  uint8_t* counters;
  __m512i r[A] = {};
  __m512i get(int j, int64_t) const { return r[j]; }
  void set(int j, int64_t, __m512i v) { r[j] = v; }
  void done() {
    for (int j = 0; j < A; ++j) _mm512_storeu_si512(counters + 64 * j, r[j]);
  }
};

// Byte-lane channel counters (channel path, float compute, AVX-512): 64 channels (four vectors) share one 64-byte
// row of uint8 counters per comparison; the four vectors' comparison masks are joined into one 64-bit mask that
// adds 1 to the lanes where it is set. The counters (kAcc x groups x 64 bytes) stay in L1 while a block of at
// most 255 positions (a uint8 counter never wraps) is swept position by position, each position's channels in
// memory order, then widen into the item's int32 lane counters. Per 64 channels and comparison: one counter
// load and store, instead of four of each for int32 lanes, and no re-reading of the positions.
//
// kSign: threshold 0 is 0.0 (ReLU and its kin), counted from the signs of the values' bits instead of four
// comparisons and three mask joins. Float bits read as int32 and packed twice with signed saturation keep their
// sign, so four vectors become 64 signed bytes that are > 0 exactly for the values > 0, and for NaN with a clear
// sign bit: a block that holds NaN is counted again with comparisons. Packing works within 128-bit lanes, so byte
// 16i + 4v + e holds channel 16v + 4i + e (vector v, lane 4i + e); the counters go back to channel order when read.
template <class S, int K, bool kTies, bool kSign, class I>
void byte_sweep(const MaskSet<K, kTies>& ms, const S* base, int64_t stride, int64_t q0, int64_t q1, int64_t groups,
                I* slots, int64_t nslots, uint8_t* counters, bool prefetch) {
  constexpr int A = MaskSet<K, kTies>::kAcc;
  // A NaN guard instead of counting valid values (see below): always but for float32 with one threshold counted
  // through L1 (more than one group), where the comparison measured 4-5% faster.
  constexpr bool kGuard = !std::is_same_v<S, float> || K >= 2;
  const bool guard = kGuard || groups == 1;
  const __m512i minus_one = _mm512_set1_epi8(-1);
  auto bump = [&](auto& rows, int j, int64_t g, __mmask16 m0, __mmask16 m1, __mmask16 m2, __mmask16 m3) {
    const __mmask64 m = _mm512_kunpackd(_mm512_kunpackw(m3, m2), _mm512_kunpackw(m1, m0));
    const __m512i c = rows.get(j, g);
    rows.set(j, g, _mm512_mask_sub_epi8(c, m, c, minus_one));
  };
  auto lanes = [&](const S* p) {
    const auto v = load_vec<S>(p);
    return reinterpret_cast<const __m512&>(v);
  };
  const int64_t ahead = rows_ahead(stride, sizeof(S));
  alignas(64) uint8_t order[64];  // channel ch of a sign-counted row sits at byte order[ch]
  for (int ch = 0; ch < 64; ++ch) order[ch] = static_cast<uint8_t>(16 * ((ch >> 2) & 3) + 4 * (ch >> 4) + (ch & 3));
  for (int64_t qb = q0; qb < q1; qb += 255) {
    const int64_t qe = std::min(q1, qb + 255);
    std::memset(counters, 0, static_cast<size_t>(64 * A * groups));
    // guard: a NaN guard, as in bitmap_slab. Valid counts are the block's positions unless a float sum of its
    // values per lane (four chains) is NaN or infinite; then counter row 0 counts the valid values exactly (a
    // second, rare pass). Measured against an ordered comparison per vector: float16/bfloat16 15-32% faster,
    // float32 with two thresholds 12% faster; float32 with one threshold 11-13% faster for a single group
    // (counters in registers: ResNet-18 layer1 channels_last, from memory) but 4-5% slower for 512 and 2048
    // channels from the caches, which keep the comparison.
    __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps(), sum2 = sum0, sum3 = sum0;
    auto sweep = [&](auto& rows, auto prefetching) {
      // groups == 1 exactly when the counters are in registers
      constexpr bool kGuarded = kGuard || std::is_same_v<std::decay_t<decltype(rows)>, RowsInRegisters<A>>;
      for (int64_t q = qb; q < qe; ++q) {
        const S* row = base + q * stride;
        for (int64_t g = 0; g < groups; ++g) {
          if constexpr (decltype(prefetching)::value) {
            for (int64_t b = 0; b < 64 * static_cast<int64_t>(sizeof(S)); b += 64) {
              prefetch_line(reinterpret_cast<const char*>(row + 64 * g + ahead) + b);
            }
          }
          const __m512 x0 = lanes(row + 64 * g), x1 = lanes(row + 64 * g + 16);
          const __m512 x2 = lanes(row + 64 * g + 32), x3 = lanes(row + 64 * g + 48);
          if constexpr (kGuarded) {
            sum0 = _mm512_add_ps(sum0, x0);
            sum1 = _mm512_add_ps(sum1, x1);
            sum2 = _mm512_add_ps(sum2, x2);
            sum3 = _mm512_add_ps(sum3, x3);
          } else {
            bump(rows, 0, g, _mm512_cmp_ps_mask(x0, x0, _CMP_ORD_Q), _mm512_cmp_ps_mask(x1, x1, _CMP_ORD_Q),
                 _mm512_cmp_ps_mask(x2, x2, _CMP_ORD_Q), _mm512_cmp_ps_mask(x3, x3, _CMP_ORD_Q));
          }
          if constexpr (kSign) {
            const __mmask64 m = positive_bytes(x0, x1, x2, x3);
            const __m512i c = rows.get(1, g);
            rows.set(1, g, _mm512_mask_sub_epi8(c, m, c, minus_one));
          }
          // The compare-and-bump calls stay spelled out: one helper taking the comparison as a lambda measured 4%
          // slower at 2 threads (MobileNet-V2 last channels_last, two thresholds).
          for (int k = kSign ? 1 : 0; k < K; ++k) {
            const __m512 t = ms.g[k];
            bump(rows, 1 + k, g, _mm512_cmp_ps_mask(x0, t, _CMP_GT_OQ), _mm512_cmp_ps_mask(x1, t, _CMP_GT_OQ),
                 _mm512_cmp_ps_mask(x2, t, _CMP_GT_OQ), _mm512_cmp_ps_mask(x3, t, _CMP_GT_OQ));
          }
          if constexpr (kTies) {
            for (int k = 0; k < K; ++k) {
              const __m512 t = ms.t[k];
              bump(rows, 1 + K + k, g, _mm512_cmp_ps_mask(x0, t, _CMP_EQ_OQ), _mm512_cmp_ps_mask(x1, t, _CMP_EQ_OQ),
                   _mm512_cmp_ps_mask(x2, t, _CMP_EQ_OQ), _mm512_cmp_ps_mask(x3, t, _CMP_EQ_OQ));
            }
          }
        }
      }
      rows.done();
    };
    RowsInMemory in_memory{counters, groups};
    if (groups == 1) {
      RowsInRegisters<A> in_registers{counters};
      prefetch ? sweep(in_registers, std::true_type{}) : sweep(in_registers, std::false_type{});
    } else {
      prefetch ? sweep(in_memory, std::true_type{}) : sweep(in_memory, std::false_type{});
    }
    const auto positions = static_cast<decltype(I{}[0] + 0)>(qe - qb);
    const bool exact_valid =
        !guard || !all_finite(_mm512_add_ps(_mm512_add_ps(sum0, sum1), _mm512_add_ps(sum2, sum3)));
    bool recount_sign = false;  // the block may hold NaN: count threshold 0 with comparisons, in channel order
    if constexpr (kSign) {
      if (guard) {
        recount_sign = exact_valid;
      } else {  // float32 counted its valid values: NaN is there if a valid count falls short of the positions
        const __m512i all = _mm512_set1_epi8(static_cast<char>(positions));
        for (int64_t g = 0; g < groups && !recount_sign; ++g) {
          recount_sign = _mm512_cmpneq_epi8_mask(_mm512_loadu_si512(counters + 64 * g), all) != 0;
        }
      }
      if (recount_sign) std::memset(counters + 64 * groups, 0, static_cast<size_t>(64 * groups));
    }
    if ((guard && exact_valid) || recount_sign) {
      for (int64_t q = qb; q < qe; ++q) {
        const S* row = base + q * stride;
        for (int64_t g = 0; g < groups; ++g) {
          const __m512 x0 = lanes(row + 64 * g), x1 = lanes(row + 64 * g + 16);
          const __m512 x2 = lanes(row + 64 * g + 32), x3 = lanes(row + 64 * g + 48);
          if (guard && exact_valid) {
            bump(in_memory, 0, g, _mm512_cmp_ps_mask(x0, x0, _CMP_ORD_Q), _mm512_cmp_ps_mask(x1, x1, _CMP_ORD_Q),
                 _mm512_cmp_ps_mask(x2, x2, _CMP_ORD_Q), _mm512_cmp_ps_mask(x3, x3, _CMP_ORD_Q));
          }
          if (recount_sign) {
            const __m512 t = ms.g[0];
            bump(in_memory, 1, g, _mm512_cmp_ps_mask(x0, t, _CMP_GT_OQ), _mm512_cmp_ps_mask(x1, t, _CMP_GT_OQ),
                 _mm512_cmp_ps_mask(x2, t, _CMP_GT_OQ), _mm512_cmp_ps_mask(x3, t, _CMP_GT_OQ));
          }
        }
      }
    }
    for (int j = 0; j < A; ++j) {
      for (int64_t g = 0; g < groups; ++g) {
        if (j == 0 && !exact_valid) {
          for (int m = 0; m < 4; ++m) slots[4 * g + m] += positions;
          continue;
        }
        __m512i bytes = _mm512_loadu_si512(counters + 64 * (j * groups + g));
        if (kSign && j == 1 && !recount_sign) {
#if defined(__AVX512VBMI__)
          bytes = _mm512_permutexvar_epi8(_mm512_load_si512(order), bytes);
#else
          alignas(64) uint8_t packed[64], ordered[64];
          _mm512_store_si512(packed, bytes);
          for (int ch = 0; ch < 64; ++ch) ordered[ch] = packed[order[ch]];
          bytes = _mm512_load_si512(ordered);
#endif
        }
        // Each quarter of the 64 counters widens to one vector of 16 int32 lanes (spelled out: the extract takes
        // an immediate, which a loop index is only once the loop is unrolled).
        const __m512i wide[4] = {_mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(bytes, 0)),
                                 _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(bytes, 1)),
                                 _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(bytes, 2)),
                                 _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(bytes, 3))};
        for (int m = 0; m < 4; ++m) {
          I w;
          std::memcpy(&w, &wide[m], sizeof w);
          slots[j * nslots + 4 * g + m] += w;
        }
      }
    }
  }
}
#endif

#if defined(NEP_WORD_LANES)
// Counts the comparisons of G vectors of kWordLanes channels from `first` over positions [q0, q1) (at most 65535)
// into uint16 counters, kept in registers and then stored as G x K rows of one vector at `counters` (K per
// vector); returns the largest magnitude bits seen. Each row is prefetched about 4 KiB ahead (from memory,
// MobileNet-V2's 96 channels measured 12% faster with it). Never inlined: inlined into word_sweep, GCC's register
// allocation made MobileNet-V2's 96 channels 1.4x slower.
template <int K, bool kKey, int G>
__attribute__((noinline)) WordVec word_tile(const WordVec* t, const uint16_t* first, int64_t stride, int64_t q0,
                                             int64_t q1, uint8_t* counters) {
  WordVec c[G][K];
  for (int g = 0; g < G; ++g) {
    for (int k = 0; k < K; ++k) c[g][k] = WordOps::zero();
  }
  // Up to three chains of maxes (one chain of G dependent maxes per position measured slower).
  constexpr int kTops = G < 3 ? G : 3;
  WordVec top[kTops];
  for (int i = 0; i < kTops; ++i) top[i] = WordOps::zero();
  const int64_t ahead = rows_ahead(stride, 2);
  for (int64_t q = q0; q < q1; ++q) {
    const uint16_t* row = first + q * stride;
    for (int g = 0; g < G; ++g) {
      if (sizeof(WordVec) == 64 || g % 2 == 0) {  // each cache line of the row once
        prefetch_line(reinterpret_cast<const char*>(row + kWordLanes * g + ahead));
      }
      const WordVec x = WordOps::load(row + kWordLanes * g);
      top[g % kTops] = WordOps::max(top[g % kTops], WordOps::magnitude(x));
      const WordVec kx = kKey ? WordOps::key(x) : x;
      for (int k = 0; k < K; ++k) c[g][k] = WordOps::count_above(c[g][k], kx, t[k]);
    }
  }
  for (int i = 1; i < kTops; ++i) top[0] = WordOps::max(top[0], top[i]);
  for (int g = 0; g < G; ++g) {
    for (int k = 0; k < K; ++k) WordOps::store(counters + sizeof(WordVec) * (g * K + k), c[g][k]);
  }
  return top[0];
}

// At most kWordTile<K> vectors per tile: their G x K counters stay in registers (mostly).
template <int K>
constexpr int kWordTile = WordOps::kTileCounters / K;

// word_tile with 1 <= m <= G vectors (m known only at run time).
template <int K, bool kKey, int G>
inline WordVec word_narrow(int64_t m, const WordVec* t, const uint16_t* first, int64_t stride, int64_t q0,
                           int64_t q1, uint8_t* counters) {
  if constexpr (G > 1) {
    if (m != G) return word_narrow<K, kKey, G - 1>(m, t, first, stride, q0, q1, counters);
  }
  return word_tile<K, kKey, G>(t, first, stride, q0, q1, counters);
}

// Counts groups <= kWordTile<K> vectors of kWordLanes channels from `base` over positions [q0, q1) into the int32
// lane slots of float vectors 0.. (slot j * nslots + 2g + h holds the h-th half of word vector g; j = 0 valid,
// 1 + k above threshold k), in chunks of at most 65535 positions (a uint16 counter never wraps). A chunk whose
// largest magnitude bits exceed infinity's holds NaN: exact(qb, qe) counts it again instead (float comparisons).
// counters: scratch for the groups x K vectors word_tile stores. More channels than one tile take byte_sweep or
// float tiles: tiles that split a row measured up to 1.9x slower from memory than those paths (AVX-512).
template <int K, bool kKey, class I, class Exact>
void word_sweep(int64_t groups, const WordThresholds& wt, const uint16_t* base, int64_t stride, int64_t q0, int64_t q1,
                I* slots, int64_t nslots, uint8_t* counters, Exact&& exact) {
  static_assert(sizeof(I) == sizeof(WordVec), "a word vector's halves widen to two float vectors' slots");
  WordVec t[K];
  for (int k = 0; k < K; ++k) t[k] = WordOps::splat(wt.bits[k]);
  const WordVec inf = WordOps::splat(wt.inf);
  for (int64_t cb = q0; cb < q1; cb += 65535) {
    const int64_t ce = std::min(q1, cb + 65535);
    const WordVec top = word_narrow<K, kKey, kWordTile<K>>(groups, t, base, stride, cb, ce, counters);
    if (WordOps::any_above(top, inf)) {  // NaN in the chunk
      exact(cb, ce);
      continue;
    }
    const auto positions = static_cast<decltype(I{}[0] + 0)>(ce - cb);
    for (int64_t g = 0; g < groups; ++g) {
      slots[2 * g] += positions;
      slots[2 * g + 1] += positions;
      for (int k = 0; k < K; ++k) {
        WordVec c;
        std::memcpy(&c, counters + sizeof(WordVec) * (g * K + k), sizeof c);
        const WordVec lo = WordOps::low(c), hi = WordOps::high(c);
        I w;
        std::memcpy(&w, &lo, sizeof w);
        slots[(1 + k) * nslots + 2 * g] += w;
        std::memcpy(&w, &hi, sizeof w);
        slots[(1 + k) * nslots + 2 * g + 1] += w;
      }
    }
  }
}
#endif

// Adds R vectors of channels over positions [q0, q1) into the lane counters slots[vi..vi+R) (see run_channels).
template <int R, class S, class Ctr>
inline void sweep_tile(Ctr* ctr, const S* first, int64_t stride, int64_t q0, int64_t q1, typename Ctr::I* slots,
                       int64_t nslots, int64_t vi) {
  const int64_t ahead = rows_ahead(stride, sizeof(S));
  for (int64_t q = q0; q < q1; ++q) {
    const S* row = first + q * stride;
    for (int r = 0; r < R; ++r) {
      if constexpr (Ctr::kPrefetch && !std::is_same_v<S, double>) {  // about 4 KiB ahead
        prefetch_line(reinterpret_cast<const char*>(row + r * Ctr::W + ahead));
      }
      ctr[r].add_at(row + r * Ctr::W);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < Ctr::kAcc; ++j) slots[j * nslots + vi + r] += ctr[r].total(j);
    ctr[r].clear();
  }
}

// sweep_tile with m < R vectors (m known only at run time).
template <int M, class S, class Ctr>
inline void sweep_narrow(int m, Ctr* ctr, const S* first, int64_t stride, int64_t q0, int64_t q1,
                         typename Ctr::I* slots, int64_t nslots, int64_t vi) {
  if constexpr (M >= 1) {
    if (m == M) {
      sweep_tile<M>(ctr, first, stride, q0, q1, slots, nslots, vi);
    } else {
      sweep_narrow<M - 1>(m, ctr, first, stride, q0, q1, slots, nslots, vi);
    }
  }
}

// Channel path: channel stride 1 (channels_last, (N, L, C)). Each lane of a vector counter is one channel. An
// item (a block of positions x up to kMaxItemChans channels) is read in L1-sized blocks of positions; within a
// block, tiles of R vectors of channels keep their counters in registers while they sweep its positions, then
// add them to per-item int32 lane counters, which become per-state counts once per item.
template <class S, int K, bool kTies, bool kFromMemory>
void run_channels(const Job<S>& job) {
  using T = typename Traits<S>::T;
  using Ctr = Counter<T, K, kTies, kFromMemory>;
  using I = typename Ctr::I;
  using Lane = decltype(I{}[0] + 0);
  constexpr int W = Ctr::W;
  // Vectors per register tile. With AVX-512's 32 vector registers a tile can hold 18 int32 lane counters:
  // MobileNet-V2's 96 channels with two thresholds in one tile (16-bit storage 30% faster than tiles of 16
  // counters; float32 2-11%).
#if defined(__AVX512F__)
  constexpr int R = std::max(1, (sizeof(S) <= 4 ? 18 : 16) / Ctr::kAcc);
#else
  constexpr int R = std::max(1, 16 / Ctr::kAcc);
#endif
  const View& v = job.v;
  ChannelPlan p = plan_channels(v, kChanTarget, kMaxItemChans);
  // Few positions per item make the per-channel flush (a few hundred ns per 16 channels) rival the counting
  // when there are many channels: keep items long, yet split the positions evenly among the threads.
  const int64_t min_pos = std::min(kMinPositions, ceil_div(v.inner, std::max(1, job.threads)));
  if (p.positions < min_pos) {
    p.pos_blocks = ceil_div(v.inner, min_pos);
    p.positions = ceil_div(v.inner, p.pos_blocks);
  }
  const int64_t block = clamp64(kL1Bytes / (p.chans * static_cast<int64_t>(sizeof(S))), 8, p.positions);
  const int64_t nslots = ceil_div(p.chans, W);
  // Many tiles per position (measured: 3 or more) re-read each block too often; counting each vector into the
  // per-item lane counters in L1 instead (a load and a store per counter) then costs less. AVX2 builds do so only
  // from memory, where tiles' short strided reads measured 1.5x slower (Swin-T's 384 channels). From the caches,
  // AVX2's 8-lane vectors make those loads and stores twice as many per value, and tiles measured 1.4-2.4x faster
  // (channels_last 7x7 maps of 512 and 1280 channels).
  const bool row_sweep = (kVecBytes == 64 || kFromMemory) && ceil_div(p.chans / W, R) >= 3;
#if defined(NEP_WORD_LANES)
  // float16/bfloat16 without ties, one or two thresholds, kWordLanes to kWordLanes * kWordTile<K> channels per
  // item (one tile): groups of kWordLanes channels in word lanes (word_sweep).
  constexpr bool kWords = sizeof(S) == 2 && !kTies && K <= 2;
  constexpr int64_t kTile = kWordTile<std::min(K, 2)>;  // word vectors per tile
  // AVX2 builds also take more channels than one tile holds, tile after tile, when the tensor stays in the
  // caches (channels_last 7x7 maps of 512 and 1280 channels measured 1.3-1.6x faster than float tiles).
  const bool word_tiles = kVecBytes == 32 && !kFromMemory;
  const bool words = kWords && p.chans >= kWordLanes &&
                     (word_tiles || p.chans / kWordLanes <= kTile);
#else
  constexpr bool kWords = false;
  const bool words = false;
#endif
#if defined(__AVX512F__)
  // Float compute with many channels: groups of 64 channels go through byte-lane counters (byte_sweep).
  constexpr bool kBytes = std::is_same_v<T, float>;
  const MaskSet<K, kTies> ms(job.th);
  const bool sign_zero = job.th.greater[0] == 0;  // threshold 0 is 0.0: byte_sweep counts it from signs
  // Exactly 64 channels with threshold 0.0 (ResNet stage 1, ReLU): one group of byte lanes held in registers. With
  // channels left over (96), the extra tiles re-read the positions and it measured 10-30% slower than tiles.
  const bool bytes = kBytes && !words && (row_sweep || (sign_zero && p.chans == 64));
#else
  const bool bytes = false;
#endif
  const int64_t items = p.items(v.outer);
  const bool parallel = job.threads > 1 && items > 1 && v.outer * v.channels * v.inner >= kParallelMin;
  const int threads = parallel ? job.threads : 1;
  using Tables = ThreadTables<K, kTies>;
  static_assert(Tables::kAcc == Ctr::kAcc, "tables hold the counter's comparisons");
  const bool use_tables = Tables::fits(v.channels, threads);
  Tables tables(use_tables ? v.channels : 0, threads);
#pragma omp parallel num_threads(threads) if (parallel)
  {
    std::vector<T> buf(kChunk);
    std::vector<I> slots(static_cast<size_t>(Ctr::kAcc * nslots));
    int64_t* table = use_tables ? tables.mine() : nullptr;
    std::vector<uint8_t> byte_counters(bytes ? static_cast<size_t>(64 * Ctr::kAcc * (p.chans / 64)) : 0);
    Ctr ctr[R];
    for (int r = 0; r < R; ++r) ctr[r] = Ctr(job.th);
#if defined(NEP_WORD_LANES)
    const auto word_th = word_thresholds_if<kWords, S>(job.th);
    const int64_t word_groups = std::min(p.chans / kWordLanes, kTile);
    std::vector<uint8_t> word_counters(words ? sizeof(WordVec) * K * static_cast<size_t>(word_groups) : 0);
#endif
#pragma omp for schedule(static)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t cb = item % p.chan_blocks;
      const int64_t pb = (item / p.chan_blocks) % p.pos_blocks;
      const int64_t o = item / (p.chan_blocks * p.pos_blocks);
      const int64_t c0 = cb * p.chans, n = std::min(v.channels, c0 + p.chans) - c0;
      const int64_t q0 = pb * p.positions, q1 = std::min(v.inner, q0 + p.positions);
      const int64_t full = n / W, tail = n - full * W;
      const S* base = job.x + o * v.s_outer + c0;
      std::fill(slots.begin(), slots.end(), I{});
      int64_t v0 = 0;  // vectors of channels before v0 are counted by word_sweep or byte_sweep
#if defined(NEP_WORD_LANES)
      if constexpr (kWords) {
        if (words) {
          const WordThresholds& wt = word_th;
          const auto* first = reinterpret_cast<const uint16_t*>(base);
          const int64_t groups = n / kWordLanes;
          uint8_t* counters = word_counters.data();
          // one tile of groups [g0, g0 + gs) at a time (several only in AVX2 builds, word_tiles)
          for (int64_t g0 = 0; g0 < groups; g0 += kTile) {
            const int64_t gs = std::min(groups - g0, kTile);
            auto exact = [&](int64_t qb, int64_t qe) {
              for (int64_t u = 2 * g0; u < 2 * (g0 + gs); ++u) {
                sweep_tile<1>(ctr, base + u * W, v.s_inner, qb, qe, slots.data(), nslots, u);
              }
            };
            const uint16_t* tile = first + g0 * kWordLanes;
            I* tile_slots = slots.data() + 2 * g0;
            if (wt.key) {
              word_sweep<K, true>(gs, wt, tile, v.s_inner, q0, q1, tile_slots, nslots, counters, exact);
            } else {
              word_sweep<K, false>(gs, wt, tile, v.s_inner, q0, q1, tile_slots, nslots, counters, exact);
            }
          }
          v0 = 2 * groups;
        }
      }
#endif
#if defined(__AVX512F__)
      if constexpr (kBytes) {
        if (bytes) {
          if (sign_zero) {
            byte_sweep<S, K, kTies, true>(ms, base, v.s_inner, q0, q1, n / 64, slots.data(), nslots,
                                          byte_counters.data(), kFromMemory);
          } else {
            byte_sweep<S, K, kTies, false>(ms, base, v.s_inner, q0, q1, n / 64, slots.data(), nslots,
                                           byte_counters.data(), kFromMemory);
          }
          v0 = 4 * (n / 64);
        }
      }
#endif
      for (int64_t qb = q0; qb < q1 && (v0 < full || tail != 0); qb += block) {
        const int64_t qe = std::min(q1, qb + block);
        int64_t vi = v0;
        if (row_sweep) {
          for (int64_t q = qb; q < qe; ++q) {
            const S* row = base + q * v.s_inner;
            for (int64_t u = v0; u < full; ++u) {
              const typename Ctr::V x = load_vec<S>(row + u * W);
              I* sl = slots.data() + u;
              sl[0] -= (x == x);
              for (int k = 0; k < K; ++k) sl[(1 + k) * nslots] -= (x > ctr[0].g[k]);
              if constexpr (kTies) {
                for (int k = 0; k < K; ++k) sl[(1 + K + k) * nslots] -= (x == ctr[0].t[k]);
              }
            }
          }
          vi = full;
        }
        for (; vi + R <= full; vi += R) sweep_tile<R>(ctr, base + vi * W, v.s_inner, qb, qe, slots.data(), nslots, vi);
        if (vi < full) {
          sweep_narrow<R - 1>(static_cast<int>(full - vi), ctr, base + vi * W, v.s_inner, qb, qe, slots.data(),
                              nslots, vi);
        }
        if (tail != 0) {  // the last channels: an overlapping masked vector, or NaN-padded when n < W
          if (n >= W) {
            const I keep = lane_index<I>() >= static_cast<Lane>(W - tail);
            for (int64_t q = qb; q < qe; ++q) ctr[0].add(load_vec<S>(base + q * v.s_inner + n - W), keep);
          } else {
            for (int64_t q = qb; q < qe; ++q) ctr[0].add(load_partial<S>(base + q * v.s_inner, tail));
          }
          for (int j = 0; j < Ctr::kAcc; ++j) slots[j * nslots + full] += ctr[0].total(j);
          ctr[0].clear();
        }
      }
      for (int64_t vi = 0; vi < nslots; ++vi) {
        // slot vi holds channels c0 + first + l for lanes l in [lo, W)
        const bool last_masked = vi == full && n >= W;
        const int64_t first = last_masked ? n - W : vi * W;
        const int lo = last_masked ? static_cast<int>(W - tail) : 0;
        const int hi = vi == full ? (last_masked ? W : static_cast<int>(tail)) : W;
        for (int l = lo; l < hi; ++l) {
          if (table != nullptr) {
            int64_t* t = table + (c0 + first + l) * Ctr::kAcc;
            for (int j = 0; j < Ctr::kAcc; ++j) t[j] += slots[j * nslots + vi][l];
          } else {
            int64_t sums[Ctr::kAcc];
            for (int j = 0; j < Ctr::kAcc; ++j) sums[j] = slots[j * nslots + vi][l];
            Ctr::add_states(job.counts + (c0 + first + l) * (K + 1), sums, job.th.ignore_ties);
          }
        }
      }
      if (job.y != nullptr) {
        for (int64_t q = q0; q < q1; ++q) write_activation(job, o, c0, q, n, true, buf.data());
      }
    }
    if (use_tables) tables.write_states(job.counts);
  }
}

// Writes the fused output of the whole job (no counting): one run per outer index when x's and y's rows lie back
// to back, else row by row; outer indices (and blocks of channels when they are few) split among the threads.
template <class S>
void run_activation(const Job<S>& job) {
  using T = typename Traits<S>::T;
  const View &v = job.v, &yv = job.yv;
  const bool slabs = v.s_inner == 1 && v.s_channel == v.inner && yv.s_inner == 1 && yv.s_channel == v.inner;
  const int64_t chan_blocks = clamp64(ceil_div(4 * int64_t{job.threads}, v.outer), 1, v.channels);
  const int64_t chans = ceil_div(v.channels, chan_blocks);
  const int64_t items = v.outer * chan_blocks;
  const bool parallel = job.threads > 1 && items > 1 && v.outer * v.channels * v.inner >= kParallelMin;
#pragma omp parallel num_threads(job.threads) if (parallel)
  {
    std::vector<T> buf(kChunk);
#pragma omp for schedule(static)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t o = item / chan_blocks, c0 = (item % chan_blocks) * chans;
      const int64_t c1 = std::min(v.channels, c0 + chans);
      if (slabs) {
        write_activation(job, o, c0, 0, (c1 - c0) * v.inner, false, buf.data());
      } else {
        for (int64_t c = c0; c < c1; ++c) write_activation(job, o, c, 0, v.inner, false, buf.data());
      }
    }
  }
}

// Calls f(ties, from_memory) with the job's ignore_ties and whether its tensor is read from memory (at least
// kMemoryBytes: the row and tile loops prefetch) as std::bool_constant types; float64 takes one variant.
template <class S, class F>
void with_flags(const Job<S>& job, F&& f) {
  using Yes = std::true_type;
  using No = std::false_type;
  if constexpr (!std::is_same_v<S, double>) {
    const View& v = job.v;
    const bool memory = v.outer * v.channels * v.inner * static_cast<int64_t>(sizeof(S)) >= kMemoryBytes;
    if (job.th.ignore_ties) {
      memory ? f(Yes{}, Yes{}) : f(Yes{}, No{});
    } else {
      memory ? f(No{}, Yes{}) : f(No{}, No{});
    }
  } else {
    job.th.ignore_ties ? f(Yes{}, No{}) : f(No{}, No{});
  }
}

template <class S, int K>
void run_k(const Job<S>& job) {
  if constexpr (K <= kMaxThresholds) {
    if (job.th.k != K) {
      run_k<S, K + 1>(job);
    } else if (job.by_channel) {
      with_flags(job, [&](auto ties, auto memory) { run_channels<S, K, ties.value, memory.value>(job); });
    } else if (job.y != nullptr && job.v.s_inner == 1 && job.v.inner <= kSmallInner) {
#if defined(NEP_BITMAPS)
      // Fused on short rows whose y rows lie back to back like x's: the bitmap path writes each block's
      // activation right after counting it, from L1.
      if constexpr (std::is_same_v<typename Traits<S>::T, float>) {
        const View &v = job.v, &yv = job.yv;
        if (v.s_channel == v.inner && yv.s_inner == 1 && yv.s_channel == v.inner &&
            ThreadTables<K, true>::fits(v.channels, job.threads)) {
          job.th.ignore_ties ? run_short_rows_bitmap<S, K, true>(job) : run_short_rows_bitmap<S, K, false>(job);
          return;
        }
      }
#endif
      // Otherwise count them the count-only way, then write the activation in a second pass (the per-row fused
      // path costs more than both on 7x7 maps).
      Job<S> count_only = job;
      count_only.y = nullptr;
      run_k<S, K>(count_only);
      run_activation(job);
    } else if (job.v.s_inner == 1 && job.v.inner <= kSmallInner) {
#if defined(NEP_BITMAPS)
      if constexpr (std::is_same_v<typename Traits<S>::T, float>) {
        if (job.v.s_channel == job.v.inner && ThreadTables<K, true>::fits(job.v.channels, job.threads)) {
          job.th.ignore_ties ? run_short_rows_bitmap<S, K, true>(job) : run_short_rows_bitmap<S, K, false>(job);
          return;
        }
      }
#endif
      with_flags(job, [&](auto ties, auto memory) { run_short_rows<S, K, ties.value, memory.value>(job); });
    } else {
      with_flags(job, [&](auto ties, auto memory) { run_rows<S, K, ties.value, memory.value>(job); });
    }
  }
}

template <class S>
void run(const CountRequest& r) {
  using T = typename Traits<S>::T;
  Job<S> job{static_cast<const S*>(r.x), r.view, {}, r.counts, static_cast<S*>(r.y), r.y_view,
             Act<T>(r.activation), std::max(1, r.threads), false};
  job.th.k = r.num_thresholds;
  job.th.ignore_ties = r.ignore_ties;
  for (int k = 0; k < r.num_thresholds; ++k) {
    job.th.greater[k] = static_cast<T>(r.greater[k]);
    job.th.tie[k] = static_cast<T>(r.tie[k]);
  }
  // A dimension of size 1 has no meaningful stride: reading it as stride 1 keeps the fast paths.
  if (job.v.inner == 1) job.v.s_inner = job.v.s_channel == 1 ? 0 : 1;
  job.by_channel = job.v.s_inner != 1 && job.v.s_channel == 1;
  run_k<S, 1>(job);
}

}  // namespace

void count_cpu(const CountRequest& r) {
  switch (r.dtype) {
    case kFloat32:
      run<float>(r);
      break;
    case kFloat16:
      run<Half>(r);
      break;
    case kBFloat16:
      run<BF16>(r);
      break;
    case kFloat64:
      run<double>(r);
      break;
    default:
      break;
  }
}

}  // namespace nepenthe
