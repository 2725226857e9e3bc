"""Fused activation kernels against the unfused torch activation (forward and gradient) and the reference counts.

Forward outputs must equal torch's bit for bit for relu/hardtanh/leaky_relu (signed zeros included; NaN where
torch has NaN) and within dtype tolerance for GELU (computed in float32; float64 for float64). Gradients come
from torch's own backward, so they are compared exactly.
"""

from __future__ import annotations

import math
import zlib

import cuda_emulated
import pytest
import torch
import torch.nn.functional as F
from activation_oracles import as_cuda_computes, assert_bit_equal, assert_gelu_close, gelu_float64, torch_activation
from special_values import far_from_zero
from thread_checks import assert_each_thread_counted

from nepenthe.kernels import fused_activation
from nepenthe.kernels.fused_plan import default_thresholds
from nepenthe.kernels.reference import count_states_reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
KINDS = [
    ("relu", {}),
    ("hardtanh", {"min_val": 0.0, "max_val": 6.0}),
    ("hardtanh", {"min_val": -0.3, "max_val": 2.7}),
    ("leaky_relu", {"negative_slope": 0.01}),
    ("leaky_relu", {"negative_slope": 0.3}),
    ("gelu", {"approximate": "none"}),
    ("gelu", {"approximate": "tanh"}),
]
LAYOUTS = {
    "nchw": lambda t: (t, 1),
    "channels_last": lambda t: (t.contiguous(memory_format=torch.channels_last), 1),
    "nlc": lambda t: (t.flatten(2).transpose(1, 2).contiguous(), -1),
    "sliced": lambda t: (t[:, :, 1:, ::2], 1),
    "sliced_channels_last": lambda t: (t.contiguous(memory_format=torch.channels_last)[::2], 1),
}


# These tests check the fused kernels: every fused call runs one (conftest.py).
pytestmark = pytest.mark.usefixtures("every_fused_call_runs_the_kernel")


def _input(dtype: torch.dtype, device: str, seed: int, with_inf: bool) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 19, 5, 7, generator=gen, dtype=torch.float64) * 4
    x = torch.where(torch.rand(x.shape, generator=gen) < 0.3, torch.round(x * 2) / 2, x)
    specials = [math.nan, 0.0, -0.0, 6.0, -0.3, 2.7, 1e-30, -1e-30] + ([math.inf, -math.inf] if with_inf else [])
    x.view(-1)[: len(specials)] = torch.tensor(specials, dtype=torch.float64)
    return x.to(dtype).to(device)


def _as_on(device_backend: tuple[str, str], y: torch.Tensor, x: torch.Tensor, kind: str, lo: float = 0.0):
    """y, torch's activation of x on x's device, as torch computes it on the device the kernels ran for: for the
    CUDA kernels emulated on CPU tensors (tests/cuda_emulated.py), as torch's CUDA kernels give it."""
    return as_cuda_computes(y, x, kind, lo) if tuple(device_backend) == cuda_emulated.PAIR else y


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind,params", KINDS, ids=[f"{k}-{'-'.join(map(str, p.values()))}" for k, p in KINDS])
def test_fused_forward_backward_counts(device_backend, kind, params, dtype, layout):
    device, backend = device_backend
    seed = zlib.crc32(repr((kind, params, dtype, layout)).encode())
    # torch's vectorized GELU turns +-inf into NaN; the fused kernel gives the limit, so GELU skips infinities.
    base = _input(dtype, device, seed, with_inf=kind != "gelu")
    x, channel_dim = LAYOUTS[layout](base)
    thresholds = default_thresholds(kind, params)
    counts = torch.zeros(x.shape[channel_dim], len(thresholds) + 1, dtype=torch.int64, device=device)

    xf = x.detach().clone().requires_grad_(True)
    y = fused_activation(xf, kind, counts, channel_dim=channel_dim, backend=backend, **params)
    xt = x.detach().clone().requires_grad_(True)
    yt = torch_activation(xt, kind, params)

    assert y.shape == yt.shape and y.dtype == yt.dtype
    if kind == "gelu":
        assert_gelu_close(y, yt)
    else:
        assert_bit_equal(y.detach(), _as_on(device_backend, yt.detach(), x, kind, params.get("min_val", 0.0)))
    assert torch.equal(counts.cpu(), count_states_reference(x.cpu(), thresholds, channel_dim % x.dim(), False))

    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)
    y.backward(grad.to(device))
    yt.backward(grad.to(device))
    assert_bit_equal(xf.grad, xt.grad)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_fused_gelu_far_from_zero(device_backend, dtype, approximate):
    """GELU of values far from zero, up to the dtype's largest and infinities, against a float64 oracle: gelu(x)
    is about x above zero and about -0.0 below it. The CPU kernels' float32 exp saturated at exp(88), so a gate
    1 / (1 + exp(88)) of 6e-39 times x = -3e38 gave -1.8 (and -0.6 for -1e38). +inf gives +inf (the limit, where
    torch's vectorized CPU GELU gives NaN), -inf NaN (as torch: -inf times a gate of 0)."""
    device, backend = device_backend
    x = far_from_zero(dtype).reshape(1, -1).to(device)
    counts = torch.zeros(x.shape[1], 2, dtype=torch.int64, device=device)
    y = fused_activation(x, "gelu", counts, backend=backend, approximate=approximate)
    want = gelu_float64(x.cpu(), approximate).to(dtype)
    assert math.isnan(want[0, -1]) and want[0, -2] == math.inf
    assert_gelu_close(y.cpu(), want)
    assert torch.equal(counts.cpu(), count_states_reference(x.cpu(), (0.0,), 1, False))


@pytest.mark.parametrize("ignore_ties", [False, True])
def test_fused_custom_thresholds_and_ties(device_backend, ignore_ties):
    device, backend = device_backend
    x = (torch.round(torch.randn(3, 8, 6, 5, generator=torch.Generator().manual_seed(3)) * 2) / 2).to(device)
    thresholds = (-1.0, 0.0, 0.5, 6.0)
    counts = torch.full((8, 5), 7, dtype=torch.int64, device=device)
    y = fused_activation(
        x,
        "hardtanh",
        counts,
        thresholds=thresholds,
        ignore_ties=ignore_ties,
        backend=backend,
        min_val=-1.0,
        max_val=6.0,
    )
    assert_bit_equal(y, _as_on(device_backend, F.hardtanh(x, -1.0, 6.0), x, "hardtanh", -1.0))
    want = 7 + count_states_reference(x.cpu(), thresholds, 1, ignore_ties)
    assert torch.equal(counts.cpu(), want)


def test_fused_empty(device_backend):
    device, backend = device_backend
    x = torch.empty(0, 4, 3, device=device, requires_grad=True)
    counts = torch.zeros(4, 2, dtype=torch.int64, device=device)
    y = fused_activation(x, "relu", counts, backend=backend)
    assert y.shape == x.shape and int(counts.abs().sum()) == 0


def _large_map(shape: tuple[int, ...], dtype: torch.dtype, device: str, seed: int) -> torch.Tensor:
    """A map of ``shape`` tiled from ``_input`` (special values included), each channel scaled differently."""
    x = _input(dtype, device, seed, with_inf=True).flatten()
    x = x.repeat(math.prod(shape) // x.numel() + 1)[: math.prod(shape)].reshape(shape)
    return x * torch.linspace(0.5, 1.5, shape[1], device=device, dtype=dtype).view(1, -1, 1, 1)


@pytest.mark.parametrize("shape", [(9, 300, 7, 7), (1, 1400, 7, 7), (3, 20, 28, 28), (2, 9, 20, 50)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_fused_maps_in_parallel(device_backend, shape, dtype):
    """Maps large enough to be split among threads, one outer index or several: output and counts exact. The cpu
    backend takes its bitmap path for all four (rows of 49, 784 and 1000 values, NaN in them)."""
    device, backend = device_backend
    if backend == "triton" and device == "cpu":
        pytest.skip("too large for the Triton interpreter")
    x = _large_map(shape, dtype, device, _seed_of(shape, dtype))
    counts = torch.zeros(shape[1], 3, dtype=torch.int64, device=device)
    y = fused_activation(x, "hardtanh", counts, backend=backend, min_val=0.0, max_val=6.0)
    assert_bit_equal(y, _as_on(device_backend, F.hardtanh(x, 0.0, 6.0), x, "hardtanh"))
    assert torch.equal(counts.cpu(), count_states_reference(x.cpu(), (0.0, 6.0), 1, False))


def test_fused_concurrent_calls_from_python_threads(device_backend):
    """Four Python threads running fused activations at once (the compiled kernels release the GIL), each with
    its own inputs and accumulators: every output and every count exact."""
    device, backend = device_backend
    if device == "cpu" and backend != "cpu":
        pytest.skip(
            "the Triton interpreter and the CUDA emulation are stand-ins for GPU kernels, too slow for 384 calls"
        )
    # (x, kind, params, thresholds, torch's output): maps large enough for the CPU's parallel paths
    x = _large_map((8, 300, 7, 7), torch.float32, device, _seed_of("threads", 0))
    y = _large_map((4, 64, 16, 16), torch.bfloat16, device, _seed_of("threads", 1))
    y = y.contiguous(memory_format=torch.channels_last)
    cases = [
        (x, "relu", {}, (0.0,), _as_on(device_backend, F.relu(x), x, "relu")),
        (
            y,
            "hardtanh",
            {"min_val": 0.0, "max_val": 6.0},
            (0.0, 6.0),
            _as_on(device_backend, F.hardtanh(y, 0.0, 6.0), y, "hardtanh"),
        ),
    ]
    counts_want = [count_states_reference(x.cpu(), th, 1, False) for x, _, _, th, _ in cases]
    rounds = 48

    def work(worker: int) -> list[torch.Tensor]:
        counts = [torch.zeros_like(w, device=device) for w in counts_want]
        for r in range(rounds):
            for i in ((r + worker) % 2, (r + worker + 1) % 2):  # the threads interleave the two kinds
                x, kind, params, _, want = cases[i]
                y = fused_activation(x, kind, counts[i], backend=backend, **params)
                assert_bit_equal(y, want)
        return counts

    assert_each_thread_counted(work, counts_want, rounds)


@pytest.mark.parametrize(
    "shape,channels_last",
    [((2, 6, 57, 61), False), ((3, 700, 7, 7), False), ((3, 320, 9, 13), True)],
    ids=str,
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind,params", KINDS[:2], ids=["relu", "relu6"])
def test_fused_activations_without_nan(device_backend, shape, channels_last, dtype, kind, params):
    """NaN-free inputs take the counting fast paths; the fused output must still be written for every value."""
    device, backend = device_backend
    if backend == "triton" and device == "cpu":
        pytest.skip("too large for the Triton interpreter")
    gen = torch.Generator().manual_seed(_seed_of("no-nan", shape, dtype))
    means = torch.linspace(-3.0, 7.0, shape[1], dtype=torch.float64).view(1, -1, 1, 1)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + means
    x = torch.where(torch.rand(shape, generator=gen) < 0.3, 0.0, x).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x = x.to(device)
    thresholds = default_thresholds(kind, params)
    counts = torch.zeros(shape[1], len(thresholds) + 1, dtype=torch.int64, device=device)
    y = fused_activation(x, kind, counts, backend=backend, **params)
    assert_bit_equal(y, _as_on(device_backend, torch_activation(x, kind, params), x, kind, params.get("min_val", 0.0)))
    assert torch.equal(counts.cpu(), count_states_reference(x.cpu(), thresholds, 1, False))


@pytest.mark.parametrize("shape", [(2, 64, 17, 19), (3, 64, 6, 7)], ids=["long_rows", "short_rows"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "kind,params,thresholds",
    [
        ("leaky_relu", {"negative_slope": 0.1}, None),
        ("gelu", {"approximate": "none"}, None),
        ("gelu", {"approximate": "tanh"}, None),
        ("relu", {}, (0.0, 1.0)),
        ("leaky_relu", {"negative_slope": 0.1}, (-1.0, 0.0)),
        ("gelu", {"approximate": "none"}, (-0.5, 0.5)),
        ("hardtanh", {"min_val": 0.0, "max_val": 6.0}, (0.0,)),
    ],
    ids=["leaky", "gelu", "gelu_tanh", "relu-2", "leaky-2", "gelu-2", "relu6-1"],
)
def test_fused_every_activation_in_every_kernel(device_backend, kind, params, thresholds, dtype, channels_last, shape):
    """Each activation with its own thresholds, and with others, through each layout's kernel: 64 channels take the
    CUDA kernels' 16-byte channel groups in channels_last, rows of 323 values their vector loads, rows of 42 their
    short-row loop. The CUDA kernels compile the activation in for its own thresholds and read it at run time for
    others; output (GELU: within tolerance) and counts must not depend on which."""
    device, backend = device_backend
    if backend == "triton" and device == "cpu":
        pytest.skip("too large for the Triton interpreter; test_fused_forward_backward_counts covers Triton")
    gen = torch.Generator().manual_seed(_seed_of("every", kind, thresholds, dtype, shape))
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3
    x = torch.where(torch.rand(shape, generator=gen) < 0.2, torch.round(x * 2) / 2, x)
    x.view(-1)[:: max(1, x.numel() // 40)] = math.nan
    x.view(-1)[1::97] = -0.0
    x = x.to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x = x.to(device)
    states = default_thresholds(kind, params) if thresholds is None else thresholds
    counts = torch.zeros(shape[1], len(states) + 1, dtype=torch.int64, device=device)
    y = fused_activation(x, kind, counts, thresholds=thresholds, backend=backend, **params)
    want = torch_activation(x, kind, params)
    if kind == "gelu":
        assert_gelu_close(y, want)
    else:
        assert_bit_equal(y, _as_on(device_backend, want, x, kind, params.get("min_val", 0.0)))
    assert torch.equal(counts.cpu(), count_states_reference(x.cpu(), states, 1, False))


def _seed_of(*parts: object) -> int:
    return zlib.crc32(repr(parts).encode())


@pytest.mark.parametrize("dtype,tie", [(torch.bfloat16, 1 + 3 * 2.0**-8), (torch.float16, 1 + 3 * 2.0**-11)], ids=str)
def test_fused_rounds_ties_to_even(device_backend, dtype, tie):
    """A hardtanh bound exactly halfway between two values of the dtype is stored rounded to even, as torch does."""
    device, backend = device_backend
    x = torch.tensor([5.0, -5.0, 0.5, 1.0] * 12, dtype=dtype, device=device).reshape(2, 24)  # clamped, and not
    counts = torch.zeros(24, 3, dtype=torch.int64, device=device)
    y = fused_activation(x, "hardtanh", counts, backend=backend, min_val=-tie, max_val=tie)
    want = F.hardtanh(x, -tie, tie)
    assert float(want.max()) != 1 + 2.0 ** (-7 if dtype == torch.bfloat16 else -10)  # torch rounded the tie to even
    assert_bit_equal(y, want)


def test_fused_without_autograd_matches_and_records_no_graph(device_backend):
    """Without a graph to record (no_grad, inference_mode, or an input that needs no gradient) the fused call skips
    the autograd Function; output and counts must not change, and a graph is recorded only when one is needed."""
    device, backend = device_backend
    x = _input(torch.float32, device, 11, with_inf=True)
    want = count_states_reference(x.cpu(), (0.0,), 1, False)
    for mode in (torch.no_grad, torch.inference_mode, torch.enable_grad):
        counts = torch.zeros(x.shape[1], 2, dtype=torch.int64, device=device)
        with mode():
            y = fused_activation(x, "relu", counts, backend=backend)
        assert_bit_equal(y, _as_on(device_backend, F.relu(x), x, "relu"))
        assert torch.equal(counts.cpu(), want) and y.grad_fn is None
    xg = x.clone().requires_grad_(True)
    counts = torch.zeros(x.shape[1], 2, dtype=torch.int64, device=device)
    with torch.no_grad():
        assert fused_activation(xg, "relu", counts, backend=backend).grad_fn is None
    assert fused_activation(xg, "relu", counts, backend=backend).grad_fn is not None


@pytest.mark.parametrize("inner", [64 * 19, 64 * 20 + 50, 64 * 31 + 63], ids=lambda n: f"rows{n}")
@pytest.mark.parametrize(
    "kind,params,thresholds",
    [
        ("relu", {}, None),
        ("hardtanh", {"min_val": 0.0, "max_val": 6.0}, None),
        ("leaky_relu", {"negative_slope": 0.1}, None),
        ("relu", {}, (0.0, 1.0)),
    ],
    ids=["relu", "relu6", "leaky", "relu-2"],
)
def test_fused_long_rows_with_and_without_nan(device_backend, kind, params, thresholds, inner):
    """float32 NCHW rows whose count writes the output as it reads them (the cpu backend's sign and word rows:
    rows longer than its bitmaps take, one threshold at 0.0 or thresholds bfloat16 holds). Every row's output and
    counts: rows that hold a NaN or an infinity (counted again the exact way) next to rows that do not, with tails
    of 0, 50 and 63 values past whole groups of 64."""
    device, backend = device_backend
    if backend == "triton" and device == "cpu":
        pytest.skip("too large for the Triton interpreter; test_fused_forward_backward_counts covers Triton")
    shape = (3, 5, 1, inner)
    gen = torch.Generator().manual_seed(_seed_of("long-rows", kind, thresholds, inner))
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 4
    x = torch.where(torch.rand(shape, generator=gen) < 0.2, torch.round(x), x)
    x[0, 1, 0, inner - 1] = math.nan  # the last value of a row: its tail
    x[1, 3, 0, 5] = math.inf
    x[2, 0, 0, 70] = -math.inf
    x[2, 4, 0, 64] = -math.nan
    x[1, 0, 0, :: max(1, inner // 17)] = -0.0
    x = x.to(torch.float32).to(device)
    states = default_thresholds(kind, params) if thresholds is None else thresholds
    counts = torch.zeros(shape[1], len(states) + 1, dtype=torch.int64, device=device)
    y = fused_activation(x, kind, counts, thresholds=thresholds, backend=backend, **params)
    assert_bit_equal(y, _as_on(device_backend, torch_activation(x, kind, params), x, kind, params.get("min_val", 0.0)))
    assert torch.equal(counts.cpu(), count_states_reference(x.cpu(), states, 1, False))
    # and again into the same counts: a fused count adds, it does not overwrite
    fused_activation(x, kind, counts, thresholds=thresholds, backend=backend, **params)
    assert torch.equal(counts.cpu(), 2 * count_states_reference(x.cpu(), states, 1, False))


# Fused kinds for the tests below of the cpu backend's counting loops that write float32 output: with thresholds its
# word fills and word lanes take (0 and 6; 0 and 1) and with ones they do not (-1 and 0.3: float compares).
IN_LOOP_KINDS = [
    ("relu", {}, None),
    ("hardtanh", {"min_val": 0.0, "max_val": 6.0}, None),
    ("hardtanh", {"min_val": -1.0, "max_val": 0.3}, None),
    ("leaky_relu", {"negative_slope": 0.1}, None),
    ("relu", {}, (0.0, 1.0)),
]


@pytest.mark.parametrize("inner,channels", [(49, 163), (455, 19), (1001, 11)], ids=lambda v: str(v))
@pytest.mark.parametrize("kind,params,thresholds", IN_LOOP_KINDS, ids=["relu", "relu6", "hardtanh", "leaky", "relu-2"])
def test_fused_short_rows_in_blocks_with_and_without_nan(device_backend, kind, params, thresholds, inner, channels):
    """float32 NCHW rows short enough for the cpu backend's bitmaps (up to 1024 values), whose fills write the
    output as they read the values: blocks of whole rows (80 rows of 49 values, 8 of 455, 4 of 1001), two full
    blocks and a short one per batch item. Blocks of 8 rows of 455 and 4 of 1001 end inside a vector, which the
    fill reads on into the next row. A NaN sends its block to the float comparisons after the word fill (ReLU6's
    thresholds), and an infinity sits in the last value of the tensor."""
    device, backend = device_backend
    if backend == "triton" and device == "cpu":
        pytest.skip("too large for the Triton interpreter; test_fused_forward_backward_counts covers Triton")
    shape = (2, channels, 1, inner)
    gen = torch.Generator().manual_seed(_seed_of("short-rows", kind, params, thresholds, inner))
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 4
    x = torch.where(torch.rand(shape, generator=gen) < 0.2, torch.round(x), x)
    x[0, 1, 0, 3] = math.nan
    x[1, channels - 1, 0, inner - 1] = math.inf
    x[1, channels // 2, 0, inner // 2] = -math.inf
    x[0, channels - 2, 0, :: max(1, inner // 9)] = -0.0
    x = x.to(torch.float32).to(device)
    states = default_thresholds(kind, params) if thresholds is None else thresholds
    want = count_states_reference(x.cpu(), states, 1, False)
    counts = torch.zeros(shape[1], len(states) + 1, dtype=torch.int64, device=device)
    y = fused_activation(x, kind, counts, thresholds=thresholds, backend=backend, **params)
    assert_bit_equal(y, _as_on(device_backend, torch_activation(x, kind, params), x, kind, params.get("min_val", 0.0)))
    assert torch.equal(counts.cpu(), want)
    y = fused_activation(x, kind, counts, thresholds=thresholds, backend=backend, **params)
    assert torch.equal(counts.cpu(), 2 * want)


@pytest.mark.parametrize(
    "shape,channel_dim",
    [((3, 64, 9, 7), 1), ((3, 48, 5, 5), 1), ((2, 1312, 3, 3), 1), ((2, 1280, 3, 3), 1), ((3, 50, 128), -1)],
    ids=["cl64", "cl48", "cl1312", "cl1280", "tokens128"],
)
@pytest.mark.parametrize("kind,params,thresholds", IN_LOOP_KINDS, ids=["relu", "relu6", "hardtanh", "leaky", "relu-2"])
def test_fused_channel_groups_with_and_without_nan(device_backend, kind, params, thresholds, shape, channel_dim):
    """float32 with the channels innermost (channels_last maps, token tensors): the cpu backend's byte lanes write
    the output of each group of 64 channels as they read it, and the channels left over (1312 = 20 x 64 + 32) after
    the work item; its word lanes (up to 256 channels against ReLU's or ReLU6's thresholds) write that of groups of
    32 channels, 48 channels a group and a half. A NaN and infinities sit in some positions, which both count again
    the exact way."""
    device, backend = device_backend
    if backend == "triton" and device == "cpu":
        pytest.skip("too large for the Triton interpreter; test_fused_forward_backward_counts covers Triton")
    gen = torch.Generator().manual_seed(_seed_of("channel-groups", kind, params, thresholds, shape))
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 4
    x = torch.where(torch.rand(shape, generator=gen) < 0.2, torch.round(x), x)
    flat = x.view(-1)
    flat[7] = math.nan
    flat[-1] = math.inf
    flat[flat.numel() // 2] = -math.inf
    x = x.to(torch.float32)
    if len(shape) == 4:
        x = x.to(memory_format=torch.channels_last)
    x = x.to(device)
    states = default_thresholds(kind, params) if thresholds is None else thresholds
    want = count_states_reference(x.cpu(), states, channel_dim, False)
    channels = shape[channel_dim]
    counts = torch.zeros(channels, len(states) + 1, dtype=torch.int64, device=device)
    y = fused_activation(x, kind, counts, channel_dim=channel_dim, thresholds=thresholds, backend=backend, **params)
    assert_bit_equal(y, _as_on(device_backend, torch_activation(x, kind, params), x, kind, params.get("min_val", 0.0)))
    assert torch.equal(counts.cpu(), want)
    fused_activation(x, kind, counts, channel_dim=channel_dim, thresholds=thresholds, backend=backend, **params)
    assert torch.equal(counts.cpu(), 2 * want)
