// Which x86 instruction-set extensions the CPU kernels were compiled for (NEPENTHE_CPU_ARCH, "native" by default),
// and which of those this CPU lacks: nepenthe._cpu_isa (bind_isa.cpp). A _cpu built on another machine would die
// of SIGILL here, on import or inside a kernel; the Python loader asks _cpu_isa first and refuses it instead,
// saying what is missing.
#pragma once

#include <string>
#include <vector>

namespace nepenthe {

// The -march the kernels were compiled with ("" for the compiler's default).
extern const char kBuildArch[];

// The extensions the kernels' compiler was allowed to use, as space-separated __builtin_cpu_supports names
// (build_isa.cpp, compiled with the kernels' -march). Empty off x86.
extern const char kBuildIsa[];

// The names in kBuildIsa that this CPU does not support (isa_check.cpp, compiled for the baseline x86-64, so it
// runs anywhere). A name the check does not know counts as missing.
std::vector<std::string> missing_isa();

}  // namespace nepenthe
