// The activation-only pass (run_activation): a job's fused output written without counting, after a count-only
// pass, for short rows whose fused path would cost more than both passes.
//
// Internal to count_cpu.cpp, the one translation unit of the CPU kernels: include it only there (everything here
// is in an anonymous namespace).
#pragma once

#include <algorithm>
#include <cstdint>

#include "../common/count_args.h"
#include "cpu_fused_output.h"
#include "cpu_job.h"
#include "cpu_scratch.h"
#include "cpu_storage.h"
#include "cpu_tuning.h"

namespace nepenthe {
namespace {

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
  const bool parallel = job.threads > 1 && items > 1 && v.numel() >= kParallelMin;
#pragma omp parallel num_threads(job.threads) if (parallel)
  {
    LineVector<T> buf(kChunk);
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

}  // namespace
}  // namespace nepenthe
