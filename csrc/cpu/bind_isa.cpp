// Python binding of the CPU kernels' instruction-set check (isa.h): nepenthe._cpu_isa, imported before
// nepenthe._cpu. Compiled for the baseline x86-64, like isa_check.cpp.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "isa.h"

namespace py = pybind11;

PYBIND11_MODULE(_cpu_isa, m) {
  m.doc() = "the instruction-set extensions nepenthe._cpu was built for, and which of them this CPU lacks";
  m.attr("build_arch") = py::str(nepenthe::kBuildArch);
  m.attr("build_isa") = py::str(nepenthe::kBuildIsa);
  m.def("missing_isa", &nepenthe::missing_isa,
        "The extensions in build_isa that this CPU does not support (empty: nepenthe._cpu can run here).");
}
