// Per-thread scratch memory that starts on a cache line (LineVector, LineArray): counters, bitmaps and value
// buffers that the kernels read and write a vector at a time.
//
// A std::vector<uint8_t> or <float> starts wherever malloc puts it, 16 bytes into a line as often as not: each
// 64-byte counter row then spans two lines, and every load and store of it is split. byte_sweep's counter rows
// (channels_last float32, 1280 channels) took 8-10% longer on the thread whose buffer lay so (Zen 4).
//
// Internal to count_cpu.cpp, the one translation unit of the CPU kernels: include it only there (everything here
// is in an anonymous namespace).
#pragma once

#include <cstddef>
#include <memory>
#include <new>
#include <type_traits>
#include <vector>

namespace nepenthe {
namespace {

constexpr std::size_t kLineBytes = 64;

// std::allocator on kLineBytes boundaries (C++17 aligned operator new).
template <class T>
struct LineAllocator {
  using value_type = T;
  LineAllocator() = default;
  template <class U>
  explicit LineAllocator(const LineAllocator<U>&) {}
  T* allocate(std::size_t n) {
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{kLineBytes}));
  }
  void deallocate(T* p, std::size_t) { ::operator delete(p, std::align_val_t{kLineBytes}); }
  template <class U>
  bool operator==(const LineAllocator<U>&) const {
    return true;
  }
  template <class U>
  bool operator!=(const LineAllocator<U>&) const {
    return false;
  }
};

// A std::vector whose elements start on a cache line.
template <class T>
using LineVector = std::vector<T, LineAllocator<T>>;

// n uninitialized T (trivial types) from a cache line on, for memory its users clear themselves (ThreadTables).
template <class T>
struct LineFree {
  void operator()(T* p) const { LineAllocator<T>().deallocate(p, 0); }
};

template <class T>
using LineArray = std::unique_ptr<T[], LineFree<T>>;

template <class T>
LineArray<T> line_array(std::size_t n) {
  static_assert(std::is_trivial_v<T>, "left uninitialized");
  return LineArray<T>(LineAllocator<T>().allocate(n));
}

}  // namespace
}  // namespace nepenthe
