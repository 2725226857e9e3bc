// Test cases for the standalone kernel checkers (check_count_cpu.cpp, check_count_cuda.cu): random values with
// NaN, infinities, signed zeros, denormals and values equal to the thresholds, stored as float32, float16,
// bfloat16 or float64 in one of several layouts, counted by a kernel through a CountRequest and compared with a
// per-value classification in double precision. Fused cases also compare the activation the kernel wrote with
// the activation computed here, bit for bit (any NaN matches any NaN).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "count_args.h"

namespace nepenthe_check {

using nepenthe::CountRequest;
using nepenthe::View;

// float32 -> float16 / bfloat16 bits (round to nearest even), and back to double.
inline uint16_t to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000;
  const uint32_t abs = x & 0x7fffffff;
  if (abs > 0x7f800000) return static_cast<uint16_t>(sign | 0x7e00);  // NaN
  if (abs >= 0x477ff000) return static_cast<uint16_t>(sign | 0x7c00);  // rounds to infinity
  if (abs < 0x38800000) {                                             // half denormal (or zero)
    const float m = std::fabs(f) * 16777216.0f;                       // units of 2^-24
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(m)));
  }
  const uint32_t r = abs + 0xfff + ((abs >> 13) & 1);  // round to nearest even at bit 13
  return static_cast<uint16_t>(sign | ((r - 0x38000000) >> 13));
}
inline double from_half(uint16_t h) {
  const int e = (h >> 10) & 0x1f, m = h & 0x3ff;
  const double s = (h & 0x8000) ? -1.0 : 1.0;
  if (e == 0x1f) return m ? NAN : s * INFINITY;
  if (e == 0) return s * std::ldexp(m, -24);
  return s * std::ldexp(1024 + m, e - 25);
}
inline uint16_t to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffff) > 0x7f800000) return static_cast<uint16_t>((x >> 16) | 0x40);
  return static_cast<uint16_t>((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}
inline double from_bf16(uint16_t b) {
  const uint32_t x = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

enum Layout : int {
  kRows = 0,          // NCHW: (n, c, h) with inner stride 1
  kChannelsLast = 1,  // (n, h, c) memory, read as (n, c, h) with channel stride 1
  kStrided = 2,       // NCHW read with inner stride 2 (every other value)
  kOffset = 3,        // NCHW starting one element into the allocation: rows that start off a 16-byte boundary
};

struct Case {
  int dtype;
  int64_t n, c, h;  // (n, c, h) values
  int layout;       // Layout
  std::vector<double> thresholds;
  bool ignore_ties;
  nepenthe::ActivationArgs activation = {nepenthe::kNone, 0.0, 0.0};  // fused when kind != kNone
};

// The activation of v as the kernels compute it (float32 for 16-bit and float32 storage, float64 for float64),
// before it is stored. clamp_to_bound: a value at or below relu's/hardtanh's lower bound becomes the bound (the
// CUDA kernels, like torch's CUDA kernels); otherwise only values below it do (the CPU kernels keep -0.0).
template <class T>
T activation(T x, const nepenthe::ActivationArgs& a, bool clamp_to_bound) {
  const T lo = static_cast<T>(a.p0), hi = static_cast<T>(a.p1), slope = static_cast<T>(a.p0);
  switch (a.kind) {
    case nepenthe::kRelu:
      return (clamp_to_bound ? x <= T(0) : x < T(0)) ? T(0) : x;
    case nepenthe::kHardtanh:
      return (clamp_to_bound ? x <= lo : x < lo) ? lo : (x > hi ? hi : x);
    case nepenthe::kLeakyRelu:
      return x > T(0) ? x : x * slope;
    default:
      return x;
  }
}

// The thresholds as nepenthe/kernels/thresholds.py hands them to a kernel: for inputs read as float32 (all but
// float64), `greater` is the largest float32 at or below t, and `tie` is t where float32 holds it, else NaN.
inline void kernel_thresholds(const std::vector<double>& t, int dtype, CountRequest& r) {
  r.num_thresholds = static_cast<int>(t.size());
  for (size_t i = 0; i < t.size(); ++i) {
    if (dtype == 3) {
      r.greater[i] = r.tie[i] = t[i];
      continue;
    }
    float f = static_cast<float>(t[i]);
    if (static_cast<double>(f) > t[i]) f = std::nextafter(f, -INFINITY);
    r.greater[i] = f;
    r.tie[i] = static_cast<double>(f) == t[i] ? t[i] : NAN;
  }
}

// Counts (and, for fused cases, activates) one case with count(r) and compares; returns false on a mismatch.
template <class CountFn>
bool check_case(const Case& k, std::mt19937& gen, CountFn count, bool clamp_to_bound) {
  const int64_t stride = k.layout == kStrided ? 2 : 1, offset0 = k.layout == kOffset ? 1 : 0;
  const int64_t total = k.n * k.c * k.h * stride + offset0;
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<float> f(total);
  for (auto& v : f) {
    const float r = u(gen);
    v = r < 0.02f ? NAN : r < 0.03f ? INFINITY : r < 0.04f ? -INFINITY : r < 0.06f ? -0.0f : r < 0.08f ? 1e-40f
      : r < 0.16f ? static_cast<float>(k.thresholds[gen() % k.thresholds.size()]) : normal(gen);
    if (r >= 0.995f) v = -NAN;
  }
  // storage and the values as stored
  const size_t elem = k.dtype == 0 ? 4 : k.dtype == 3 ? 8 : 2;
  std::vector<uint64_t> storage(total + 2);  // from malloc: 16-byte aligned, as torch's allocations
  uint8_t* data = reinterpret_cast<uint8_t*>(storage.data());
  std::vector<double> value(total);
  for (int64_t i = 0; i < total; ++i) {
    if (k.dtype == 0) {
      std::memcpy(data + 4 * i, &f[i], 4);
      value[i] = f[i];
    } else if (k.dtype == 3) {
      const double d = f[i];
      std::memcpy(data + 8 * i, &d, 8);
      value[i] = d;
    } else {
      const uint16_t b = k.dtype == 1 ? to_half(f[i]) : to_bf16(f[i]);
      std::memcpy(data + 2 * i, &b, 2);
      value[i] = k.dtype == 1 ? from_half(b) : from_bf16(b);
    }
  }
  const int nt = static_cast<int>(k.thresholds.size());
  std::vector<int64_t> counts(k.c * (nt + 1), 0), expect(k.c * (nt + 1), 0);
  // element offset of (o, ch, q) for each layout
  auto offset = [&](int64_t o, int64_t ch, int64_t q) -> int64_t {
    if (k.layout == kChannelsLast) return (o * k.h + q) * k.c + ch;
    return ((o * k.c + ch) * k.h + q) * stride + offset0;
  };
  for (int64_t o = 0; o < k.n; ++o) {
    for (int64_t ch = 0; ch < k.c; ++ch) {
      for (int64_t q = 0; q < k.h; ++q) {
        const double v = value[offset(o, ch, q)];
        if (std::isnan(v)) continue;
        bool tie = false;
        int state = 0;
        for (double t : k.thresholds) {
          state += v > t;
          tie = tie || v == t;
        }
        if (!(k.ignore_ties && tie)) ++expect[ch * (nt + 1) + state];
      }
    }
  }
  const bool fused = k.activation.kind != nepenthe::kNone;
  std::vector<uint64_t> y_storage(fused ? total + 2 : 0, 0);
  uint8_t* y = reinterpret_cast<uint8_t*>(y_storage.data());
  CountRequest r{};
  r.x = data + offset0 * elem;
  r.dtype = k.dtype;
  r.view = k.layout == kChannelsLast ? View{k.n, k.c, k.h, k.h * k.c, 1, k.c}
                                     : View{k.n, k.c, k.h, k.c * k.h * stride, k.h * stride, stride};
  kernel_thresholds(k.thresholds, k.dtype, r);
  r.ignore_ties = k.ignore_ties;
  r.counts = counts.data();
  r.y = fused ? y + offset0 * elem : nullptr;
  r.y_view = r.view;
  r.activation = k.activation;
  r.threads = 2;
  count(r);
  bool ok = counts == expect;
  int64_t wrong_outputs = 0;
  if (fused) {
    for (int64_t o = 0; o < k.n; ++o) {
      for (int64_t ch = 0; ch < k.c; ++ch) {
        for (int64_t q = 0; q < k.h; ++q) {
          const int64_t i = offset(o, ch, q);
          bool same;
          if (k.dtype == 3) {
            const double want = activation(value[i], k.activation, clamp_to_bound);
            double got;
            std::memcpy(&got, y + 8 * i, 8);
            same = (std::isnan(want) && std::isnan(got)) || std::memcmp(&want, &got, 8) == 0;
          } else {
            const float a = activation(static_cast<float>(value[i]), k.activation, clamp_to_bound);
            if (k.dtype == 0) {
              float got;
              std::memcpy(&got, y + 4 * i, 4);
              same = (std::isnan(a) && std::isnan(got)) || std::memcmp(&a, &got, 4) == 0;
            } else {
              const uint16_t want = k.dtype == 1 ? to_half(a) : to_bf16(a);
              uint16_t got;
              std::memcpy(&got, y + 2 * i, 2);
              const double g = k.dtype == 1 ? from_half(got) : from_bf16(got);
              same = (std::isnan(a) && std::isnan(g)) || want == got;
            }
          }
          wrong_outputs += !same;
        }
      }
    }
    ok = ok && wrong_outputs == 0;
  }
  if (!ok) {
    std::printf("MISMATCH dtype %d shape (%ld, %ld, %ld) layout %d thresholds %d ignore_ties %d activation %d: "
                "counts %s, %ld wrong outputs\n",
                k.dtype, static_cast<long>(k.n), static_cast<long>(k.c), static_cast<long>(k.h), k.layout, nt,
                k.ignore_ties, k.activation.kind, counts == expect ? "equal" : "differ",
                static_cast<long>(wrong_outputs));
  }
  return ok;
}

}  // namespace nepenthe_check
