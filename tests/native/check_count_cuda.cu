// The CUDA kernels (csrc/cuda/count_cuda.cu) run on the CPU through cuda_emulation.h and checked against a
// scalar reference (count_cases.h): counting and fused activations, every dtype, NCHW rows long and short (the
// vector path, rows split between work items, rows starting off a 16-byte boundary), channels_last with whole
// and partial 16-byte channel groups, a strided gather, threshold sets of one to seven (with and without ties).
// Compiled by nvcc as host code, with NEPENTHE_EMULATED_ARCH 800 or 900 (which 16-bit compares run in pairs).
// Arguments: the dtypes to check (0 float32, 1 float16, 2 bfloat16, 3 float64; all without arguments).
// Prints one line per mismatch and "checked N cases, M mismatched"; exits 1 on any mismatch.
#include "count_cuda_emulated.cu"
// (the emulation must come first)
#include "count_cases.h"

int main(int argc, char** argv) {
  using nepenthe_check::Case;
  using nepenthe_check::Layout;
  std::mt19937 gen(2024);
  const std::vector<std::vector<double>> sets = {{0.0}, {0.0, 6.0}, {0.1}, {-2.5, -1.0, -0.125, 0.0, 0.5, 1.0, 3.0}};
  struct Shape {
    int64_t n, c, h;
  };
  // (n, c, h): rows of 49, 9 and 255 (short-row path), 300 and 1763 (vector path, tails), 70001 (a row longer
  // than a work item), 300 rows of 41 per channel (a channel's rows split between work items); channels 8, 24, 96
  // and 2056 (whole 16-byte groups of 16-bit values), 70, 5 and 3 (not).
  const std::vector<Shape> shapes = {{3, 70, 49},   {4, 8, 9},   {2, 5, 255},  {5, 24, 300}, {2, 3, 1763},
                                     {1, 2, 70001}, {2, 96, 20}, {1, 2056, 3}, {300, 3, 41}};
  const int layouts[] = {nepenthe_check::kRows, nepenthe_check::kChannelsLast, nepenthe_check::kStrided,
                         nepenthe_check::kOffset};
  int cases = 0, failures = 0;
  const auto run = [&](const Case& k) {
    failures += !nepenthe_check::check_case(k, gen, nepenthe::count_cuda, true);
    ++cases;
  };
  std::vector<int> dtypes;
  for (int i = 1; i < argc; ++i) dtypes.push_back(std::atoi(argv[i]));
  if (dtypes.empty()) dtypes = {0, 1, 2, 3};
  for (int dtype : dtypes) {
    for (const Shape& s : shapes) {
      for (int layout : layouts) {
        for (const auto& th : sets) {
          for (bool ties : {false, true}) run(Case{dtype, s.n, s.c, s.h, layout, th, ties});
        }
        // Fused: relu, relu6, hardtanh(-0.9, 2.9) and leaky_relu(0.01), each with its own thresholds. float16 and
        // bfloat16 round both hardtanh bounds up to nearest, so rounding them down for the output would show.
        const nepenthe::ActivationArgs relu{nepenthe::kRelu, 0.0, 0.0}, relu6{nepenthe::kHardtanh, 0.0, 6.0},
            hardtanh{nepenthe::kHardtanh, -0.9, 2.9}, leaky{nepenthe::kLeakyRelu, 0.01, 0.0};
        run(Case{dtype, s.n, s.c, s.h, layout, {0.0}, false, relu});
        run(Case{dtype, s.n, s.c, s.h, layout, {0.0, 6.0}, true, relu6});  // ties: thresholds read at run time
        run(Case{dtype, s.n, s.c, s.h, layout, {-0.9, 2.9}, false, hardtanh});
        run(Case{dtype, s.n, s.c, s.h, layout, {0.0}, false, leaky});
      }
    }
  }
  std::printf("checked %d cases, %d mismatched\n", cases, failures);
  return failures == 0 ? 0 : 1;
}
