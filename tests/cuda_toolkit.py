"""Where the tests find the CUDA toolkit's nvcc: as setup.py does, CUDA_HOME, CUDA_PATH, /usr/local/cuda, then PATH."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def find_nvcc() -> str | None:
    """Path of nvcc, or None where no CUDA toolkit is installed."""
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")
