// Standalone check of the CPU kernels (csrc/cpu/count_cpu.cpp) against a scalar reference, for targets where the
// Python package cannot run here (an Arm build under qemu-user: tests/test_kernels_cpu_cross.py). Every case
// counts random values (with NaN, infinities, signed zeros, denormals and values equal to the thresholds) in
// several layouts, dtypes and threshold sets, and compares with a per-value classification in double precision.
// Prints one line per mismatch and "checked N cases"; exits 1 on any mismatch.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "count_cpu.h"

namespace {

using nepenthe::CountRequest;
using nepenthe::View;

// float32 -> float16 / bfloat16 bits (round to nearest even), and back to double.
uint16_t to_half(float f) {
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
double from_half(uint16_t h) {
  const int e = (h >> 10) & 0x1f, m = h & 0x3ff;
  const double s = (h & 0x8000) ? -1.0 : 1.0;
  if (e == 0x1f) return m ? NAN : s * INFINITY;
  if (e == 0) return s * std::ldexp(m, -24);
  return s * std::ldexp(1024 + m, e - 25);
}
uint16_t to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffff) > 0x7f800000) return static_cast<uint16_t>((x >> 16) | 0x40);
  return static_cast<uint16_t>((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}
double from_bf16(uint16_t b) {
  const uint32_t x = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

struct Case {
  int dtype;
  int64_t n, c, h;     // (n, c, h) values
  int layout;          // 0 NCHW rows, 1 channels_last, 2 NCHW read with inner stride 2 (every other value)
  std::vector<double> thresholds;
  bool ignore_ties;
};

int failures = 0;

void check(const Case& k, std::mt19937& gen) {
  const int64_t stride = k.layout == 2 ? 2 : 1;
  const int64_t total = k.n * k.c * k.h * stride;
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
  std::vector<uint8_t> data(total * 8);
  std::vector<double> value(total);
  for (int64_t i = 0; i < total; ++i) {
    if (k.dtype == 0) {
      std::memcpy(&data[4 * i], &f[i], 4);
      value[i] = f[i];
    } else if (k.dtype == 3) {
      const double d = f[i];
      std::memcpy(&data[8 * i], &d, 8);
      value[i] = d;
    } else {
      const uint16_t b = k.dtype == 1 ? to_half(f[i]) : to_bf16(f[i]);
      std::memcpy(&data[2 * i], &b, 2);
      value[i] = k.dtype == 1 ? from_half(b) : from_bf16(b);
    }
  }
  const int nt = static_cast<int>(k.thresholds.size());
  std::vector<int64_t> counts(k.c * (nt + 1), 0), expect(k.c * (nt + 1), 0);
  // element offset of (o, ch, q) for each layout
  auto offset = [&](int64_t o, int64_t ch, int64_t q) -> int64_t {
    if (k.layout == 1) return (o * k.h + q) * k.c + ch;
    return ((o * k.c + ch) * k.h + q) * stride;
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
  CountRequest r{};
  r.x = data.data();
  r.dtype = k.dtype;
  r.view = k.layout == 1 ? View{k.n, k.c, k.h, k.h * k.c, 1, k.c}
                         : View{k.n, k.c, k.h, k.c * k.h * stride, k.h * stride, stride};
  r.num_thresholds = nt;
  for (int i = 0; i < nt; ++i) r.greater[i] = r.tie[i] = k.thresholds[i];
  r.ignore_ties = k.ignore_ties;
  r.counts = counts.data();
  r.y = nullptr;
  r.y_view = r.view;
  r.activation = {nepenthe::kNone, 0.0, 0.0};
  r.threads = 2;
  nepenthe::count_cpu(r);
  if (counts != expect) {
    ++failures;
    std::printf("MISMATCH dtype %d shape (%ld, %ld, %ld) layout %d thresholds %d ignore_ties %d\n", k.dtype,
                static_cast<long>(k.n), static_cast<long>(k.c), static_cast<long>(k.h), k.layout, nt, k.ignore_ties);
  }
}

}  // namespace

int main() {
  std::mt19937 gen(12345);
  const std::vector<std::vector<double>> sets = {{0.0}, {0.0, 6.0}, {-1.0, 0.5}, {-2.5, -1.0, -0.125, 0.0, 0.5, 1.0, 3.0}};
  const int64_t shapes[][3] = {{3, 300, 49}, {2, 24, 1763}, {2, 70, 81}, {4, 8, 9}, {1, 1, 5}, {5, 40, 300}, {2, 96, 130}};
  int cases = 0;
  for (int dtype = 0; dtype < 4; ++dtype) {
    for (const auto& s : shapes) {
      for (int layout = 0; layout < 3; ++layout) {
        for (const auto& th : sets) {
          for (bool ties : {false, true}) {
            check(Case{dtype, s[0], s[1], s[2], layout, th, ties}, gen);
            ++cases;
          }
        }
      }
    }
  }
  std::printf("checked %d cases, %d mismatched\n", cases, failures);
  return failures == 0 ? 0 : 1;
}
