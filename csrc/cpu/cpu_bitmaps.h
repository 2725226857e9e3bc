// Comparisons as bit masks (float compute, AVX-512 or AVX2): a vector's float lanes and their comparison masks
// (Lanes, MaskSet), and rows counted from a bitmap by popcount (count_rows). The short-row bitmap path
// (cpu_short_row_bitmaps.h) is built on them; the byte-lane channel path (cpu_byte_lanes.h) takes MaskSet's
// thresholds.
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

#include "../common/count_args.h"
#include "cpu_row_signs.h"
#include "cpu_simd.h"

namespace nepenthe {
namespace {

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

#if defined(__AVX512VPOPCNTDQ__)
#define NEP_ROW_SPANS 1
// Rows of 58 to kSpanRows bits: the kSpanWindows 64-byte windows from a row's first byte hold all of its bits (at
// most 7 + kSpanRows). One mask per window and bit offset of the row's start keeps them, and one popcount of eight
// 64-bit words per window counts the row.
constexpr int64_t kSpanRows = 1024;
constexpr int kSpanWindows = (7 + kSpanRows + 511) / 512;
struct RowSpans {
  __m512i keep[kSpanWindows][8];  // keep[w][b]: bits [b, b + inner) of 512 * kSpanWindows, window w
  int windows;                    // the windows that rows of `inner` bits reach
  explicit RowSpans(int64_t inner) : windows(static_cast<int>((7 + inner + 511) / 512)) {
    const auto below = [](int64_t n) { return n >= 64 ? ~uint64_t{0} : (uint64_t{1} << n) - 1; };  // bits [0, n)
    for (int b = 0; b < 8; ++b) {
      for (int w = 0; w < kSpanWindows; ++w) {
        alignas(64) uint64_t m[8];
        for (int q = 0; q < 8; ++q) {
          const int64_t at = 64 * (8 * w + q);
          m[q] = below(std::clamp<int64_t>(b + inner - at, 0, 64)) & ~below(std::clamp<int64_t>(b - at, 0, 64));
        }
        keep[w][b] = _mm512_load_si512(m);
      }
    }
  }
  // The popcounts of the 64-bit words that hold bits [lo, lo + inner), summed over its W windows (W == windows);
  // reads 64 bytes per window from lo's byte.
  template <int W>
  inline __m512i words(const uint8_t* bits, int64_t lo) const {
    const uint8_t* p = bits + (lo >> 3);
    const int64_t b = lo & 7;
    __m512i n = _mm512_popcnt_epi64(_mm512_and_si512(_mm512_loadu_si512(p), keep[0][b]));
    for (int w = 1; w < W; ++w) {
      n = _mm512_add_epi64(n, _mm512_popcnt_epi64(_mm512_and_si512(_mm512_loadu_si512(p + 64 * w), keep[w][b])));
    }
    return n;
  }
  // The set bits of bits [lo, lo + inner).
  template <int W>
  inline int64_t count(const uint8_t* bits, int64_t lo) const {
    return _mm512_reduce_add_epi64(words<W>(bits, lo));
  }
  // Adds the set bits of rows r..r+7 to t[0..7]: their word counts summed across in a transposing tree (21
  // instructions for eight rows, where eight reductions take about 56).
  template <int W>
  inline void add8(const uint8_t* bits, int64_t r, int64_t inner, int64_t* t) const {
    __m512i pair[4];  // pair[i]: 128-bit lane L holds rows 2i and 2i+1 summed over words 2L and 2L+1
    for (int i = 0; i < 4; ++i) {
      const __m512i a = words<W>(bits, (r + 2 * i) * inner), b = words<W>(bits, (r + 2 * i + 1) * inner);
      pair[i] = _mm512_add_epi64(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b));
    }
    constexpr int kEven = _MM_SHUFFLE(2, 0, 2, 0), kOdd = _MM_SHUFFLE(3, 1, 3, 1);
    const __m512i q0 = _mm512_add_epi64(_mm512_shuffle_i64x2(pair[0], pair[1], kEven),
                                        _mm512_shuffle_i64x2(pair[0], pair[1], kOdd));  // rows 0-3, two halves
    const __m512i q1 = _mm512_add_epi64(_mm512_shuffle_i64x2(pair[2], pair[3], kEven),
                                        _mm512_shuffle_i64x2(pair[2], pair[3], kOdd));  // rows 4-7
    const __m512i n = _mm512_add_epi64(_mm512_shuffle_i64x2(q0, q1, kEven), _mm512_shuffle_i64x2(q0, q1, kOdd));
    _mm512_storeu_si512(t, _mm512_add_epi64(_mm512_loadu_si512(t), n));
  }
};
#endif

#if defined(NEP_ROW_SPANS)
// count_rows for rows longer than 57 bits, through RowSpans of W windows.
template <int W>
inline void count_span_rows(const uint8_t* bits, int64_t rows, int64_t inner, int64_t* t, const RowSpans& spans) {
  int64_t r = 0;
  for (; r + 8 <= rows; r += 8) spans.add8<W>(bits, r, inner, t + r);
  for (; r < rows; ++r) t[r] += spans.count<W>(bits, r * inner);
}
#endif

// Adds to t[r] the set bits of row r (bits [r * inner, (r + 1) * inner) of `bits`), for `rows` rows. windows: the
// RowWindows (kOneRead) or RowSpans (longer rows) of `inner`, where the build has them.
template <bool kOneRead>
inline void count_rows(const uint8_t* bits, int64_t rows, int64_t inner, int64_t* t, const void* windows) {
  int64_t r = 0;
#if defined(NEP_ROW_WINDOWS)
  if constexpr (kOneRead) {
    const RowWindows w = *static_cast<const RowWindows*>(windows);  // in registers: t's stores may alias *windows
    for (; r + 8 <= rows; r += 8) w.add(bits, inner, r / 8, t + r);
  }
#endif
#if defined(NEP_ROW_SPANS)
  if constexpr (!kOneRead) {
    const auto& spans = *static_cast<const RowSpans*>(windows);
    static_assert(kSpanWindows == 3, "one case per window count");
    switch (spans.windows) {
      case 1:
        return count_span_rows<1>(bits, rows, inner, t, spans);
      case 2:
        return count_span_rows<2>(bits, rows, inner, t, spans);
      default:
        return count_span_rows<3>(bits, rows, inner, t, spans);
    }
  }
#endif
  (void)windows;
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
#endif

}  // namespace
}  // namespace nepenthe
