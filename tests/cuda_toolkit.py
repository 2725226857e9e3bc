"""Where the tests find the CUDA toolkit's nvcc: as setup.py does, CUDA_HOME, CUDA_PATH, /usr/local/cuda, then PATH."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# nvcc options for the tests' host builds of CUDA code (the emulation, the pair checker): the host compiler's warnings
# are errors there. `#pragma unroll` is for device code; the emulation compiles device code for the host, where GCC
# ignores it with a warning.
HOST_WARNINGS = ["-Xcompiler=-Wall,-Wextra,-Werror,-Wno-unknown-pragmas"]


def find_nvcc() -> str | None:
    """Path of nvcc, or None where no CUDA toolkit is installed."""
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")
