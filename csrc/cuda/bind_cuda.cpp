// Python binding of the CUDA kernels: device pointers, sizes, strides and the stream handle as integers.
#include <pybind11/pybind11.h>

#include "../common/python_request.h"
#include "count_cuda.h"

namespace py = pybind11;

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "nepenthe CUDA kernels: exact per-channel activation-state counts over strided tensors";
  m.def(
      "count",
      [](uintptr_t x, int dtype, py::handle view, py::handle greater, py::handle tie, bool ignore_ties,
         uintptr_t counts, uintptr_t stream) {
        nepenthe::CountRequest r = nepenthe::request_from(x, dtype, view, greater, tie, ignore_ties, counts);
        r.stream = stream;
        nepenthe::count_cuda(r);
      },
      py::arg("x"), py::arg("dtype"), py::arg("view"), py::arg("greater"), py::arg("tie"), py::arg("ignore_ties"),
      py::arg("counts"), py::arg("stream"));
  m.def(
      "fused",
      [](uintptr_t x, int dtype, py::handle view, py::handle greater, py::handle tie, bool ignore_ties,
         uintptr_t counts, uintptr_t stream, uintptr_t y, py::handle y_view, int kind, double p0, double p1) {
        nepenthe::CountRequest r = nepenthe::request_from(x, dtype, view, greater, tie, ignore_ties, counts);
        r.stream = stream;
        nepenthe::set_fused(r, y, y_view, kind, p0, p1);
        nepenthe::count_cuda(r);
      },
      py::arg("x"), py::arg("dtype"), py::arg("view"), py::arg("greater"), py::arg("tie"), py::arg("ignore_ties"),
      py::arg("counts"), py::arg("stream"), py::arg("y"), py::arg("y_view"), py::arg("kind"), py::arg("p0"),
      py::arg("p1"));
  m.def("runtime_version", &nepenthe::cuda_runtime_version, "CUDA runtime version the module was built with");
  m.def("device_count", &nepenthe::cuda_device_count, "CUDA devices visible to the module (-1 on error)");
}
