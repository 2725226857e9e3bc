// This CPU's support for the extensions in kBuildIsa (isa.h). Compiled without the kernels' -march, so it runs on
// any x86-64 CPU, including one the kernels cannot run on.
#include <sstream>

#include "isa.h"

namespace nepenthe {

std::vector<std::string> missing_isa() {
  std::vector<std::string> missing;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  struct Known {
    const char* name;
    bool supported;
  };
  // __builtin_cpu_supports takes only string literals, hence one entry per name.
#define NEP_ISA(name) {name, __builtin_cpu_supports(name) != 0}
  const Known known[] = {
      NEP_ISA("sse3"),         NEP_ISA("ssse3"),           NEP_ISA("sse4.1"),       NEP_ISA("sse4.2"),
      NEP_ISA("popcnt"),       NEP_ISA("avx"),             NEP_ISA("avx2"),         NEP_ISA("fma"),
      NEP_ISA("f16c"),         NEP_ISA("bmi"),             NEP_ISA("bmi2"),         NEP_ISA("lzcnt"),
      NEP_ISA("movbe"),        NEP_ISA("avx512f"),         NEP_ISA("avx512vl"),     NEP_ISA("avx512bw"),
      NEP_ISA("avx512dq"),     NEP_ISA("avx512cd"),        NEP_ISA("avx512vbmi"),   NEP_ISA("avx512vbmi2"),
      NEP_ISA("avx512ifma"),   NEP_ISA("avx512vpopcntdq"), NEP_ISA("avx512bitalg"), NEP_ISA("avx512vnni"),
      NEP_ISA("avx512bf16"),   NEP_ISA("avx512fp16"),      NEP_ISA("avxvnni"),      NEP_ISA("gfni"),
      NEP_ISA("vaes"),         NEP_ISA("vpclmulqdq"),
  };
#undef NEP_ISA
  std::istringstream names(kBuildIsa);
  std::string name;
  while (names >> name) {
    bool supported = false;
    for (const Known& k : known) {
      if (name == k.name) supported = k.supported;
    }
    if (!supported) missing.push_back(name);
  }
#endif
  return missing;
}

}  // namespace nepenthe
