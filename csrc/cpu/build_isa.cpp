// The instruction-set extensions this build of the CPU kernels may use (isa.h). Compiled with the kernels' -march,
// so the compiler's predefined macros say what it was allowed to emit; data only, no code.
#include "isa.h"

#ifndef NEPENTHE_CPU_ARCH_NAME
#define NEPENTHE_CPU_ARCH_NAME ""
#endif

namespace nepenthe {

const char kBuildArch[] = NEPENTHE_CPU_ARCH_NAME;

const char kBuildIsa[] = ""
#if defined(__SSE3__)
                         " sse3"
#endif
#if defined(__SSSE3__)
                         " ssse3"
#endif
#if defined(__SSE4_1__)
                         " sse4.1"
#endif
#if defined(__SSE4_2__)
                         " sse4.2"
#endif
#if defined(__POPCNT__)
                         " popcnt"
#endif
#if defined(__AVX__)
                         " avx"
#endif
#if defined(__AVX2__)
                         " avx2"
#endif
#if defined(__FMA__)
                         " fma"
#endif
#if defined(__F16C__)
                         " f16c"
#endif
#if defined(__BMI__)
                         " bmi"
#endif
#if defined(__BMI2__)
                         " bmi2"
#endif
#if defined(__LZCNT__)
                         " lzcnt"
#endif
#if defined(__MOVBE__)
                         " movbe"
#endif
#if defined(__AVX512F__)
                         " avx512f"
#endif
#if defined(__AVX512VL__)
                         " avx512vl"
#endif
#if defined(__AVX512BW__)
                         " avx512bw"
#endif
#if defined(__AVX512DQ__)
                         " avx512dq"
#endif
#if defined(__AVX512CD__)
                         " avx512cd"
#endif
#if defined(__AVX512VBMI__)
                         " avx512vbmi"
#endif
#if defined(__AVX512VBMI2__)
                         " avx512vbmi2"
#endif
#if defined(__AVX512IFMA__)
                         " avx512ifma"
#endif
#if defined(__AVX512VPOPCNTDQ__)
                         " avx512vpopcntdq"
#endif
#if defined(__AVX512BITALG__)
                         " avx512bitalg"
#endif
#if defined(__AVX512VNNI__)
                         " avx512vnni"
#endif
#if defined(__AVX512BF16__)
                         " avx512bf16"
#endif
#if defined(__AVX512FP16__)
                         " avx512fp16"
#endif
#if defined(__AVXVNNI__)
                         " avxvnni"
#endif
#if defined(__GFNI__)
                         " gfni"
#endif
#if defined(__VAES__)
                         " vaes"
#endif
#if defined(__VPCLMULQDQ__)
                         " vpclmulqdq"
#endif
    ;

}  // namespace nepenthe
