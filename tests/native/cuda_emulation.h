// Runs csrc/cuda/count_cuda.cu's kernels on the CPU, so that their indexing, tails, reductions and launch plans
// are tested on machines without a GPU. Include this first, then count_cuda.cu, in a file compiled by nvcc as
// host code (tests/native/check_count_cuda.cu), with -DNEPENTHE_CUDA_EMULATION -DNEPENTHE_EMULATED_ARCH=900 (or
// 800: which packed compares the kernels use, as on that GPU).
//
// Each block runs as one fiber per CUDA thread, switched only where CUDA threads wait for each other:
// __syncthreads (the block) and count_cuda.cu's warp_sum (the warp; its shuffles are summed in one step). A fiber
// starts on its own stack through ucontext, then switches with GCC's __builtin_setjmp/__builtin_longjmp, which
// save only the frame, stack and resume pointers (swapcontext makes a system call per switch). Blocks run one
// after another, so atomics are plain adds, and "device" pointers are host pointers. A barrier that some threads
// of a block never reach (a divergent __syncthreads or warp sum) aborts with a message instead of hanging. The
// packed 16-bit compares run through cuda_fp16/cuda_bf16's host emulation, and the PTX comparisons through
// compare_ops.cuh's C++ forms; the real instructions are covered by tests/test_kernels_cuda_ptx.py and, on a GPU,
// by the gpu tests.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <ucontext.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

namespace nepenthe {
namespace emulation {

constexpr int kWarp = 32;
constexpr size_t kStackBytes = 256 * 1024;

enum class Wait { kNone, kBlock, kWarp, kDone };

struct Fiber {
  ucontext_t start;  // first entry onto the fiber's stack
  void* resume[5];   // where it waits (a __builtin_setjmp buffer)
  std::vector<char> stack;
  Wait wait = Wait::kNone;
  bool started = false;
};

// The block being run: its threads' fibers and what each waits for.
struct Block {
  uint3 block_idx{}, block_dim{}, grid_dim{};
  int threads = 0, current = 0;
  std::vector<Fiber> fibers;
  void* scheduler[5];
  std::function<void()> body;
  std::vector<uint32_t> lanes[2];  // warp_sum's slots, one per thread, for alternate sums
  std::vector<int> sums;           // warp sums each thread has made
};

inline Block& block() {
  static Block b;
  return b;
}

// __builtin_longjmp may not be called from the function that calls __builtin_setjmp.
__attribute__((noinline)) inline void jump(void** buffer) { __builtin_longjmp(buffer, 1); }

inline void fiber_entry() {
  Block& b = block();
  b.body();
  b.fibers[b.current].wait = Wait::kDone;
  jump(b.scheduler);
}

__attribute__((noinline)) inline void wait_for(Wait what) {
  Block& b = block();
  Fiber& f = b.fibers[b.current];
  f.wait = what;
  if (__builtin_setjmp(f.resume) == 0) jump(b.scheduler);
}

// Runs thread t until it waits or finishes.
__attribute__((noinline)) inline void resume(int t) {
  Block& b = block();
  Fiber& f = b.fibers[t];
  b.current = t;
  if (__builtin_setjmp(b.scheduler) != 0) return;
  if (f.started) jump(f.resume);
  f.started = true;
  setcontext(&f.start);
}

// Runs every thread until all have finished, releasing a barrier once every thread it concerns waits there.
inline void run_block() {
  Block& b = block();
  for (int t = 0; t < b.threads; ++t) {
    Fiber& f = b.fibers[t];
    f.wait = Wait::kNone;
    f.started = false;
    b.sums[t] = 0;
    getcontext(&f.start);
    f.start.uc_stack.ss_sp = f.stack.data();
    f.start.uc_stack.ss_size = f.stack.size();
    f.start.uc_link = nullptr;
    makecontext(&f.start, fiber_entry, 0);
  }
  for (;;) {
    bool ran = false;
    for (int t = 0; t < b.threads; ++t) {
      if (b.fibers[t].wait != Wait::kNone) continue;
      resume(t);
      ran = true;
    }
    if (ran) continue;
    int done = 0, at_block = 0;
    for (const Fiber& f : b.fibers) {
      done += f.wait == Wait::kDone;
      at_block += f.wait == Wait::kBlock;
    }
    if (done == b.threads) return;
    bool released = false;
    for (int w0 = 0; w0 < b.threads; w0 += kWarp) {  // a warp whose threads all wait at a warp sum
      const int w1 = std::min(b.threads, w0 + kWarp);
      bool all = true;
      for (int t = w0; t < w1; ++t) all = all && b.fibers[t].wait == Wait::kWarp;
      if (all) {
        for (int t = w0; t < w1; ++t) {
          if (b.fibers[t].wait == Wait::kWarp) b.fibers[t].wait = Wait::kNone;
        }
        released = true;
      }
    }
    if (released) continue;
    if (at_block == b.threads) {
      for (Fiber& f : b.fibers) f.wait = Wait::kNone;
      continue;
    }
    std::fprintf(stderr, "cuda_emulation: block %u deadlocked: of %d threads, %d wait at __syncthreads, %d have "
                 "finished, the rest wait at a warp sum their warp does not complete\n",
                 b.block_idx.x, b.threads, at_block, done);
    std::abort();
  }
}

template <class... Params, class... Args>
void launch(void (*kernel)(Params...), int64_t blocks, int threads, const Args&... args) {
  Block& b = block();
  if (blocks < 1 || threads < 1 || threads > 1024) {
    std::fprintf(stderr, "cuda_emulation: invalid launch of %lld blocks of %d threads\n", (long long)blocks, threads);
    std::abort();
  }
  b.threads = threads;
  b.fibers.resize(threads);
  b.sums.assign(threads, 0);
  for (Fiber& f : b.fibers) f.stack.resize(kStackBytes);
  b.lanes[0].assign(threads, 0);
  b.lanes[1].assign(threads, 0);
  b.block_dim = make_uint3(threads, 1, 1);
  b.grid_dim = make_uint3(static_cast<unsigned>(blocks), 1, 1);
  b.body = [&] { kernel(args...); };
  for (int64_t i = 0; i < blocks; ++i) {
    b.block_idx = make_uint3(static_cast<unsigned>(i), 1, 1);
    run_block();
  }
}

inline void sync_threads() { wait_for(Wait::kBlock); }

// count_cuda.cu's warp_sum: every lane's value summed, after all the warp's lanes have given theirs. Alternate
// sums use alternate slots, so one wait suffices: a lane that has summed once and writes its next value cannot
// overwrite what a slower lane still has to read.
inline uint32_t warp_sum(uint32_t v) {
  Block& b = block();
  const int t = b.current, w0 = t - t % kWarp, w1 = std::min(b.threads, w0 + kWarp);
  auto& slots = b.lanes[b.sums[t]++ & 1];
  slots[t] = v;
  wait_for(Wait::kWarp);
  uint32_t sum = 0;
  for (int i = w0; i < w1; ++i) sum += slots[i];
  return sum;
}

template <class T, class U>
T atomic_add(T* p, U v) {
  const T old = *p;
  *p = old + static_cast<T>(v);
  return old;
}

inline float uint_as_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t float_as_uint(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline double hiloint2double(int hi, int lo) {
  const uint64_t bits = (static_cast<uint64_t>(static_cast<uint32_t>(hi)) << 32) | static_cast<uint32_t>(lo);
  double d;
  std::memcpy(&d, &bits, 8);
  return d;
}
inline int double2loint(double d) {
  uint64_t bits;
  std::memcpy(&bits, &d, 8);
  return static_cast<int>(static_cast<uint32_t>(bits));
}
inline int double2hiint(double d) {
  uint64_t bits;
  std::memcpy(&bits, &d, 8);
  return static_cast<int>(static_cast<uint32_t>(bits >> 32));
}

// The device queries the launch plans make: a small device (2 SMs, 3 resident blocks each), so that grids hold
// several blocks and each block walks several work items, as on a GPU.
inline cudaError_t device_attribute(int* value, cudaDeviceAttr, int) {
  *value = 2;
  return cudaSuccess;
}
template <class K>
cudaError_t occupancy(int* blocks, K, int, size_t) {
  *blocks = 3;
  return cudaSuccess;
}
inline cudaError_t get_device(int* dev) {
  *dev = 0;
  return cudaSuccess;
}
inline cudaError_t last_error() { return cudaSuccess; }

}  // namespace emulation
}  // namespace nepenthe

// Device code becomes host code: kernels and device functions are plain functions, shared memory is static
// (blocks run one after another, and each kernel initialises its shared memory).
#undef __global__
#define __global__
#undef __device__
#define __device__ __host__
#undef __shared__
#define __shared__ static
#undef __launch_bounds__
#define __launch_bounds__(...)
#define threadIdx (::nepenthe::emulation::thread_index())
#define blockIdx (::nepenthe::emulation::block().block_idx)
#define blockDim (::nepenthe::emulation::block().block_dim)
#define gridDim (::nepenthe::emulation::block().grid_dim)
#define __syncthreads() ::nepenthe::emulation::sync_threads()
#define atomicAdd ::nepenthe::emulation::atomic_add
#define __ldg(p) (*(p))
#define __stwb(p, v) (*(p) = (v))
#define __uint_as_float ::nepenthe::emulation::uint_as_float
#define __float_as_uint ::nepenthe::emulation::float_as_uint
#define __hiloint2double ::nepenthe::emulation::hiloint2double
#define __double2loint ::nepenthe::emulation::double2loint
#define __double2hiint ::nepenthe::emulation::double2hiint
#define cudaDeviceGetAttribute ::nepenthe::emulation::device_attribute
#define cudaOccupancyMaxActiveBlocksPerMultiprocessor ::nepenthe::emulation::occupancy
#define cudaGetDevice ::nepenthe::emulation::get_device
#define cudaGetLastError ::nepenthe::emulation::last_error

namespace nepenthe {
namespace emulation {
inline uint3 thread_index() { return make_uint3(static_cast<unsigned>(block().current), 0, 0); }
}  // namespace emulation
}  // namespace nepenthe
