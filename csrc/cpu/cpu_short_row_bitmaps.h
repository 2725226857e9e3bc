// The short-row bitmap path (run_short_rows_bitmap): contiguous NCHW rows of up to kBitmapRows values (7x7 to
// 32x32 maps) counted through comparison bitmaps, a block of whole rows at a time. The fused output of float32
// piecewise-linear activations (AVX-512) is written by the block's fill; any other is written after each block
// while it is in L1. float16/bfloat16 bitmaps (and float32 ones with AVX2 or, against bfloat16-exact thresholds,
// AVX-512) are filled 32 values a step (cpu_packed_masks.h) where they can.
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
#include <optional>
#include <type_traits>

#include "../common/count_args.h"
#include "cpu_bitmaps.h"
#include "cpu_fused_output.h"
#include "cpu_job.h"
#include "cpu_packed_masks.h"
#include "cpu_scratch.h"
#include "cpu_storage.h"
#include "cpu_thread_tables.h"
#include "cpu_tuning.h"

namespace nepenthe {
namespace {

#if defined(NEP_BITMAPS)  // cpu_bitmaps.h: AVX-512 or AVX2
// What bitmap_slab's fills hand each vector of a count alone, or of a fused output written after the block: nothing.
struct NoBlockEmit {
  static constexpr bool kWrites = false;
  void one(int64_t, Lanes::Vec, Lanes::Mask) const {}
};

// The longest contiguous NCHW rows counted through bitmaps: with RowSpans (AVX-512 VPOPCNTDQ), 28x28 and 32x32
// maps too; otherwise those of the short-row path.
#if defined(NEP_ROW_SPANS)
constexpr int64_t kBitmapRows = kSpanRows;
static_assert(kSpanRows >= kSmallInner, "RowSpans count every row of the short-row path");
#else
constexpr int64_t kBitmapRows = kSmallInner;
#endif
// Bytes after the last bitmap: count_rows reads whole 64-byte windows from a row's first byte (RowWindows one,
// RowSpans up to kSpanWindows), at most 64 bytes past the bitmap's own padding.
constexpr int64_t kMapTailBytes = 128;

// Counts n back-to-back rows of `inner` values (one outer index's channels in contiguous NCHW) into the
// per-channel comparison counts table[j * stride_j + c], through bitmaps in `maps` (kAcc x kMapWords words, then
// kMapTailBytes of padding). Rows go in blocks of whole rows; the block's last vector may read into the next row
// (its bits are never counted), except at the end of the run, which is read partially. `windows`: count_rows'
// helper for rows of `inner` values (RowWindows up to 57, RowSpans longer), where the build has one.
// out: the fused output, if any. out.emit(r0) is what the fill hands each vector of the block of rows from r0
// (NoBlockEmit, or a RowActivation that writes the block's output as it reads it); out.after(r0, values) runs once the
// block is counted (the fused activation of its values, from L1, where the fill wrote none). words: a WordMasks,
// FloatMasks or FloatWordMasks that fills a block's bitmaps 32 values a step (the float comparisons count a block
// that holds NaN), or nullptr.
template <class S, int K, bool kTies, bool kOneRead, class Words, class Output>
void bitmap_slab(const MaskSet<K, kTies>& ms, const S* base, int64_t n, int64_t inner, int64_t* table,
                 int64_t stride_j, Lanes::Mask* maps, const void* windows, const Words* words, const Output& out) {
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
    const auto emit = out.emit(r0);
    constexpr bool kWrites = decltype(emit)::kWrites;
    bool nan = false;
    bool filled = false;   // by words, NaN-free
    bool written = false;  // the fused output, during a fill
    if constexpr (!std::is_same_v<Words, std::nullptr_t>) {
      if (std::is_same_v<S, float> ? words != nullptr : true) {  // float32's FloatWordMasks may not apply
        if constexpr (kWrites) {
          filled = words->fill(p, span, reinterpret_cast<uint8_t*>(maps), kMapBytes, emit);
          written = true;
        } else {
          filled = words->fill(p, span, reinterpret_cast<uint8_t*>(maps), kMapBytes);
        }
      }
    }
    // The float comparisons' fill. The last whole vector may reach past the block (into the run's next row): only
    // the lanes before `span` are emitted.
    const int64_t inside = span / N;  // vectors wholly in the block
    const auto fill_floats = [&](const auto& e) {
      const auto lanes = [&](int64_t w) {  // those of vector w that lie in the block
        return static_cast<Lanes::Mask>(w < inside ? ~0u : (1u << std::min<int64_t>(span - N * w, N)) - 1);
      };
      // NaN guard: a float sum of the block's values per lane (two chains) is NaN or infinite if any value is NaN
      // (or infinite, or the sum overflows: then the exact NaN count below finds none). An add costs less than a
      // comparison and a mask move per vector.
      Lanes::Vec sum0 = Lanes::zero(), sum1 = Lanes::zero();
      int64_t w = 0;
      for (; w + 2 <= full; w += 2) {
        const Lanes::Vec x0 = load_lanes(p + N * w), x1 = load_lanes(p + N * w + N);
        ms.store(x0, maps, kMapWords, w);
        ms.store(x1, maps, kMapWords, w + 1);
        e.one(N * w, x0, lanes(w));
        e.one(N * w + N, x1, lanes(w + 1));
        sum0 = Lanes::add(sum0, x0);
        sum1 = Lanes::add(sum1, x1);
      }
      if (w < full) {
        const Lanes::Vec x = load_lanes(p + N * w);
        ms.store(x, maps, kMapWords, w);
        e.one(N * w, x, lanes(w));
        sum0 = Lanes::add(sum0, x);
      }
      nan = !Lanes::finite(Lanes::add(sum0, sum1));
      if (N * full < span) {
        const Lanes::Vec x = load_lanes_partial(p + N * full, part);
        ms.store(x, maps, kMapWords, full);
        e.one(N * full, x, lanes(full));
        nan = nan || (Lanes::unord(x) & real) != 0;
      }
    };
    if (!filled) {
      if (kWrites && written) {
        fill_floats(NoBlockEmit{});  // words' fill wrote the output already
      } else {
        fill_floats(emit);
        written = kWrites;
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
    if (!written) out.after(r0, span);
  }
}

// bitmap_slab's output for a count alone, or for a fused output written from L1 after each block: that of the
// rows of outer index o from channel c0 (y's rows lie back to back like x's: run_k checks).
template <class S>
struct ActivationAfterBlock {
  const Job<S>& job;
  int64_t o, c0;
  typename Traits<S>::T* buf;  // kChunk values
  NoBlockEmit emit(int64_t) const { return {}; }
  void after(int64_t r0, int64_t values) const {
    if (job.y != nullptr) write_activation(job, o, c0 + r0, 0, values, false, buf);
  }
};

#if defined(__AVX512F__)
// Fused float32 rows of piecewise-linear activation kKind: the fill writes the output (RowActivation) of the rows
// from y, `inner` values each. On 7x7 to 28x28 maps with two threads, the fused call took 0.76-0.95 of the time it
// took when each block's output was written after the count, from L1.
#define NEP_OUTPUT_IN_FILL 1
template <int kKind>
struct ActivationInFill {
  const Act<float>& act;
  float* y;
  int64_t inner;
  RowActivation<kKind> emit(int64_t r0) const { return RowActivation<kKind>(act, y + r0 * inner); }
  void after(int64_t, int64_t) const {}
};
#endif

template <class S, int K, bool kTies>
void run_short_rows_bitmap(const Job<S>& job) {
  constexpr int A = MaskSet<K, kTies>::kAcc;
  const View& v = job.v;
  const bool parallel = job.threads > 1 && v.numel() >= kParallelMin;
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
#if defined(NEP_PACKED_BITMAPS)
  const auto packed_masks = packed_masks_if<S, K, kTies>(job.th);
  const auto* words = std::is_same_v<decltype(packed_masks), const std::nullptr_t> ? nullptr : &packed_masks;
  if constexpr (!std::is_same_v<decltype(packed_masks), const std::nullptr_t>) {
    if (!packed_masks.usable) words = nullptr;  // thresholds its compares cannot count exactly
  }
#else
  const std::nullptr_t* words = nullptr;
#endif
  const bool one_read = v.inner <= 57;
  const void* windows = nullptr;  // count_rows' helper for this row length, where the build has one
#if defined(NEP_ROW_WINDOWS)
  const RowWindows row_windows(one_read ? v.inner : 1);
  if (one_read) windows = &row_windows;
#endif
#if defined(NEP_ROW_SPANS)
  std::optional<RowSpans> row_spans;  // 1.5 KiB of masks: built only for rows that need them
  if (!one_read) windows = &row_spans.emplace(v.inner);
#endif
#if defined(NEP_OUTPUT_IN_FILL)
  bool in_fill = false;  // the fills write the fused output
  if constexpr (std::is_same_v<S, float>) in_fill = job.y != nullptr && !job.in_place && is_piecewise(job.act.kind);
#endif
#pragma omp parallel num_threads(threads) if (parallel)
  {
    int64_t* table = tables.mine();
    LineVector<Lanes::Mask> maps(static_cast<size_t>(A * kMapWords + kMapTailBytes / sizeof(Lanes::Mask)));
    LineVector<typename Traits<S>::T> buf(job.y != nullptr ? kChunk : 0);
#pragma omp for schedule(static)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t cb = item % chan_blocks, rb = item / chan_blocks;
      const int64_t c0 = cb * chans, n = std::min(v.channels, c0 + chans) - c0;
      const int64_t o0 = rb * rows, o1 = std::min(v.outer, o0 + rows);
      for (int64_t o = o0; o < o1; ++o) {
        const S* base = job.x + o * v.s_outer + c0 * v.s_channel;
        const auto slab = [&](const auto& out) {
          if (one_read) {
            bitmap_slab<S, K, kTies, true>(ms, base, n, v.inner, table + c0, v.channels, maps.data(), windows, words,
                                           out);
          } else {
            bitmap_slab<S, K, kTies, false>(ms, base, n, v.inner, table + c0, v.channels, maps.data(), windows,
                                            words, out);
          }
        };
#if defined(NEP_OUTPUT_IN_FILL)
        if constexpr (std::is_same_v<S, float>) {
          if (in_fill) {
            float* y = job.y + o * job.yv.s_outer + c0 * job.yv.s_channel;
            with_piecewise(job.act.kind, [&](auto kind) {
              slab(ActivationInFill<decltype(kind)::value>{job.act, y, v.inner});
            });
            continue;
          }
        }
#endif
        slab(ActivationAfterBlock<S>{job, o, c0, buf.data()});
      }
    }
    tables.write_states(job.counts, v.outer * v.inner);
  }
}
#endif

}  // namespace
}  // namespace nepenthe
