// Python binding of the CPU kernels: plain integers (data pointers, sizes, strides), no torch types.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "count_cpu.h"

namespace py = pybind11;
using nepenthe::CountRequest;
using nepenthe::View;

namespace {

View make_view(const std::vector<int64_t>& v, const char* name) {
  if (v.size() != 6) throw std::invalid_argument(std::string(name) + " must be (outer, C, inner, s_outer, s_channel, s_inner)");
  return View{v[0], v[1], v[2], v[3], v[4], v[5]};
}

CountRequest make_request(uintptr_t x, int dtype, const std::vector<int64_t>& view, const std::vector<double>& greater,
                          const std::vector<double>& tie, bool ignore_ties, uintptr_t counts, int threads) {
  if (dtype < nepenthe::kFloat32 || dtype > nepenthe::kFloat64) throw std::invalid_argument("unknown dtype code");
  if (greater.empty() || greater.size() > nepenthe::kMaxThresholds || tie.size() != greater.size()) {
    throw std::invalid_argument("need 1 to 7 thresholds and as many tie values");
  }
  CountRequest r{};
  r.x = reinterpret_cast<const void*>(x);
  r.dtype = dtype;
  r.view = make_view(view, "view");
  r.num_thresholds = static_cast<int>(greater.size());
  for (size_t k = 0; k < greater.size(); ++k) {
    r.greater[k] = greater[k];
    r.tie[k] = tie[k];
  }
  r.ignore_ties = ignore_ties;
  r.counts = reinterpret_cast<int64_t*>(counts);
  r.y = nullptr;
  r.y_view = r.view;
  r.activation = {nepenthe::kNone, 0.0, 0.0};
  r.threads = threads;
  return r;
}

}  // namespace

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "nepenthe C++/OpenMP kernels: exact per-channel activation-state counts over strided tensors";
  m.def(
      "count",
      [](uintptr_t x, int dtype, const std::vector<int64_t>& view, const std::vector<double>& greater,
         const std::vector<double>& tie, bool ignore_ties, uintptr_t counts, int threads) {
        CountRequest r = make_request(x, dtype, view, greater, tie, ignore_ties, counts, threads);
        py::gil_scoped_release release;
        nepenthe::count_cpu(r);
      },
      py::arg("x"), py::arg("dtype"), py::arg("view"), py::arg("greater"), py::arg("tie"), py::arg("ignore_ties"),
      py::arg("counts"), py::arg("threads"));
  m.def(
      "fused",
      [](uintptr_t x, int dtype, const std::vector<int64_t>& view, const std::vector<double>& greater,
         const std::vector<double>& tie, bool ignore_ties, uintptr_t counts, int threads, uintptr_t y,
         const std::vector<int64_t>& y_view, int kind, double p0, double p1) {
        CountRequest r = make_request(x, dtype, view, greater, tie, ignore_ties, counts, threads);
        r.y = reinterpret_cast<void*>(y);
        r.y_view = make_view(y_view, "y_view");
        if (kind < nepenthe::kRelu || kind > nepenthe::kGeluTanh) throw std::invalid_argument("unknown activation code");
        r.activation = {kind, p0, p1};
        py::gil_scoped_release release;
        nepenthe::count_cpu(r);
      },
      py::arg("x"), py::arg("dtype"), py::arg("view"), py::arg("greater"), py::arg("tie"), py::arg("ignore_ties"),
      py::arg("counts"), py::arg("threads"), py::arg("y"), py::arg("y_view"), py::arg("kind"), py::arg("p0"),
      py::arg("p1"));
}
