// The row path (run_rows): rows with inner stride 1 (contiguous NCHW) counted along the row, and any other strides
// through a gather. Rows that count_row_signs, count_row_words or FloatWordMasks::count_row can take skip the
// comparison counters.
//
// Internal to count_cpu.cpp, the one translation unit of the CPU kernels: include it only there (everything here
// is in an anonymous namespace).
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../common/count_args.h"
#include "cpu_counter.h"
#include "cpu_fused_output.h"
#include "cpu_job.h"
#include "cpu_packed_masks.h"
#include "cpu_row_signs.h"
#include "cpu_row_words.h"
#include "cpu_scratch.h"
#include "cpu_simd.h"
#include "cpu_storage.h"
#include "cpu_thread_tables.h"
#include "cpu_tuning.h"
#include "cpu_words.h"

namespace nepenthe {
namespace {

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
  const bool parallel = job.threads > 1 && items > 1 && v.numel() >= kParallelMin;
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
#if defined(NEP_FLOAT_WORDS)
  // float32 rows against thresholds that FloatWordMasks counts exactly (ReLU6's 0 and 6), 32 values per compare
  constexpr bool kFloatWords = std::is_same_v<S, float> && K >= 2 && !kTies;
  const auto float_words = packed_masks_if<S, K, kTies>(job.th);
  bool float_word_rows = false;
  if constexpr (kFloatWords) float_word_rows = float_words.usable && v.s_inner == 1;
#else
  constexpr bool kFloatWords = false;
  const bool float_word_rows = false;
#endif
  constexpr bool kQuick = kSigns || kWordRows || kFloatWords;  // some rows may skip the comparison counters
  // Fused float32 rows that count_row_signs or FloatWordMasks::count_row take, of a piecewise-linear activation:
  // the output is written during the count (RowActivation), a row read once. Counting a row and then activating it
  // from cache took about as long as torch's activation and a count one after the other (9.6 MB, ReLU6, one
  // thread: 0.69-0.81 ms against 0.41-0.50 + 0.19).
  bool fuse_rows = false;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<S, float> && (kSigns || kFloatWords)) {
    fuse_rows = job.y != nullptr && !job.in_place && (signs || float_word_rows) && job.yv.s_inner == 1 &&
                is_piecewise(job.act.kind);
  }
#endif
  // Whole rows of consecutive channels that lie back to back in x and in y (contiguous NCHW), not fused rows: the
  // fused output of an item's rows is then written as one run per outer index instead of one short run per row.
  const bool slabs = job.y != nullptr && !fuse_rows && p.inner == v.inner && v.s_inner == 1 &&
                     v.s_channel == v.inner && job.yv.s_inner == 1 && job.yv.s_channel == v.inner;
#pragma omp parallel num_threads(threads) if (parallel)
  {
    LineVector<T> buf(kChunk);
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
          // counted by count_row_signs (a NaN-free float32 row against threshold 0.0), count_row_words or
          // FloatWordMasks::count_row (a finite float32 row)
          bool quick = false;
#if defined(__AVX512F__)
          if constexpr (std::is_same_v<S, float> && (kSigns || kFloatWords)) {
            // count_row_signs or FloatWordMasks::count_row of this row, emit as theirs
            auto quick_row = [&](const auto& emit) {
#if defined(NEP_SIGN_ROWS)
              if constexpr (kSigns) {
                if (signs) return count_row_signs<Ctr::kPrefetch>(row, i1 - i0, quick_counts[0], quick_counts[1], emit);
              }
#endif
#if defined(NEP_FLOAT_WORDS)
              if constexpr (kFloatWords) {
                if (float_word_rows) return float_words.count_row(row, i1 - i0, quick_counts, emit);
              }
#endif
              return false;
            };
            if (fuse_rows) {
              float* y = job.y + o * job.yv.s_outer + c * job.yv.s_channel + i0;
              quick = with_row_activation(job.act, y, quick_row);
            } else {
              quick = quick_row(NoEmit{});
            }
          }
#elif defined(NEP_SIGN_ROWS)
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
          if (job.y != nullptr && !slabs && !fuse_rows) write_activation(job, o, c, i0, i1 - i0, false, buf.data());
        }
        if (table != nullptr) {
          counter.flush_into(table + c * Ctr::kAcc);
        } else {
          counter.flush_total(job.counts + c * (K + 1), job.th.ignore_ties);
        }
        if (kQuick && (signs || word_rows || float_word_rows)) {
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

}  // namespace
}  // namespace nepenthe
