// C++/OpenMP counting and fused-activation kernels for CPU tensors (no libtorch: raw pointers and strides): the
// entry point, count_cpu, and the dispatch that picks a path by the view.
//
// Two fast layouts. Rows with inner stride 1 (contiguous NCHW) are counted along the row; channels with stride
// 1 (channels_last, token tensors) are counted across each position's channel vector, one channel per SIMD
// lane. Short contiguous rows (7x7 maps) take a short-row path: on AVX-512 and AVX2, comparison bitmaps with a
// popcount per row. Any other strides take the row path through a gather. docs/ARCHITECTURE.md lists which view
// takes which path, and which header holds it.
//
// The paths live in the cpu_*.h headers beside this file, internal to it: this is the kernels' one translation
// unit (the build, tests/test_kernels_cpu_arm.py and benchmarks/ab compile it by name). They are included in the
// order their code had when it was all in this file, so the compiler emits the same code; each includes what it
// needs, so any order compiles.
#include "count_cpu.h"

#include <algorithm>
#include <type_traits>

#include "cpu_tuning.h"
#include "cpu_storage.h"
#include "cpu_scratch.h"
#include "cpu_activation.h"
#include "cpu_simd.h"
#include "cpu_counter.h"
#include "cpu_thread_tables.h"
#include "cpu_job.h"
#include "cpu_fused_output.h"
#include "cpu_row_signs.h"
#include "cpu_words.h"
#include "cpu_row_words.h"
#include "cpu_rows.h"
#include "cpu_short_rows.h"
#include "cpu_bitmaps.h"
#include "cpu_short_row_bitmaps.h"
#include "cpu_byte_lanes.h"
#include "cpu_word_lanes.h"
#include "cpu_channels.h"
#include "cpu_activation_pass.h"

namespace nepenthe {
namespace {

// Calls f(ties, from_memory) with the job's ignore_ties and whether its tensor is read from memory (at least
// kMemoryBytes: the row and tile loops prefetch) as std::bool_constant types; float64 takes one variant.
template <class S, class F>
void with_flags(const Job<S>& job, F&& f) {
  using Yes = std::true_type;
  using No = std::false_type;
  if constexpr (!std::is_same_v<S, double>) {
    const View& v = job.v;
    const bool memory = v.numel() * static_cast<int64_t>(sizeof(S)) >= kMemoryBytes;
    if (job.th.ignore_ties) {
      memory ? f(Yes{}, Yes{}) : f(Yes{}, No{});
    } else {
      memory ? f(No{}, Yes{}) : f(No{}, No{});
    }
  } else {
    job.th.ignore_ties ? f(Yes{}, No{}) : f(No{}, No{});
  }
}

// Counts contiguous NCHW rows (inner stride 1) through bitmaps (cpu_short_row_bitmaps.h) where the build, the
// compute type, the row length and the table size allow, and for fused jobs where y's rows lie back to back like
// x's (each block's activation is written right after it is counted, from L1); returns whether it did.
template <class S, int K>
bool run_bitmaps(const Job<S>& job) {
#if defined(NEP_BITMAPS)
  if constexpr (std::is_same_v<typename Traits<S>::T, float>) {
    const View &v = job.v, &yv = job.yv;
    const bool y_like_x = job.y == nullptr || (yv.s_inner == 1 && yv.s_channel == v.inner);
    if (v.s_inner == 1 && v.inner <= kBitmapRows && v.s_channel == v.inner && y_like_x &&
        ThreadTables<K, true>::fits(v.channels, job.threads)) {
      job.th.ignore_ties ? run_short_rows_bitmap<S, K, true>(job) : run_short_rows_bitmap<S, K, false>(job);
      return true;
    }
  }
#endif
  (void)job;
  return false;
}

template <class S, int K>
void run_k(const Job<S>& job) {
  if constexpr (K <= kMaxThresholds) {
    if (job.th.k != K) {
      run_k<S, K + 1>(job);
    } else if (job.by_channel) {
      with_flags(job, [&](auto ties, auto memory) { run_channels<S, K, ties.value, memory.value>(job); });
    } else if (run_bitmaps<S, K>(job)) {
      return;
    } else if (job.y != nullptr && job.v.s_inner == 1 && job.v.inner <= kSmallInner) {
      // Other fused short rows: counted the count-only way, then the activation written in a second pass (the
      // per-row fused path costs more than both on 7x7 maps).
      Job<S> count_only = job;
      count_only.y = nullptr;
      run_k<S, K>(count_only);
      run_activation(job);
    } else if (job.v.s_inner == 1 && job.v.inner <= kSmallInner) {
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
             Act<T>(r.activation), std::max(1, r.threads), false, false};
  job.th.k = r.num_thresholds;
  job.th.ignore_ties = r.ignore_ties;
  for (int k = 0; k < r.num_thresholds; ++k) {
    job.th.greater[k] = static_cast<T>(r.greater[k]);
    job.th.tie[k] = static_cast<T>(r.tie[k]);
  }
  // A dimension of size 1 has no meaningful stride: reading it as stride 1 keeps the fast paths.
  if (job.v.inner == 1) job.v.s_inner = job.v.s_channel == 1 ? 0 : 1;
  job.by_channel = job.v.s_inner != 1 && job.v.s_channel == 1;
  job.in_place = job.y != nullptr && static_cast<const void*>(job.y) == static_cast<const void*>(job.x);
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
