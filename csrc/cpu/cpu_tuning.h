// Work sizes and limits of the CPU paths: how many elements a work item takes, what must stay in L1, and below
// what size threads cost more than they save.
//
// Internal to count_cpu.cpp, the one translation unit of the CPU kernels: include it only there (everything here
// is in an anonymous namespace).
#pragma once

#include <cstdint>

namespace nepenthe {
namespace {

constexpr int64_t kChunk = 2048;           // gather/activation buffer length: 8 KiB of float32, stays in L1
constexpr int64_t kItemTarget = 1 << 15;   // elements per work item (row path)
constexpr int64_t kMinRun = 1024;          // row path: elements of one channel per item, to amortize a flush
constexpr int64_t kChanTarget = 1 << 17;   // elements per work item (channel path)
constexpr int64_t kL1Bytes = 16 << 10;     // channel path: bytes of input re-read from L1 by successive tiles
constexpr int64_t kMaxItemChans = 2048;    // channels per item (channel path)
constexpr int64_t kParallelMin = 1 << 16;  // below this many elements, threads cost more than they save
constexpr int64_t kSmallInner = 256;       // short-row path: rows (H*W) up to this length
constexpr int64_t kTableBytes = 16 << 10;  // short-row path: per-channel lane-counter table, stays in L1
constexpr int64_t kSmallItem = 1 << 17;    // short-row path: elements per work item
constexpr int64_t kMinPositions = 1024;    // channel path: positions per item, to amortize the per-channel flush
constexpr int64_t kMinSplitPositions = 256;  // channel path: positions per item when splitting items evenly
// Channel path, fused output written once counted (in place: EmitAfter, WordEmitAfter; AVX2's byte lanes): the bytes
// of input a chunk of positions holds at most before its output is written, so that it is read again from L2.
constexpr int64_t kAfterChunkBytes = 128 << 10;
// The positions such a chunk holds when each position's values take row_bytes (at least one position).
constexpr int64_t after_chunk_positions(int64_t row_bytes) {
  return row_bytes >= kAfterChunkBytes ? 1 : kAfterChunkBytes / row_bytes;
}
constexpr int64_t kWordTilesMaxBytes = 16 << 20;  // channel path, AVX-512: 16-bit tensors up to this size in word tiles

}  // namespace
}  // namespace nepenthe
