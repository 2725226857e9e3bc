// Standalone check of the CPU kernels (csrc/cpu/count_cpu.cpp) against a scalar reference, for targets where the
// Python package cannot run here (an Arm build under qemu-user: tests/test_kernels_cpu_arm.py). Every case
// counts random values (with NaN, infinities, signed zeros, denormals and values equal to the thresholds) in
// several layouts, dtypes and threshold sets, and compares with a per-value classification in double precision
// (count_cases.h), and the fused activations with their output compared bit for bit. Prints one line per mismatch
// and "checked N cases"; exits 1 on any mismatch.
#include <cstdio>
#include <random>
#include <utility>
#include <vector>

#include "count_cases.h"
#include "count_cpu.h"

int main() {
  using nepenthe_check::Case;
  std::mt19937 gen(12345);
  const std::vector<std::vector<double>> sets = {{0.0}, {0.0, 6.0}, {-1.0, 0.5}, {-2.5, -1.0, -0.125, 0.0, 0.5, 1.0, 3.0}};
  const int64_t shapes[][3] = {{3, 300, 49}, {2, 24, 1763}, {2, 70, 81}, {4, 8, 9}, {1, 1, 5}, {5, 40, 300}, {2, 96, 130},
                               {2, 19, 255}, {2, 11, 1000}};
  const std::vector<std::pair<nepenthe::ActivationArgs, std::vector<double>>> fused = {
      {{nepenthe::kRelu, 0.0, 0.0}, {0.0}},
      {{nepenthe::kHardtanh, 0.0, 6.0}, {0.0, 6.0}},
      {{nepenthe::kHardtanh, -0.9, 2.9}, {-0.9, 2.9}},
      {{nepenthe::kLeakyRelu, 0.01, 0.0}, {0.0}}};
  int cases = 0, failures = 0;
  for (int dtype = 0; dtype < 4; ++dtype) {
    for (const auto& s : shapes) {
      for (int layout = 0; layout < 3; ++layout) {
        for (const auto& th : sets) {
          for (bool ties : {false, true}) {
            const Case k{dtype, s[0], s[1], s[2], layout, th, ties};
            failures += !nepenthe_check::check_case(k, gen, nepenthe::count_cpu, false);
            ++cases;
          }
        }
        // Fused relu, relu6, hardtanh(-0.9, 2.9) (bounds float16 and bfloat16 round up) and leaky_relu(0.01).
        for (const auto& [act, th] : fused) {
          failures += !nepenthe_check::check_case(Case{dtype, s[0], s[1], s[2], layout, th, false, act}, gen,
                                                  nepenthe::count_cpu, false);
          ++cases;
        }
      }
    }
  }
  std::printf("checked %d cases, %d mismatched\n", cases, failures);
  return failures == 0 ? 0 : 1;
}
