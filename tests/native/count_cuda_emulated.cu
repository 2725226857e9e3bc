// csrc/cuda/count_cuda.cu compiled as host code through cuda_emulation.h (see there): the emulated kernels, for
// the checker (check_count_cuda.cu) and for the Python extension the tests build (tests/cuda_emulated.py).
#include "cuda_emulation.h"
// (the emulation must come first)
#include "count_cuda.cu"
