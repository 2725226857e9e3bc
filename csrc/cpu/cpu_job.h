// A job as the paths read it (Job: the input and its view, the thresholds in compute precision, the fused output),
// and a strided run of its values gathered in compute precision (load_values).
//
// Internal to count_cpu.cpp, the one translation unit of the CPU kernels: include it only there (everything here
// is in an anonymous namespace).
#pragma once

#include <cstdint>
#include <cstring>

#include "../common/count_args.h"
#include "cpu_activation.h"
#include "cpu_simd.h"
#include "cpu_storage.h"

namespace nepenthe {
namespace {

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
  // y is x (an in-place fused call): the output is written only once its values are counted, never as they are
  // read, since a block or row that may hold NaN is read again to be counted exactly (the channel lanes write each
  // block once it is counted: EmitAfter).
  bool in_place;
};

}  // namespace
}  // namespace nepenthe
