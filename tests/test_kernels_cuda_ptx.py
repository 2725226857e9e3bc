"""The CUDA counting kernels, compiled to PTX for sm_90 without a GPU, keep their memory access pattern.

The first CUDA kernels issued one load at a time per thread, and in channels_last one scalar per thread; on an
H200 they read at 0.4-2 TB/s where ``x.sum()`` reads at 3.8 (benchmarks/README.md). The counting kernels now keep
``kUnroll`` (4) 16-byte loads in flight per thread. This test compiles ``csrc/cuda/count_cuda.cu`` with nvcc (as
the build does, here to PTX only) and checks, for every counting instantiation: four 16-byte read-only loads
(``ld.global.nc.v4``), and no local-memory arrays. It skips where nvcc is missing; the GPU tests check the counts.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from cuda_toolkit import ROOT, find_nvcc

SOURCE = ROOT / "csrc" / "cuda" / "count_cuda.cu"
DTYPES = ("f", "d", "6__half", "13__nv_bfloat16")  # mangled float, double, __half, __nv_bfloat16
# kernel name, element type, then the NT and activation template arguments where the kernel has them
MANGLED = re.compile(r"(rows_kernel|channels_vec_kernel|channels_kernel)I(\w+?)(?:Li(\d)E)?(?:Li(n?\d+)E)?EEvN")
# The activation argument (count_args.h's Activation codes; -1 counts only, 100 reads the activation at run time).
ACTIVATIONS = {"n1": "count", "0": "relu", "1": "hardtanh", "2": "leaky_relu", "3": "gelu", "4": "gelu_tanh",
               "100": "any"}  # fmt: skip
# The activations compiled in with a fixed threshold count: the pairings the profiler makes.
SPECIALIZED = {"1": ("relu", "leaky_relu", "gelu", "gelu_tanh"), "2": ("hardtanh",)}


def _compile_ptx(arch: str, out: Path) -> dict[str, str]:
    """PTX body of each kernel entry for ``arch``, by short name such as ``rows_kernel<f,1,count>``."""
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    proc = subprocess.run(
        [nvcc, "-std=c++17", "-O3", f"-arch={arch}", "-ptx", str(SOURCE), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    bodies = {}
    for chunk in re.split(r"\n(?=\.visible \.entry|\.entry)", out.read_text()):
        match = re.search(r"\.entry (\S+)\(", chunk)
        if not match:
            continue
        short = MANGLED.search(match.group(1))
        assert short, match.group(1)
        kernel, dtype, nt, act = short.groups()
        args = [dtype] + ([nt] if nt is not None else []) + ([ACTIVATIONS[act]] if act is not None else [])
        bodies[f"{kernel}<{','.join(args)}>"] = chunk
    return bodies


@pytest.fixture(scope="module")
def kernels(tmp_path_factory) -> dict[str, str]:
    return _compile_ptx("sm_90", tmp_path_factory.mktemp("ptx") / "count_cuda_sm90.ptx")


@pytest.fixture(scope="module")
def kernels_sm80(tmp_path_factory) -> dict[str, str]:
    return _compile_ptx("sm_80", tmp_path_factory.mktemp("ptx") / "count_cuda_sm80.ptx")


def _counting_kernels(kernels: dict[str, str]) -> list[str]:
    return [name for name in kernels if name.endswith(",count>")]


def _fused_kernels(kernels: dict[str, str]) -> list[str]:
    return [name for name in kernels if name.count(",") == 2 and not name.endswith(",count>")]


def test_every_dtype_and_threshold_variant_is_compiled(kernels):
    for dtype in DTYPES:
        for nt in ("0", "1", "2"):
            assert f"rows_kernel<{dtype},{nt},count>" in kernels, sorted(kernels)
        assert f"rows_kernel<{dtype},0,any>" in kernels, sorted(kernels)
        for nt, acts in SPECIALIZED.items():
            for kernel in ("rows_kernel", "channels_vec_kernel"):
                for act in ("count", "any", *acts):
                    assert f"{kernel}<{dtype},{nt},{act}>" in kernels, sorted(kernels)


def test_fused_kernels_hold_only_their_own_activation(kernels):
    """A fused kernel compiled for relu, hardtanh or leaky_relu carries no GELU code (erf and tanh use ex2), and
    no switch on the activation: all activations' code inlined in one loop had taken 80 registers a thread."""
    for name in _fused_kernels(kernels):
        act = name.rstrip(">").split(",")[-1]
        has_gelu = bool(re.search(r"\bex2\.approx", kernels[name]))
        assert has_gelu == (act in ("gelu", "gelu_tanh", "any")), name


def test_counting_kernels_keep_four_vector_loads_in_flight(kernels):
    names = _counting_kernels(kernels)
    assert len(names) >= 20, names
    for name in names:
        loads = re.findall(r"ld\.global\.nc\.v4\.\w+", kernels[name])
        assert len(loads) >= 4, (name, loads)


def test_counting_kernels_use_no_local_memory(kernels):
    for name in _counting_kernels(kernels):
        assert not re.search(r"\b(ld|st)\.local\b", kernels[name]), name


# Thresholds known at compile time (NT 1 or 2), counting alone: the kernels that compare 16-bit values in pairs.
PAIRED = [
    f"{kernel}<{dtype},{nt}{suffix}>"
    for kernel, suffix in (("rows_kernel", ",count"), ("channels_vec_kernel", ",count"))
    for dtype in ("6__half", "13__nv_bfloat16")
    for nt in ("1", "2")
]


def test_16bit_counting_compares_two_values_per_instruction_on_sm90(kernels):
    # Each loop iteration reads kUnroll (4) vectors of 4 words: at least 16 packed compares per threshold, plus
    # 16 for NaN. Widening each value to float32 first took 8 conversions and 16 compares per vector.
    for name in PAIRED:
        pair = "f16x2" if "__half" in name else "bf16x2"
        nt = int(name.split(",")[1].rstrip(">"))
        body = kernels[name]
        assert len(re.findall(rf"set\.gt\.u32\.{pair}\b", body)) >= 16 * nt, name
        assert len(re.findall(rf"set\.eq\.u32\.{pair}\b", body)) >= 16, name


def test_sm80_pairs_float16_only(kernels_sm80):
    # sm_80 has no bfloat16 pair compare (cuda_bf16 would emulate it one value at a time): bfloat16 is widened.
    for name in PAIRED:
        body = kernels_sm80[name]
        if "__half" in name:
            assert re.search(r"set\.gt\.u32\.f16x2\b", body), name
        else:
            assert not re.search(r"bf16x2", body), name


def test_comparisons_are_a_predicate_and_a_predicated_add(kernels):
    # `acc += x > t` compiles to a compare, an add and a select; compare_ops.cuh adds under the predicate.
    for name in _counting_kernels(kernels):
        if name.startswith("channels_vec_kernel") and name in PAIRED:
            continue  # no value is compared on its own there
        body = kernels[name]
        assert re.search(r"setp\.num\.f(32|64)", body), name
        assert not re.search(r"selp\.(b|u|s)32\s+%r\d+, 1, 0", body), name


def test_fused_kernels_load_and_store_vectors(kernels):
    """The fused variants read four 16-byte vectors at a time and write their activations as 16-byte vectors."""
    fused = _fused_kernels(kernels)
    assert len(fused) >= 50, sorted(kernels)
    for name in fused:
        assert len(re.findall(r"ld\.global\.nc\.v4\.\w+", kernels[name])) >= 4, name
        assert re.search(r"st\.global(\.wb)?\.v4\.\w+", kernels[name]), name
