// Builds a CountRequest from the integers, floats and tuples the Python backends pass (shared by both bindings).
//
// The view and the thresholds come as Python tuples (or lists), read item by item here: pybind11's
// std::vector casters cost about 0.3 us more per call, a tenth of a small count's whole Python-side time.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "count_args.h"

namespace nepenthe {

// Reads up to `most` numbers of a tuple or list into out (as int64 or double); returns how many it holds.
// Throws invalid_argument naming `name` for anything else, or a value that is not a number of that kind.
template <class T>
inline size_t read_numbers(pybind11::handle seq, const char* name, T* out, size_t most) {
  PyObject* s = seq.ptr();
  const bool tuple = PyTuple_Check(s);
  if (!tuple && !PyList_Check(s)) throw std::invalid_argument(std::string(name) + " must be a tuple or list");
  const Py_ssize_t n = tuple ? PyTuple_GET_SIZE(s) : PyList_GET_SIZE(s);
  if (n < 0 || static_cast<size_t>(n) > most) {
    throw std::invalid_argument(std::string(name) + " has too many values (at most " + std::to_string(most) + ")");
  }
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* item = tuple ? PyTuple_GET_ITEM(s, i) : PyList_GET_ITEM(s, i);
    if constexpr (std::is_same_v<T, double>) {
      out[i] = PyFloat_AsDouble(item);
    } else {
      out[i] = PyLong_AsLongLong(item);  // an exact integer only: a float raises TypeError
    }
    if (PyErr_Occurred()) {
      PyErr_Clear();
      throw std::invalid_argument(std::string(name) + " must hold " +
                                  (std::is_same_v<T, double> ? "numbers" : "integers"));
    }
  }
  return static_cast<size_t>(n);
}

inline View view_from(pybind11::handle v, const char* name) {
  int64_t a[6];
  if (read_numbers(v, name, a, 6) != 6) {
    throw std::invalid_argument(std::string(name) + " must be (outer, C, inner, s_outer, s_channel, s_inner)");
  }
  return View{a[0], a[1], a[2], a[3], a[4], a[5]};
}

inline CountRequest request_from(uintptr_t x, int dtype, pybind11::handle view, pybind11::handle greater,
                                 pybind11::handle tie, bool ignore_ties, uintptr_t counts) {
  if (dtype < kFloat32 || dtype > kFloat64) throw std::invalid_argument("unknown dtype code");
  CountRequest r{};
  constexpr size_t kMost = static_cast<size_t>(kMaxThresholds);
  const size_t k = read_numbers(greater, "greater", r.greater, kMost);
  if (k == 0 || read_numbers(tie, "tie", r.tie, kMost) != k) {
    throw std::invalid_argument("need 1 to 7 thresholds and as many tie values");
  }
  r.x = reinterpret_cast<const void*>(x);
  r.dtype = dtype;
  r.view = view_from(view, "view");
  r.num_thresholds = static_cast<int>(k);
  r.ignore_ties = ignore_ties;
  r.counts = reinterpret_cast<int64_t*>(counts);
  r.y = nullptr;
  r.y_view = r.view;
  r.activation = {kNone, 0.0, 0.0};
  r.threads = 1;
  r.stream = 0;
  return r;
}

inline void set_fused(CountRequest& r, uintptr_t y, pybind11::handle y_view, int kind, double p0, double p1) {
  if (kind < kRelu || kind > kGeluTanh) throw std::invalid_argument("unknown activation code");
  r.y = reinterpret_cast<void*>(y);
  r.y_view = view_from(y_view, "y_view");
  r.activation = {kind, p0, p1};
}

}  // namespace nepenthe
