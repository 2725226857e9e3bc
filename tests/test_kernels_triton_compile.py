"""The Triton kernels compile for real GPUs (sm_90 and sm_80) down to PTX and cubin, without a GPU.

Each variant is specialised by Triton's own launch-time binder (strides equal to 1 become constants, 16-divisible
pointers and integers are marked so) from the arguments the backend really passes for a CPU tensor of that
layout, then compiled with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90 or 80, 32))``. The
contiguous NCHW and channels_last kernels (and the 14x14 / 24-channel ones, through the ALIGN hints) must read x
with vector loads.

Compilation runs in a child process with the interpreter off: Triton fixes at import whether its library
functions are compiled or interpreted, and this test session may have imported it with ``TRITON_INTERPRET=1``.
This file is also that child's script.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# name: (dtype, layout, kind, thresholds, ignore_ties, arch)
VARIANTS = {
    "fp32-nchw-sm90": ("float32", "nchw", None, (0.0,), False, 90),
    "fp16-nchw-sm90": ("float16", "nchw", None, (0.0,), False, 90),
    "bf16-nchw-sm90": ("bfloat16", "nchw", None, (0.0,), False, 90),
    "fp32-nhwc-sm90": ("float32", "nhwc", None, (0.0,), False, 90),
    "fp16-nhwc-sm90": ("float16", "nhwc", None, (0.0,), False, 90),
    "bf16-nhwc-sm90": ("bfloat16", "nhwc", None, (0.0,), False, 90),
    "fp32-nlc-sm90": ("float32", "nlc", None, (0.0, 6.0), False, 90),
    "fp32-nchw14-sm90": ("float32", "nchw14", None, (0.0,), False, 90),
    "fp32-nchwbig-sm90": ("float32", "nchwbig", None, (0.0,), False, 90),
    "bf16-nchwbig-sm90": ("bfloat16", "nchwbig", None, (0.0,), False, 90),
    "relu-fp16-nchwbig-sm90": ("float16", "nchwbig", "relu", (0.0,), False, 90),
    "fp16-nchw14-sm90": ("float16", "nchw14", None, (0.0,), False, 90),
    "fp32-nhwc24-sm90": ("float32", "nhwc24", None, (0.0,), False, 90),
    "fp16-nhwc96-sm90": ("float16", "nhwc96", None, (0.0, 6.0), False, 90),
    "fp16-nchw56-sm90": ("float16", "nchw56", None, (0.0, 6.0), False, 90),
    "fp32-nchw-sm80": ("float32", "nchw", None, (0.0,), False, 80),
    "fp16-nhwc-sm80": ("float16", "nhwc", None, (0.0,), False, 80),
    "bf16-nchw-sm80": ("bfloat16", "nchw", None, (0.0,), False, 80),
    "fp64-nchw-sm90": ("float64", "nchw", None, (0.0,), False, 90),
    "fp32-vector-sm90": ("float32", "vector", None, (0.0,), False, 90),
    "bf16-vector-sm90": ("bfloat16", "vector", None, (0.0, 6.0), False, 90),
    "fp16-pos1-sm90": ("float16", "pos1", None, (0.0,), False, 90),
    "fp32-row-sm90": ("float32", "row", None, (0.0,), False, 90),
    "bf16-row-sm90": ("bfloat16", "row", None, (0.0, 6.0), False, 90),
    "fp64-1d-sm90": ("float64", "1d", None, (0.0,), False, 90),
    "fp32-rows-expanded-sm90": ("float32", "expanded", None, (0.0,), False, 90),
    "relu-fp32-vector-sm90": ("float32", "vector", "relu", (0.0,), False, 90),
    "fp32-nhwc-k8-ties-sm90": ("float32", "nhwc", None, (-3, -2, -1, 0, 1, 2, 3), True, 90),
    "fp32-strided-sm90": ("float32", "strided", None, (0.0,), False, 90),
    "relu-fp32-nchw-sm90": ("float32", "nchw", "relu", (0.0,), False, 90),
    "hardtanh-fp16-nhwc-sm90": ("float16", "nhwc", "hardtanh", (0.0, 6.0), False, 90),
    "relu-bf16-nchwbig-sm90": ("bfloat16", "nchwbig", "relu", (0.0,), False, 90),
    "hardtanh-bf16-nchw-sm90": ("bfloat16", "nchw", "hardtanh", (0.0, 6.0), False, 90),
    "hardtanh-bf16-nchw-sm80": ("bfloat16", "nchw", "hardtanh", (0.0, 6.0), False, 80),
    "leaky_relu-bf16-nchw-sm90": ("bfloat16", "nchw", "leaky_relu", (0.0,), False, 90),
    "gelu-fp32-nhwc-sm90": ("float32", "nhwc", "gelu", (0.0,), False, 90),
    "gelu_tanh-bf16-nhwc-sm90": ("bfloat16", "nhwc", "gelu_tanh", (0.0,), False, 90),
    "gelu-fp16-nchw-sm80": ("float16", "nchw", "gelu", (0.0,), False, 80),
}
# Software-pipelined variants (triton_count's *_TILE_STAGES, which benchmarks/sweep_triton.py times): name:
# (variant, stages). Channel tiles are pipelined: their tiles go to shared memory through cp.async.
STAGED = {
    "fp16-nhwc-sm90-stages3": ("fp16-nhwc-sm90", 3),
    "fp16-nhwc-sm80-stages2": ("fp16-nhwc-sm80", 2),
    "bf16-nhwc-sm90-stages3": ("bf16-nhwc-sm90", 3),
    "hardtanh-fp16-nhwc-sm90-stages3": ("hardtanh-fp16-nhwc-sm90", 3),
}
# Variants compiled with blocks fitted to the tensor (triton_count.CHANNEL_BLOCK_FIT and INNER_BLOCK_FIT, which
# benchmarks/sweep_triton.py times): name: variant. MobileNet-V2's 96 channels in three blocks of 32; 56x56 maps
# (3136 positions) in tiles of 64 positions, not 4096. The other variants compile with both off, the widest blocks;
# the library's default fits the channel blocks (on since the H200 sweep of session 20), not the NCHW tiles.
FITTED = {"fp16-nhwc96-sm90-fitted": "fp16-nhwc96-sm90", "fp16-nchw56-sm90-fitted": "fp16-nchw56-sm90"}
MUST_VECTORISE = [
    name for name, (dt, layout, kind, *_) in VARIANTS.items()
    if kind is None and layout.startswith(("nchw", "nhwc")) and dt in ("float32", "float16")
] + list(FITTED)  # fmt: skip
_PARAMS = {"hardtanh": (0.0, 6.0), "leaky_relu": (0.01, 0.0)}
_ROOT = Path(__file__).resolve().parents[1]


def _tensor(dtype: torch.dtype, layout: str) -> tuple[torch.Tensor, int]:
    if layout == "nchw":
        return torch.zeros(2, 8, 32, 32, dtype=dtype), 1
    if layout == "nchwbig":  # maps of a whole tile or more: one channel per tile
        return torch.zeros(2, 3, 64, 70, dtype=dtype), 1
    if layout == "nchw56":  # rows of 3136 elements: 64 x 49
        return torch.zeros(2, 64, 56, 56, dtype=dtype), 1
    if layout == "nchw14":  # rows of 196 elements: aligned to 16 bytes, not to 16 elements
        return torch.zeros(2, 8, 14, 14, dtype=dtype), 1
    if layout == "nhwc24":  # MobileNet-V2's 24 channels
        return torch.zeros(2, 24, 8, 8, dtype=dtype).to(memory_format=torch.channels_last), 1
    if layout == "nhwc96":  # MobileNet-V2's 96 channels
        return torch.zeros(2, 96, 8, 8, dtype=dtype).to(memory_format=torch.channels_last), 1
    if layout == "nhwc":
        return torch.zeros(2, 256, 4, 4, dtype=dtype).to(memory_format=torch.channels_last), 1
    if layout == "vector":  # (N, C) features: one position per channel and sample, tiles one position wide
        return torch.zeros(64, 96, dtype=dtype), 1
    if layout == "row":  # one sample's features: every size but the channels' is 1
        return torch.zeros(1, 96, dtype=dtype), 1
    if layout == "1d":
        return torch.zeros(23, dtype=dtype), 0
    if layout == "expanded":  # one row read 300 times at stride 0
        return torch.zeros(1, 1280, dtype=dtype).expand(300, 1280), 1
    if layout == "pos1":  # 1x1 maps (a pooled head)
        return torch.zeros(4, 1280, 1, 1, dtype=dtype), 1
    if layout == "nlc":
        return torch.zeros(2, 49, 96, dtype=dtype), -1
    return torch.zeros(2, 6, 8, 10, dtype=dtype).permute(0, 2, 3, 1), 1  # neither stride is 1


def _compile_variant(name: str, stages: int | None = None, fit: bool = False) -> dict[str, object]:
    """Compile one variant in this (child) process, its tile loop pipelined in ``stages`` (None: as written), its
    blocks fitted to the tensor with ``fit``; what the test checks about it."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    from nepenthe.kernels import triton_count
    from nepenthe.kernels.jobs import CountJob, FusedJob
    from nepenthe.kernels.layout import readable_view
    from nepenthe.kernels.thresholds import kernel_thresholds
    from nepenthe.kernels.triton_count import ACTIVATIONS, compiled_kernel, kernel_launch

    triton_count.INNER_TILE_STAGES = triton_count.CHANNEL_TILE_STAGES = stages
    triton_count.CHANNEL_BLOCK_FIT = triton_count.INNER_BLOCK_FIT = fit
    triton_count._static_launch.cache_clear()  # launches remembered with other stages or blocks

    dtype_name, layout, kind, thresholds, ignore_ties, arch = VARIANTS[name]
    x, channel_dim = _tensor(getattr(torch, dtype_name), layout)
    x, view = readable_view(x, channel_dim % x.dim())
    counts = torch.zeros(view.channels, len(thresholds) + 1, dtype=torch.int64)
    kt = kernel_thresholds(tuple(float(t) for t in thresholds), x.dtype)
    common = (x, channel_dim % x.dim(), view, tuple(map(float, thresholds)), kt, ignore_ties, counts)
    if kind is None:
        launch = kernel_launch(CountJob(*common), compiled=True)
    else:
        job = FusedJob(*common, y=torch.empty_like(x), y_view=view, kind=kind.split("_tanh")[0])
        act = ACTIVATIONS[kind if kind in ACTIVATIONS else "gelu_none"]
        launch = kernel_launch(job, act, _PARAMS.get(kind, (0.0, 0.0)), compiled=True)

    fn = compiled_kernel()
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    # Triton's own launch-time specialisation (ints equal to 1 become constants, 16-divisible pointers and
    # ints are marked), applied to the arguments the backend really passes: what a GPU launch would compile.
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    # torch's CUDA semantics for relu/hardtanh, as a CUDA tensor's launch has them (the tensors here are CPU ones).
    kwargs = dict(launch.constexprs, CLAMP_TO_BOUND=True, num_warps=launch.num_warps)
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    src = triton.compiler.ASTSource(fn, signature, constexprs, attrs)
    kernel = triton.compile(src, target=target, options=options.__dict__)
    ptx = kernel.asm["ptx"]
    return {
        "block_c": launch.constexprs["BLOCK_C"],
        "block_i": launch.constexprs["BLOCK_I"],
        "full_tiles": launch.constexprs["FULL_TILES"],
        "masked_accesses": len(re.findall(r"@%p\d+\s+(?:ld|st)\.global", ptx)),
        "cubin_bytes": len(kernel.asm["cubin"]),
        "loads": sorted(set(re.findall(r"ld\.global(?:\.[a-z0-9]+)*", ptx))),
        "scalar_loads": len(re.findall(r"ld\.global(?![.a-z0-9]*\.v[248]\b)(?:\.[a-z0-9]+)*\s", ptx)),
        "stores": sorted(set(re.findall(r"st\.global(?:\.[a-z0-9]+)*", ptx))),
        "compares": sorted(set(re.findall(r"setp\.[a-z]+\.(?:f16|bf16|f32|f64)\b", ptx))),
        "async_copies": len(re.findall(r"cp\.async\.c[ag]\.", ptx)),
        "bf16_conversions": len(re.findall(r"cvt\.rn\.bf16(?:x2)?\.f32", ptx)),
        "bf16_rounded_by_hand": len(re.findall(r"\b32767\b", ptx)),  # the interpreter's rounding bias, 0x7FFF
    }


def _child_main() -> None:
    results = {}
    runs = [(name, name, None, False) for name in VARIANTS]
    runs += [(name, *staged, False) for name, staged in STAGED.items()]
    runs += [(name, variant, None, True) for name, variant in FITTED.items()]
    for name, variant, stages, fit in runs:
        try:
            results[name] = _compile_variant(variant, stages, fit)
        except Exception as err:  # noqa: BLE001 - reported to the parent test, which fails that variant
            results[name] = {"error": f"{type(err).__name__}: {err}"}
    print(json.dumps(results))


def _ptxas_problem() -> str | None:
    try:
        import triton

        tool = triton.knobs.nvidia.ptxas
    except Exception as err:  # noqa: BLE001 - any failure to find ptxas means this test cannot run here
        return f"no ptxas for Triton: {type(err).__name__}: {err}"
    if tool is None or not os.path.exists(tool.path):
        return "no ptxas for Triton"
    return None


@pytest.fixture(scope="module")
def compiled() -> dict[str, dict[str, object]]:
    pytest.importorskip("triton")
    problem = _ptxas_problem()
    if problem:
        pytest.skip(problem)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(_ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, __file__], capture_output=True, text=True, env=env, cwd=_ROOT, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", [*VARIANTS, *STAGED, *FITTED])
def test_kernel_compiles_to_cubin(compiled, name):
    result = compiled[name]
    assert "error" not in result, result.get("error")
    assert result["cubin_bytes"] > 0
    assert any(op.startswith("ld.global") for op in result["loads"])


@pytest.mark.parametrize("name", MUST_VECTORISE)
def test_contiguous_kernels_use_vector_loads(compiled, name):
    loads = compiled[name].get("loads", [])
    assert any(".v4." in op or ".v2." in op for op in loads), loads


def test_fitted_blocks_are_narrower(compiled):
    blocks = {name: (compiled[name]["block_c"], compiled[name]["block_i"]) for name in [*FITTED, *FITTED.values()]}
    assert blocks["fp16-nhwc96-sm90"][0] == 128 and blocks["fp16-nhwc96-sm90-fitted"][0] == 32, blocks
    assert blocks["fp16-nchw56-sm90"] == (1, 4096) and blocks["fp16-nchw56-sm90-fitted"] == (64, 64), blocks


def test_full_tiles_read_without_masks(compiled):
    """Where the tiles cover the tensor exactly (triton_count.UNMASKED_FULL_TILES), a count's loads of x are not
    predicated; elsewhere they are (at the tensor's edges), and fused kernels keep their masks."""
    full = [name for name in [*VARIANTS, *FITTED] if compiled[name].get("full_tiles")]
    masked = [name for name in [*VARIANTS, *FITTED] if compiled[name].get("full_tiles") is False]
    assert {"fp32-nchw-sm90", "fp16-nhwc96-sm90-fitted", "fp16-nchw56-sm90-fitted"} <= set(full), full
    assert {"fp16-nhwc96-sm90", "fp32-nchw14-sm90", "fp16-nchw56-sm90", "relu-fp32-nchw-sm90"} <= set(masked), masked
    assert all(VARIANTS.get(name, (None,) * 3)[2] is None for name in full), full  # counting only
    for name in full:
        assert compiled[name]["masked_accesses"] == 0, (name, compiled[name]["masked_accesses"])
    for name in masked:
        assert compiled[name]["masked_accesses"] > 0, name


def test_pipelined_kernels_copy_tiles_asynchronously(compiled):
    """Pipelined (CHANNEL_TILE_STAGES), channel tiles are read with asynchronous copies to shared memory (the next
    tiles' while one is counted); without it (the default), no kernel copies asynchronously. (Unrolled twice, as
    channel tiles are since session 13, the pipelined loop still loads some tiles into registers; not unrolled, it
    loaded none.)"""
    for name in STAGED:
        assert compiled[name]["async_copies"] > 0, (name, compiled[name])
    for name in VARIANTS:
        assert compiled[name]["async_copies"] == 0, (name, compiled[name]["async_copies"])


def test_fused_kernels_store_the_activation(compiled):
    for name, (_, _, kind, *_) in VARIANTS.items():
        stores = compiled[name].get("stores")
        assert stores is not None, compiled[name]
        assert bool(stores) == (kind is not None), (name, stores)


# Scalar constants a fused kernel reads: its thresholds (with ignore_ties, their tie values too) and the activation's
# parameters (hardtanh's bounds, leaky_relu's slope; 16-bit hardtanh clamps in its own format, with the bounds
# rounded down for the compares and to nearest for the output: half_clamp_params).
_PARAM_LOADS = {"hardtanh": 2, "leaky_relu": 1}
_PARAM_LOADS_16BIT = {"hardtanh": 4, "leaky_relu": 1}


def test_fused_kernels_load_their_constants_once(compiled):
    """The thresholds and parameters are loaded once, before the tile loop. Loaded inside it, they were loaded again
    for every (unrolled) tile: the compiler cannot keep them across the fused output's stores, which might alias
    them. The vector loads of x are not counted here."""
    checked = 0
    for name, (dtype, _, kind, thresholds, ignore_ties, _) in VARIANTS.items():
        if kind is None:
            continue
        params = _PARAM_LOADS_16BIT if dtype in ("float16", "bfloat16") else _PARAM_LOADS
        constants = len(thresholds) * (2 if ignore_ties else 1) + params.get(kind, 0)
        assert compiled[name]["scalar_loads"] <= constants, (name, compiled[name]["scalar_loads"], constants)
        checked += 1
    assert checked >= 8


def test_16bit_counts_compare_in_their_own_format(compiled):
    """Counting float16 (and bfloat16 from sm_90) compares the values in their 16-bit format, none in float32, and
    so does counting fused with relu or hardtanh, which clamp in that format too; on sm_80, bfloat16 is compared in
    float32. Fused with leaky_relu, the counts compare in 16 bits too, the activation in float32 (or narrowed)."""
    checked = 0
    for name, (dtype, _, kind, _, _, arch) in VARIANTS.items():
        if kind not in (None, "relu", "hardtanh", "leaky_relu") or dtype not in ("float16", "bfloat16"):
            continue
        compares = {op.rsplit(".", 1)[1] for op in compiled[name].get("compares", [])}
        own = "f16" if dtype == "float16" else "bf16" if arch >= 90 else "f32"
        if kind == "leaky_relu":
            # Its own compare (v > 0) may stay in float32, or the compiler may narrow it; the counts' first state
            # is the only "less or equal" compare (v <= t_0).
            ops = compiled[name].get("compares", [])
            assert f"setp.le.{own}" in ops and "setp.le.f32" not in ops, (name, ops)
        else:
            assert compares == {own}, (name, compares)
        checked += 1
    assert checked >= 7


def test_bfloat16_outputs_rounded_by_the_hardware(compiled):
    """Fused activations computed in float32 (leaky_relu, GELU) round their bfloat16 outputs with the hardware's
    conversion to nearest even (cvt.rn.bf16), as torch does; only the interpreter, whose cast rounds half up, rounds
    by hand (about six instructions a value)."""
    checked = 0
    for name, (dtype, _, kind, *_) in VARIANTS.items():
        if dtype != "bfloat16" or kind in (None, "relu", "hardtanh"):
            continue
        assert compiled[name]["bf16_conversions"] > 0, (name, compiled[name])
        assert compiled[name]["bf16_rounded_by_hand"] == 0, (name, compiled[name])
        checked += 1
    assert checked >= 2


if __name__ == "__main__":
    _child_main()
