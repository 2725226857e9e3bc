// Host check of the CUDA kernels' 16-bit pair counting (csrc/cuda/compare_ops.cuh), without a GPU: compiled by
// nvcc as host code, where cuda_fp16/cuda_bf16 emulate the packed compares that the GPU runs as one instruction.
// It checks what a GPU could not tell apart from a wrong count anyway: the threshold rounding (pair_threshold),
// the packed counters and their decoding (at the largest count a lane may reach, 2^16 - 1), and which half is
// which. For float16 and bfloat16, every one of the 65536 bit patterns sits in both halves of a word, against
// thresholds that the format holds, that fall between two of its values, that lie beyond its range, and
// infinities. The oracle widens each value to double by hand and compares it with the float32 threshold.
// Prints one line per mismatch and "checked N cases, M mismatched"; exits 1 on any mismatch.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <type_traits>
#include <vector>

#include "compare_ops.cuh"
#include "count_cases.h"

namespace {

constexpr int kMaxNT = 2;
constexpr uint32_t kWordsPerDecode = 65535;  // a lane's count must stay below 2^16 until it is decoded

struct Counts {
  uint64_t valid[2] = {0, 0};       // [low half, high half]
  uint64_t gt[kMaxNT][2] = {{0, 0}, {0, 0}};
};

// Counts the words with count_pair, decoding every kWordsPerDecode words, as the kernels do once per work item.
template <class S, int NT>
Counts count_words(const std::vector<uint32_t>& words, const float* thresholds) {
  uint32_t pairs[NT];
  for (int k = 0; k < NT; ++k) pairs[k] = nepenthe::pair_threshold<S>(thresholds[k]);
  Counts c;
  uint32_t packed[NT + 1] = {};
  const auto decode = [&] {
    c.valid[0] += nepenthe::low_count(packed[0]);
    c.valid[1] += nepenthe::high_count(packed[0]);
    for (int k = 0; k < NT; ++k) {
      c.gt[k][0] += nepenthe::low_count(packed[1 + k]);
      c.gt[k][1] += nepenthe::high_count(packed[1 + k]);
    }
    for (uint32_t& p : packed) p = 0;
  };
  for (size_t i = 0; i < words.size(); ++i) {
    nepenthe::count_pair<S, NT>(words[i], pairs, packed);
    if ((i + 1) % kWordsPerDecode == 0) decode();
  }
  decode();
  return c;
}

template <int NT>
Counts oracle(const std::vector<uint32_t>& words, const float* thresholds, double (*widen)(uint16_t)) {
  Counts c;
  for (uint32_t w : words) {
    for (int half = 0; half < 2; ++half) {
      const double v = widen(static_cast<uint16_t>(half == 0 ? w & 0xffff : w >> 16));
      c.valid[half] += !std::isnan(v);
      for (int k = 0; k < NT; ++k) c.gt[k][half] += v > static_cast<double>(thresholds[k]);
    }
  }
  return c;
}

int mismatched = 0, cases = 0;

template <class S, int NT>
void check(const char* dtype, const std::vector<uint32_t>& words, const float* thresholds,
           double (*widen)(uint16_t)) {
  ++cases;
  const Counts got = count_words<S, NT>(words, thresholds), want = oracle<NT>(words, thresholds, widen);
  for (int half = 0; half < 2; ++half) {
    bool same = got.valid[half] == want.valid[half];
    for (int k = 0; k < NT; ++k) same = same && got.gt[k][half] == want.gt[k][half];
    if (!same) {
      ++mismatched;
      std::printf("MISMATCH %s NT=%d thresholds=%.9g,%.9g half=%d: valid %llu vs %llu, gt0 %llu vs %llu\n", dtype, NT,
                  thresholds[0], NT > 1 ? thresholds[1] : 0.0f, half, (unsigned long long)got.valid[half],
                  (unsigned long long)want.valid[half], (unsigned long long)got.gt[0][half],
                  (unsigned long long)want.gt[0][half]);
    }
  }
}

template <class S>
void check_dtype(const char* dtype, double (*widen)(uint16_t), const std::vector<float>& thresholds) {
  // Every pattern in the low half with a shuffled partner in the high half, then the same with the halves
  // swapped: 131072 words, so lanes are decoded at 65535 counts as well as at a remainder.
  std::mt19937 rng(12345);
  std::vector<uint32_t> partner(65536);
  for (uint32_t i = 0; i < 65536; ++i) partner[i] = i;
  std::shuffle(partner.begin(), partner.end(), rng);
  std::vector<uint32_t> words;
  for (uint32_t i = 0; i < 65536; ++i) words.push_back(i | (partner[i] << 16));
  for (uint32_t i = 0; i < 65536; ++i) words.push_back(partner[i] | (i << 16));
  // One lane true on every word, up to the largest count a lane may reach: positive ones against NaN.
  const uint16_t one = static_cast<uint16_t>(std::is_same_v<S, __half> ? 0x3c00 : 0x3f80);
  std::vector<uint32_t> ones(kWordsPerDecode, one | 0xffffu << 16);
  for (size_t a = 0; a < thresholds.size(); ++a) {
    const float t1[1] = {thresholds[a]};
    check<S, 1>(dtype, words, t1, widen);
    check<S, 1>(dtype, ones, t1, widen);
    for (size_t b = a + 1; b < thresholds.size(); ++b) {
      if (!(thresholds[a] < thresholds[b])) continue;
      const float t2[2] = {thresholds[a], thresholds[b]};
      check<S, 2>(dtype, words, t2, widen);
    }
  }
}

}  // namespace

int main() {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> thresholds = {
      -inf,           -1e30f,       -65504.0f, -1.0f,       -0.1f,     -1e-7f,     -0.0f,       0.0f,
      1e-45f,         5.9604645e-8f, 1e-7f,    6.1035156e-5f, 0.1f,    0.5f,       1.0f,        1.0009766f,
      3.0f,           6.0f,         65504.0f,  65519.0f,   65520.0f,  1e30f,      3.3895314e38f, inf};
  check_dtype<__half>("float16", nepenthe_check::from_half, thresholds);
  check_dtype<__nv_bfloat16>("bfloat16", nepenthe_check::from_bf16, thresholds);
  std::printf("checked %d cases, %d mismatched\n", cases, mismatched);
  return mismatched == 0 ? 0 : 1;
}
