// Row path, float16/bfloat16 rows with one or two thresholds and no ties: compared in their own 16 bits
// (count_row_words).
//
// Internal to count_cpu.cpp, the one translation unit of the CPU kernels: include it only there (everything here
// is in an anonymous namespace).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cpu_simd.h"
#include "cpu_words.h"

namespace nepenthe {
namespace {

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

}  // namespace
}  // namespace nepenthe
