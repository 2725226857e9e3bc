// Python binding of the CPU kernels: plain integers (data pointers, sizes, strides), no torch types.
#include <pybind11/pybind11.h>

#include <cstring>

#include "../common/python_request.h"
#include "count_cpu.h"

namespace py = pybind11;

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "nepenthe C++/OpenMP kernels: exact per-channel activation-state counts over strided tensors";
  m.def(
      "count",
      [](uintptr_t x, int dtype, py::handle view, py::handle greater, py::handle tie, bool ignore_ties,
         uintptr_t counts, int threads, bool clear_counts) {
        nepenthe::CountRequest r = nepenthe::request_from(x, dtype, view, greater, tie, ignore_ties, counts);
        r.threads = threads;
        py::gil_scoped_release release;
        // Fresh counts come from torch.empty: clearing them here costs less than torch.zeros's own call.
        const auto entries = static_cast<size_t>(r.view.channels * (r.num_thresholds + 1));
        if (clear_counts) std::memset(r.counts, 0, sizeof(int64_t) * entries);
        nepenthe::count_cpu(r);
      },
      py::arg("x"), py::arg("dtype"), py::arg("view"), py::arg("greater"), py::arg("tie"), py::arg("ignore_ties"),
      py::arg("counts"), py::arg("threads"), py::arg("clear_counts") = false);
  m.def(
      "fused",
      [](uintptr_t x, int dtype, py::handle view, py::handle greater, py::handle tie, bool ignore_ties,
         uintptr_t counts, int threads, uintptr_t y, py::handle y_view, int kind, double p0, double p1) {
        nepenthe::CountRequest r = nepenthe::request_from(x, dtype, view, greater, tie, ignore_ties, counts);
        r.threads = threads;
        nepenthe::set_fused(r, y, y_view, kind, p0, p1);
        py::gil_scoped_release release;
        nepenthe::count_cpu(r);
      },
      py::arg("x"), py::arg("dtype"), py::arg("view"), py::arg("greater"), py::arg("tie"), py::arg("ignore_ties"),
      py::arg("counts"), py::arg("threads"), py::arg("y"), py::arg("y_view"), py::arg("kind"), py::arg("p0"),
      py::arg("p1"));
}
