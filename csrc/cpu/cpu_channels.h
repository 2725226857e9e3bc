// The channel path (run_channels): channel stride 1 (channels_last, token tensors), counted across each
// position's channel vector, one channel per SIMD lane, in register tiles (sweep_tile), or in word lanes
// (cpu_word_lanes.h) and byte lanes (cpu_byte_lanes.h) where those apply.
//
// Internal to count_cpu.cpp, the one translation unit of the CPU kernels: include it only there (everything here
// is in an anonymous namespace).
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <type_traits>
#include <vector>

#include "../common/count_args.h"
#include "cpu_bitmaps.h"
#include "cpu_byte_lanes.h"
#include "cpu_byte_lanes_avx2.h"
#include "cpu_counter.h"
#include "cpu_fused_output.h"
#include "cpu_job.h"
#include "cpu_scratch.h"
#include "cpu_simd.h"
#include "cpu_storage.h"
#include "cpu_thread_tables.h"
#include "cpu_tuning.h"
#include "cpu_word_lanes.h"
#include "cpu_words.h"

namespace nepenthe {
namespace {

// Adds R vectors of channels over positions [q0, q1) into the lane counters slots[vi..vi+R) (see run_channels).
template <int R, class S, class Ctr>
inline void sweep_tile(Ctr* ctr, const S* first, int64_t stride, int64_t q0, int64_t q1, typename Ctr::I* slots,
                       int64_t nslots, int64_t vi) {
  const int64_t ahead = rows_ahead(stride, sizeof(S), kPrefetchBytes);
  for (int64_t q = q0; q < q1; ++q) {
    const S* row = first + q * stride;
    if constexpr (!Ctr::kPrefetch && kVecBytes == 32 && !std::is_same_v<S, double>) {
      // AVX2, from the caches: the next tile's lines of this row, which it reads after this tile's block. The
      // tiles' short strided reads otherwise wait on L2 and L3 (ab.sh, channels_last 7x7 float32 maps: 512
      // channels 8% faster, 1280 channels 18%).
      constexpr int kTileBytes = R * Ctr::W * static_cast<int>(sizeof(S));
      for (int b = 0; b < kTileBytes; b += 64) prefetch_line(reinterpret_cast<const char*>(row + R * Ctr::W) + b);
    }
    for (int r = 0; r < R; ++r) {
      if constexpr (Ctr::kPrefetch && !std::is_same_v<S, double>) {  // kPrefetchBytes ahead
        prefetch_line(reinterpret_cast<const char*>(row + r * Ctr::W + ahead));
      }
      ctr[r].add_at(row + r * Ctr::W);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < Ctr::kAcc; ++j) slots[j * nslots + vi + r] += ctr[r].total(j);
    ctr[r].clear();
  }
}

// sweep_tile with m < R vectors (m known only at run time).
template <int M, class S, class Ctr>
inline void sweep_narrow(int m, Ctr* ctr, const S* first, int64_t stride, int64_t q0, int64_t q1,
                         typename Ctr::I* slots, int64_t nslots, int64_t vi) {
  if constexpr (M >= 1) {
    if (m == M) {
      sweep_tile<M>(ctr, first, stride, q0, q1, slots, nslots, vi);
    } else {
      sweep_narrow<M - 1>(m, ctr, first, stride, q0, q1, slots, nslots, vi);
    }
  }
}

// Items as a multiple of the threads where blocks of at least kMinSplitPositions positions allow it: with 7 items
// on 2 threads, one thread counts 4 while the other waits after 3 (MobileNet-V2's 384x14x14 channels_last maps).
inline void split_evenly(ChannelPlan& p, const View& v, int threads) {
  if (threads <= 1) return;
  const int64_t per = threads / std::gcd(static_cast<int64_t>(threads), v.outer * p.chan_blocks);
  if (p.pos_blocks % per == 0) return;
  const int64_t positions = ceil_div(v.inner, ceil_div(p.pos_blocks, per) * per);
  if (positions < kMinSplitPositions) return;
  p.positions = positions;
  p.pos_blocks = ceil_div(v.inner, positions);
}

// Channel path: channel stride 1 (channels_last, (N, L, C)). Each lane of a vector counter is one channel. An
// item (a block of positions x up to kMaxItemChans channels) is read in L1-sized blocks of positions; within a
// block, tiles of R vectors of channels keep their counters in registers while they sweep its positions, then
// add them to per-item int32 lane counters, which become per-state counts once per item.
#if defined(__AVX512F__)
// sweep(emit), or in place (y is x) sweep(EmitAfter{emit}), which writes each block's output once it is counted.
template <class Sweep>
inline auto emitting(bool in_place, const Sweep& sweep) {
  return [in_place, &sweep](const auto& emit) {
    if (in_place) {
      sweep(EmitAfter<std::decay_t<decltype(emit)>>{emit});
    } else {
      sweep(emit);
    }
  };
}
#endif

// The fused output of channels [c, c + m) of outer index o at positions [qb, qe) (channel stride 1): one run where
// the positions' channels lie end to end in x and in y (then c is 0 and m every channel), else position by position.
template <class S, class T>
inline void write_positions(const Job<S>& job, int64_t o, int64_t c, int64_t qb, int64_t qe, int64_t m, T* buf) {
  if (m == job.v.s_inner && job.yv.s_inner == m && job.yv.s_channel == 1) {
    write_activation(job, o, c, qb, (qe - qb) * m, true, buf);
    return;
  }
  for (int64_t q = qb; q < qe; ++q) write_activation(job, o, c, q, m, true, buf);
}

template <class S, int K, bool kTies, bool kFromMemory>
void run_channels(const Job<S>& job) {
  using T = typename Traits<S>::T;
  using Ctr = Counter<T, K, kTies, kFromMemory>;
  using I = typename Ctr::I;
  using Lane = decltype(I{}[0] + 0);
  constexpr int W = Ctr::W;
  // Vectors per register tile. With AVX-512's 32 vector registers a tile can hold 18 int32 lane counters:
  // MobileNet-V2's 96 channels with two thresholds in one tile (16-bit storage 30% faster than tiles of 16
  // counters; float32 2-11%).
#if defined(__AVX512F__)
  constexpr int R = std::max(1, (sizeof(S) <= 4 ? 18 : 16) / Ctr::kAcc);
#else
  // 16 vector registers (AVX2, SSE2): from the caches, tiles leave two of them free (the threshold and the loaded
  // vector), so that GCC spills no counter: MobileNet-V2's last map (1280 channels, two thresholds) 10% faster with
  // tiles of 4 vectors than of 5. From memory, ResNet-18 layer1's 64 channels fit one tile of 16 / kAcc = 8 vectors
  // (2% faster than tiles of 7 + 1).
  constexpr int R = std::max(1, (kFromMemory ? 16 : 14) / Ctr::kAcc);
#endif
  const View& v = job.v;
  // A fused output laid out like x, and not x itself (Job::in_place): the lanes that write it as they read x
  // (fuse_words, fuse_groups) store at x's own offsets from y's item base.
  [[maybe_unused]] const bool y_like_x = job.y != nullptr && !job.in_place && job.yv.s_channel == 1 &&
                                         job.yv.s_inner == v.s_inner && job.yv.s_outer == v.s_outer;
  ChannelPlan p = plan_channels(v, kChanTarget, kMaxItemChans);
  // Few positions per item make the per-channel flush (a few hundred ns per 16 channels) rival the counting
  // when there are many channels: keep items long, yet split the positions evenly among the threads.
  const int64_t min_pos = std::min(kMinPositions, ceil_div(v.inner, std::max(1, job.threads)));
  if (p.positions < min_pos) {
    p.pos_blocks = ceil_div(v.inner, min_pos);
    p.positions = ceil_div(v.inner, p.pos_blocks);
  }
  split_evenly(p, v, job.threads);
  const int64_t block = clamp64(kL1Bytes / (p.chans * static_cast<int64_t>(sizeof(S))), 8, p.positions);
  const int64_t nslots = ceil_div(p.chans, W);
  // Many tiles per position (measured: 3 or more) re-read each block too often; counting each vector into the
  // per-item lane counters in L1 instead (a load and a store per counter) then costs less. AVX2 builds do so only
  // from memory, where tiles' short strided reads measured 1.5x slower (Swin-T's 384 channels). From the caches,
  // AVX2's 8-lane vectors make those loads and stores twice as many per value, and tiles measured 1.4-2.4x faster
  // (channels_last 7x7 maps of 512 and 1280 channels).
  // AVX-512 builds, float compute, from the caches: from two tiles on when whole groups of 64 channels take all
  // channels (byte lanes, below): ResNet-18 layer3's 256 channels 18% faster, MobileNet-V2's 192 10%. Not from
  // memory (two tiles 15% faster there), nor with channels left over for a tile (160 channels 1.5x slower).
  const bool bytes_from_two = kVecBytes == 64 && !kFromMemory && std::is_same_v<T, float> && p.chans % 64 == 0;
  const int64_t sweep_tiles = bytes_from_two ? 2 : 3;
  const bool row_sweep = (kVecBytes == 64 || kFromMemory) && ceil_div(p.chans / W, R) >= sweep_tiles;
#if defined(NEP_WORD_LANES)
  // float16/bfloat16 without ties, one or two thresholds, kWordLanes to kWordLanes * kWordTile<K> channels per
  // item (one tile): groups of kWordLanes channels in word lanes (word_sweep).
  constexpr bool kWords = sizeof(S) == 2 && !kTies && K <= 2;
  constexpr int64_t kTile = kWordTile<std::min(K, 2)>;  // word vectors per tile
  // More channels than one tile holds go tile after tile when the tensor stays in the caches. AVX2: channels_last
  // 7x7 maps of 512 and 1280 channels measured 1.3-1.6x faster than float tiles. AVX-512 (Zen 4), against the
  // byte lanes' float compute: 0.6-0.8 of their time on 7x7 to 28x28 maps of 192-1280 channels up to 14 MB; a
  // 19 MB map, which the L3 no longer held, took 1.03-1.29x as long (the tiles read each row once per tile).
  const bool word_tiles =
      !kFromMemory && (kVecBytes == 32 || v.numel() * static_cast<int64_t>(sizeof(S)) <= kWordTilesMaxBytes);
  const bool words = kWords && p.chans >= kWordLanes &&
                     (word_tiles || p.chans / kWordLanes <= kTile);
  // Fused relu and hardtanh with y laid out like x: word_sweep writes the output of its groups as it reads them,
  // in their own 16 bits (WordRowActivation); the channels left over are written after the item.
  // In place (y is x), each chunk once it is counted (WordEmitAfter).
  [[maybe_unused]] const bool fuse_words =
      words && (y_like_x || job.in_place) && (job.act.kind == kRelu || job.act.kind == kHardtanh);
#else
  [[maybe_unused]] constexpr bool kWords = false;
  [[maybe_unused]] const bool words = false;
#endif
#if defined(__AVX512F__)
  // Float compute with many channels: groups of 64 channels go through byte-lane counters (byte_sweep).
  constexpr bool kBytes = std::is_same_v<T, float>;
  const MaskSet<K, kTies> ms(job.th);
  const bool sign_zero = job.th.greater[0] == 0;  // threshold 0 is 0.0: byte_sweep counts it from signs
  const FloatWordMasks<K> word_masks(job.th);     // where usable, byte_sweep compares the others as words
#if defined(NEP_FLOAT_WORDS)
  // float32 without ties against thresholds that FloatWordMasks counts exactly (ReLU's 0, ReLU6's 0 and 6), whole
  // vectors of channels, one word tile: groups of 32 channels in word lanes (float_word_sweep). Exactly 64 channels
  // against 0.0 keep the byte lanes in registers, which prefetch (ResNet-18 layer1 from memory: 0.91-0.96 of the
  // word lanes' time).
  constexpr bool kFloatWords = std::is_same_v<S, float> && !kTies && K <= 2;
  const bool float_words = kFloatWords && word_masks.usable && p.chans % W == 0 &&
                           ceil_div(p.chans, 32) <= kFloatWordTile<std::min(K, 2)> &&
                           !(K == 1 && sign_zero && p.chans == 64);
#else
  const bool float_words = false;
#endif
  // Exactly 64 channels with threshold 0.0 (ResNet stage 1, ReLU): one group of byte lanes held in registers. With
  // channels left over (96), the extra tiles re-read the positions and it measured 10-30% slower than tiles.
  const bool bytes = kBytes && !words && !float_words && (row_sweep || (sign_zero && p.chans == 64));
  // Fused float32 piecewise-linear activations with y laid out like x: byte_sweep and float_word_sweep write the
  // output of their channels as they read them (RowActivation), and the channels left over are written after the
  // item, as any other fused item's. After the item, the output had been read back from L2 or beyond: the fused
  // call took as long as torch's activation and a count one after the other.
  // In place (y is x), they write each block's output once the block is counted, from the caches (EmitAfter; the
  // write had been after the item, from L2 or beyond: 1.03-1.19x a count and torch's in-place op on maps, now
  // 0.71-0.95 on channels_last maps of 32-1280 channels and 0.65-0.76 on tokens, Zen 4, two threads, two runs).
  [[maybe_unused]] const bool fuse_groups = std::is_same_v<S, float> && (bytes || float_words) &&
                                            (y_like_x || job.in_place) && is_piecewise(job.act.kind);
#elif defined(NEP_BYTE_LANES_AVX2)
  // Float compute from the caches, three groups of 32 channels or more, or exactly two: the groups go through
  // byte-lane counters (byte_sweep_avx2), the channels left over through tiles. With fewer groups each counter row
  // waits on its own store from one position to the next: 32 and 48 channels measured 1.35-1.68x slower than
  // tiles, 80 (two groups and a tile that reads the positions again) 1.06-1.10; 64 channels 0.93-0.98 of their
  // time, 96 to 576 channels 0.71-0.85 (ab.sh).
  constexpr bool kBytes = std::is_same_v<T, float> && !kFromMemory;
  const bool sign_zero = job.th.greater[0] == 0;  // threshold 0 is 0.0: counted from signs
  const bool bytes = kBytes && !words && (p.chans >= 96 || p.chans == 64);
#else
  const bool bytes = false;
#endif
  const bool block_writes = job.in_place && !kFromMemory;  // the tiles' output written after each block
  const int64_t items = p.items(v.outer);
  const bool parallel = job.threads > 1 && items > 1 && v.numel() >= kParallelMin;
  const int threads = parallel ? job.threads : 1;
  using Tables = ThreadTables<K, kTies>;
  static_assert(Tables::kAcc == Ctr::kAcc, "tables hold the counter's comparisons");
  const bool use_tables = Tables::fits(v.channels, threads);
  Tables tables(use_tables ? v.channels : 0, threads, /*by_comparison=*/true);
#pragma omp parallel num_threads(threads) if (parallel)
  {
    LineVector<T> buf(kChunk);
    std::vector<I> slots(static_cast<size_t>(Ctr::kAcc * nslots));
    int64_t* table = use_tables ? tables.mine() : nullptr;
    LineVector<uint8_t> byte_counters(bytes ? static_cast<size_t>(kVecBytes * Ctr::kAcc * (p.chans / kVecBytes)) : 0);
    Ctr ctr[R];
    for (int r = 0; r < R; ++r) ctr[r] = Ctr(job.th);
#if defined(NEP_WORD_LANES)
    const auto word_th = word_thresholds_if<kWords, S>(job.th);
    const int64_t word_groups = std::min(p.chans / kWordLanes, kTile);
    LineVector<uint8_t> word_counters(words ? sizeof(WordVec) * K * static_cast<size_t>(word_groups) : 0);
#endif
#if defined(NEP_FLOAT_WORDS)
    LineVector<uint8_t> float_word_counters(float_words ? sizeof(WordVec) * 12 : 0);  // >= K x kFloatWordTile<K>
#endif
#pragma omp for schedule(static)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t cb = item % p.chan_blocks;
      const int64_t pb = (item / p.chan_blocks) % p.pos_blocks;
      const int64_t o = item / (p.chan_blocks * p.pos_blocks);
      const int64_t c0 = cb * p.chans, n = std::min(v.channels, c0 + p.chans) - c0;
      const int64_t q0 = pb * p.positions, q1 = std::min(v.inner, q0 + p.positions);
      const int64_t full = n / W, tail = n - full * W;
      const S* base = job.x + o * v.s_outer + c0;
      std::fill(slots.begin(), slots.end(), I{});
      int64_t v0 = 0;       // vectors of channels before v0 are counted by word_sweep or byte_sweep
      int64_t written = 0;  // channels whose fused output the byte or word lanes wrote
#if defined(NEP_WORD_LANES)
      if constexpr (kWords) {
        if (words) {
          const WordThresholds& wt = word_th;
          const auto* first = reinterpret_cast<const uint16_t*>(base);
          const int64_t groups = n / kWordLanes;
          uint8_t* counters = word_counters.data();
          // In place, the output of the other activations (leaky_relu, GELU): positions in chunks of at most
          // kAfterChunkBytes, each written once all its groups are counted, from L2. After the item, from L3 or
          // beyond, float16 leaky_relu on ResNet-18 layer1 channels_last took 1.03-1.13x a count and torch's op;
          // per chunk, 16-bit leaky_relu and GELU took 0.76-1.04 of the time before (0.76-0.95 from 56x56 up). Out
          // of place the chunks measured 0.76-1.21 of the time after the item, slower on 576x14x14 and 96x112x112.
          const bool write_chunks = job.in_place && !fuse_words;
          const int64_t chunk = write_chunks ? after_chunk_positions(n * static_cast<int64_t>(sizeof(S))) : q1 - q0;
          for (int64_t qa = q0; qa < q1; qa += chunk) {
            const int64_t qz = std::min(q1, qa + chunk);
            // one tile of groups [g0, g0 + gs) at a time (several only in AVX2 builds, word_tiles)
            for (int64_t g0 = 0; g0 < groups; g0 += kTile) {
              const int64_t gs = std::min(groups - g0, kTile);
              auto exact = [&](int64_t qb, int64_t qe) {
                for (int64_t u = 2 * g0; u < 2 * (g0 + gs); ++u) {
                  sweep_tile<1>(ctr, base + u * W, v.s_inner, qb, qe, slots.data(), nslots, u);
                }
              };
              const uint16_t* tile = first + g0 * kWordLanes;
              I* tile_slots = slots.data() + 2 * g0;
              const auto sweep = [&](const auto& emit) {
                if (wt.key) {
                  word_sweep<K, true>(gs, wt, tile, v.s_inner, qa, qz, tile_slots, nslots, counters, exact, emit);
                } else {
                  word_sweep<K, false>(gs, wt, tile, v.s_inner, qa, qz, tile_slots, nslots, counters, exact, emit);
                }
              };
              if (fuse_words) {
                const WordRowActivation<S> write{job.y + o * job.yv.s_outer + c0 + g0 * kWordLanes,
                                                 WordActivation<S>(job.act)};
                if (job.in_place) {
                  sweep(WordEmitAfter<WordRowActivation<S>>{write});
                } else {
                  sweep(write);
                }
              } else {
                sweep(NoWordEmit{});
              }
            }
            if (write_chunks) write_positions(job, o, c0, qa, qz, groups * kWordLanes, buf.data());
          }
          v0 = 2 * groups;
          if (fuse_words || write_chunks) written = groups * kWordLanes;
        }
      }
#endif
#if defined(NEP_FLOAT_WORDS)
      if constexpr (kFloatWords) {
        if (float_words) {
          auto exact = [&](int64_t qb, int64_t qe) {
            for (int64_t u = 0; u < full; ++u) {
              sweep_tile<1>(ctr, base + u * W, v.s_inner, qb, qe, slots.data(), nslots, u);
            }
          };
          const auto sweep = [&](const auto& emit) {
            float_word_sweep<K>(word_masks, full, base, v.s_inner, q0, q1, slots.data(), nslots,
                                float_word_counters.data(), exact, emit);
          };
          if (fuse_groups) {
            with_row_activation(job.act, job.y + o * job.yv.s_outer + c0, emitting(job.in_place, sweep));
            written = full * W;
          } else {
            sweep(NoEmit{});
          }
          v0 = full;
        }
      }
#endif
#if defined(__AVX512F__)
      if constexpr (kBytes) {
        if (bytes) {
          constexpr bool kMayUseWords = std::is_same_v<S, float> && !kTies && K >= 2;
          const auto sweep = [&](const auto& emit) {
            if (kMayUseWords && sign_zero && word_masks.usable) {
              if constexpr (kMayUseWords) {
                byte_sweep<S, K, kTies, true, true>(ms, base, v.s_inner, q0, q1, n / 64, slots.data(), nslots,
                                                    byte_counters.data(), kFromMemory, word_masks, emit);
              }
            } else if (sign_zero) {
              byte_sweep<S, K, kTies, true>(ms, base, v.s_inner, q0, q1, n / 64, slots.data(), nslots,
                                            byte_counters.data(), kFromMemory, word_masks, emit);
            } else {
              byte_sweep<S, K, kTies, false>(ms, base, v.s_inner, q0, q1, n / 64, slots.data(), nslots,
                                             byte_counters.data(), kFromMemory, word_masks, emit);
            }
          };
          if constexpr (std::is_same_v<S, float>) {
            if (fuse_groups) {
              with_row_activation(job.act, job.y + o * job.yv.s_outer + c0, emitting(job.in_place, sweep));
              written = 64 * (n / 64);
            } else {
              sweep(NoEmit{});
            }
          } else {
            sweep(NoEmit{});
          }
          v0 = 4 * (n / 64);
        }
      }
#elif defined(NEP_BYTE_LANES_AVX2)
      if constexpr (kBytes) {
        if (bytes) {
          const int64_t groups = n / 32;
          // With a fused output (in place or not), the positions go in chunks of at most kAfterChunkBytes, each
          // written once it is counted, from L2: after the item, the output had been read back from L3 (channels_last
          // float32 maps in place: 1.04-1.31x a count and torch's in-place op; see cpu_backend.fused_in_place).
          const int64_t chunk =
              job.y != nullptr ? after_chunk_positions(n * static_cast<int64_t>(sizeof(S))) : q1 - q0;
          for (int64_t qb = q0; qb < q1; qb += chunk) {
            const int64_t qe = std::min(q1, qb + chunk);
            if (sign_zero) {
              byte_sweep_avx2<S, K, kTies, true>(ctr[0], base, v.s_inner, qb, qe, groups, slots.data(), nslots,
                                                 byte_counters.data());
            } else {
              byte_sweep_avx2<S, K, kTies, false>(ctr[0], base, v.s_inner, qb, qe, groups, slots.data(), nslots,
                                                  byte_counters.data());
            }
            if (job.y != nullptr) write_positions(job, o, c0, qb, qe, 32 * groups, buf.data());
          }
          v0 = 4 * groups;
          if (job.y != nullptr) written = 32 * groups;
        }
      }
#endif
      for (int64_t qb = q0; qb < q1 && (v0 < full || tail != 0); qb += block) {
        const int64_t qe = std::min(q1, qb + block);
        int64_t vi = v0;
        if (row_sweep) {
          for (int64_t q = qb; q < qe; ++q) {
            const S* row = base + q * v.s_inner;
            for (int64_t u = v0; u < full; ++u) {
              const typename Ctr::V x = load_vec<S>(row + u * W);
              I* sl = slots.data() + u;
              sl[0] -= (x == x);
              for (int k = 0; k < K; ++k) sl[(1 + k) * nslots] -= (x > ctr[0].g[k]);
              if constexpr (kTies) {
                for (int k = 0; k < K; ++k) sl[(1 + K + k) * nslots] -= (x == ctr[0].t[k]);
              }
            }
          }
          vi = full;
        }
        for (; vi + R <= full; vi += R) sweep_tile<R>(ctr, base + vi * W, v.s_inner, qb, qe, slots.data(), nslots, vi);
        if (vi < full) {
          sweep_narrow<R - 1>(static_cast<int>(full - vi), ctr, base + vi * W, v.s_inner, qb, qe, slots.data(),
                              nslots, vi);
        }
        if (tail != 0) {  // the last channels: an overlapping masked vector, or NaN-padded when n < W
          if (n >= W) {
            const I keep = lane_index<I>() >= static_cast<Lane>(W - tail);
            for (int64_t q = qb; q < qe; ++q) ctr[0].add(load_vec<S>(base + q * v.s_inner + n - W), keep);
          } else {
            for (int64_t q = qb; q < qe; ++q) ctr[0].add(load_partial<S>(base + q * v.s_inner, tail));
          }
          for (int j = 0; j < Ctr::kAcc; ++j) slots[j * nslots + full] += ctr[0].total(j);
          ctr[0].clear();
        }
        // In place, from the caches: the output of the channels that no lane wrote, once their block is counted
        // (the tiles count each value as they read it), from L1. After the item it is read back from L2 or beyond,
        // which measured faster out of place, and from memory (float64 channels_last: per block 1.07-1.40x the time
        // out of place, in place 1.06-1.12 from memory and 0.82-1.04 from the caches).
        if (block_writes) write_positions(job, o, c0 + written, qb, qe, n - written, buf.data());
      }
      if (block_writes && q0 < q1 && (v0 < full || tail != 0)) written = n;
      for (int64_t vi = 0; vi < nslots; ++vi) {
        // slot vi holds channels c0 + first + l for lanes l in [lo, W)
        const bool last_masked = vi == full && n >= W;
        const int64_t first = last_masked ? n - W : vi * W;
        const int lo = last_masked ? static_cast<int>(W - tail) : 0;
        const int hi = vi == full ? (last_masked ? W : static_cast<int>(tail)) : W;
        if (table != nullptr) {  // comparison j of channel c at table[j * channels + c]: unit-stride adds
          for (int j = 0; j < Ctr::kAcc; ++j) {
            int64_t* t = table + j * v.channels + c0 + first;
            const I& slot = slots[j * nslots + vi];
            for (int l = lo; l < hi; ++l) t[l] += slot[l];
          }
          continue;
        }
        for (int l = lo; l < hi; ++l) {
          int64_t sums[Ctr::kAcc];
          for (int j = 0; j < Ctr::kAcc; ++j) sums[j] = slots[j * nslots + vi][l];
          Ctr::add_states(job.counts + (c0 + first + l) * (K + 1), sums, job.th.ignore_ties);
        }
      }
      // The fused output of the channels no lane wrote, after the item (out of place: 16-bit leaky_relu and GELU,
      // float32 GELU, float64): one run where the positions' channels lie end to end, as in place. Against a write
      // per position, in one process (Zen 4): float16/bfloat16 leaky_relu on channels_last maps 0.69-0.97 of the
      // time, float32 GELU on tokens and maps 0.93-0.99, float64 0.77-1.07.
      if (job.y != nullptr && written < n) write_positions(job, o, c0 + written, q0, q1, n - written, buf.data());
    }
    if (use_tables) tables.write_states(job.counts);
  }
}

}  // namespace
}  // namespace nepenthe
