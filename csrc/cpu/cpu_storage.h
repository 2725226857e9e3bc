// Storage types: float16 (Half) and bfloat16 (BF16) as stored, and Traits<S>, which widens a stored value to the
// type it is compared in (float32 for 16-bit storage) and rounds a result back for the fused output.
//
// Internal to count_cpu.cpp, the one translation unit of the CPU kernels: include it only there (everything here
// is in an anonymous namespace).
#pragma once

#include <cstdint>
#include <cstring>

namespace nepenthe {
namespace {

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

}  // namespace
}  // namespace nepenthe
