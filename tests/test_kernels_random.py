"""Random cases against the torch reference on every backend: a differential fuzz with fixed seeds.

Each seed draws tensors of 1 to 5 dims with random sizes, a random view of them (channels_last, permuted, sliced,
strided, transposed, expanded), a random channel dim, dtype, threshold set (1 to 7, with -0.0 and values the
16-bit formats cannot hold) and ``ignore_ties``, filled with values that tie the thresholds, NaN, infinities,
signed zeros and denormals. Counts must equal the torch reference exactly; fused activations (relu, hardtanh with
random bounds, leaky_relu, GELU) must give torch's output (GELU: a float64 oracle without cancellation, within
dtype tolerance) and the reference counts. The default run takes two seeds a backend; ``pytest -m slow`` more, and
model-sized maps (up to 6 M values) with random CPU thread counts.
The fuzz this grew from found a CPU GELU bug (see ``test_fused_gelu_far_from_zero``).
"""

from __future__ import annotations

import math
import random

import cuda_emulated
import pytest
import torch
from activation_oracles import as_cuda_computes, assert_bit_equal, assert_gelu_close, gelu_float64, torch_activation

from nepenthe.kernels import count_states, fused_activation
from nepenthe.kernels.fused_plan import default_thresholds

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
SIZES = [1, 1, 2, 3, 5, 7, 8, 13, 16, 17, 24, 31, 49, 64, 96, 130]
THRESHOLD_POOL = [-6.0, -1.0, -0.3, -0.0, 0.1, 0.5, 1.0, 2.0, 6.0, 100.0, 1e-9, -1e-9]
SPECIAL = [0.0, -0.0, math.inf, -math.inf, math.nan, 1e-40, -1e-40, 6.0, -6.0, 65504.0, 1e30]
CASES_PER_SEED = 40
DEFAULT_SEEDS = [0, 1]
SLOW_SEEDS = list(range(2, 12))


# These tests check the fused kernels: every fused call runs one (conftest.py).
pytestmark = pytest.mark.usefixtures("every_fused_call_runs_the_kernel")


def _values(rng: random.Random, shape: list[int], dtype: torch.dtype, thresholds: tuple[float, ...]) -> torch.Tensor:
    n = math.prod(shape)
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    x = torch.randn(n, generator=gen, dtype=torch.float64) * rng.choice([1e-3, 0.5, 2.0, 10.0])
    if n:
        picks = torch.randint(0, n, (max(1, n // 4),), generator=gen)
        if rng.random() < 0.5:  # ties
            ties = torch.tensor(thresholds, dtype=torch.float64)
            x[picks] = ties[torch.randint(0, len(ties), picks.shape, generator=gen)]
        else:
            special = torch.tensor(SPECIAL, dtype=torch.float64)
            x[picks] = special[torch.randint(0, len(special), picks.shape, generator=gen)]
    return x.to(dtype).reshape(shape)


def _thresholds(rng: random.Random) -> tuple[float, ...]:
    chosen = sorted(rng.sample(THRESHOLD_POOL, rng.choice([1, 1, 2, 2, 3, 4, 7])))
    return tuple(chosen)  # -0.0 and 0.0 are never both drawn: the pool holds -0.0 only


def _case(rng: random.Random, thresholds: tuple[float, ...]) -> tuple[torch.Tensor, int]:
    """A random tensor view and channel dim."""
    nd = rng.choice([1, 2, 2, 3, 3, 4, 4, 4, 5])
    dims = [rng.choice(SIZES) for _ in range(nd)]
    while math.prod(dims) > 200_000:
        dims = [max(1, d // 2) for d in dims]
    dtype = rng.choice(DTYPES)
    view = rng.choice(["plain", "channels_last", "permuted", "sliced", "strided", "transposed", "expanded"])
    if view == "channels_last" and nd == 4:
        x = _values(rng, dims, dtype, thresholds).contiguous(memory_format=torch.channels_last)
    elif view == "permuted":
        order = list(range(nd))
        rng.shuffle(order)
        x = _values(rng, [dims[p] for p in order], dtype, thresholds).permute(*[order.index(i) for i in range(nd)])
    elif view == "sliced":
        extra = [rng.choice([0, 1, 3]) for _ in dims]
        x = _values(rng, [d + e for d, e in zip(dims, extra, strict=True)], dtype, thresholds)
        x = x[tuple(slice(rng.randrange(e + 1), None) for e in extra)][tuple(slice(0, d) for d in dims)]
    elif view == "strided":
        steps = [rng.choice([1, 2]) for _ in dims]
        x = _values(rng, [d * s for d, s in zip(dims, steps, strict=True)], dtype, thresholds)
        x = x[tuple(slice(None, None, s) for s in steps)]
    elif view == "transposed" and nd >= 2:
        x = _values(rng, dims, dtype, thresholds).transpose(0, nd - 1).contiguous().transpose(0, nd - 1)
    elif view == "expanded" and nd >= 2:
        x = _values(rng, [1, *dims[1:]], dtype, thresholds).expand(*dims)
    else:
        x = _values(rng, dims, dtype, thresholds)
    return x, rng.randrange(-nd, nd)


def _describe(x: torch.Tensor, *rest: object) -> str:
    return f"shape {tuple(x.shape)} strides {x.stride()} {x.dtype} " + " ".join(map(str, rest))


SEEDS = [*DEFAULT_SEEDS, *(pytest.param(s, marks=pytest.mark.slow) for s in SLOW_SEEDS)]


@pytest.fixture
def triton_interpreter(monkeypatch):
    """The Triton kernels on CPU tensors, through the interpreter (tests/test_kernels_triton.py does the same)."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    return ("cpu", "triton")


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
def test_random_counts_equal_reference(device_backend, seed):
    _check_counts(device_backend, seed)


# The interpreter runs the kernel in numpy, which warns on inf - inf and the like in GELU and padding lanes.
INTERPRETER_WARNINGS = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")


@INTERPRETER_WARNINGS
@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
def test_random_counts_equal_reference_triton_interpreted(triton_interpreter, seed):
    _check_counts(triton_interpreter, seed)


def _draw(
    rng: random.Random, device: str, thresholds: tuple[float, ...]
) -> tuple[torch.Tensor, int, bool, torch.Tensor]:
    """A random case on ``device``: the tensor, its channel dim, ``ignore_ties`` and the reference counts."""
    x, channel_dim = _case(rng, thresholds)
    ignore_ties = rng.random() < 0.3
    x = x.to(device)
    want = count_states(x, thresholds, channel_dim=channel_dim, ignore_ties=ignore_ties, backend="torch")
    return x, channel_dim, ignore_ties, want


def _check_counts(device_backend: tuple[str, str], seed: int) -> None:
    device, backend = device_backend
    rng = random.Random(seed)
    for _ in range(CASES_PER_SEED):
        thresholds = _thresholds(rng)
        x, channel_dim, ignore_ties, want = _draw(rng, device, thresholds)
        got = count_states(x, thresholds, channel_dim=channel_dim, ignore_ties=ignore_ties, backend=backend)
        assert torch.equal(got, want), _describe(x, thresholds, channel_dim, ignore_ties)


# Model-sized cases (slow): activation maps like the benchmarked ones, large enough for every blocked and threaded
# path of the CPU kernels (bitmap blocks, byte-lane blocks of 255 positions, word tiles, the cache limits) and for
# full GPU grids, with NaN and the like either dense or as one value in millions (a block that must be recounted).
MODEL_CHANNELS = [1, 3, 63, 64, 65, 96, 192, 255, 256, 384, 576, 1280, 1281, 2048]
MODEL_MAPS = [1, 3, 7, 8, 14, 15, 28, 32, 33, 56, 57, 112]
MODEL_BATCHES = [1, 2, 3, 17, 32]
MODEL_MAX_ELEMENTS = 6_000_000
MODEL_CASES_PER_SEED = 24


def _model_sized_case(rng: random.Random, thresholds: tuple[float, ...]) -> tuple[torch.Tensor, int]:
    """A random activation map of model size, in NCHW, channels_last, tokens (N, L, C) or a channel slice."""
    n, c, hw = rng.choice(MODEL_BATCHES), rng.choice(MODEL_CHANNELS), rng.choice(MODEL_MAPS)
    while n * c * hw * hw > MODEL_MAX_ELEMENTS:
        n, hw = (n // 2, hw) if n > 1 else (n, hw // 2)
    dtype = rng.choice(DTYPES)
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    x = torch.randn(n * c * hw * hw, generator=gen, dtype=torch.float64) * rng.choice([1e-3, 0.5, 2.0, 10.0])
    pool = {"ties": thresholds, "specials": tuple(SPECIAL), "clean": ()}[rng.choice(["ties", "specials", "clean"])]
    if pool:
        picks = torch.randint(0, x.numel(), (rng.choice([1, 3, max(1, x.numel() // 8)]),), generator=gen)
        x[picks] = torch.tensor(pool, dtype=torch.float64)[torch.randint(0, len(pool), picks.shape, generator=gen)]
    x = x.to(dtype)
    layout = rng.choice(["nchw", "channels_last", "tokens", "channel_slice"])
    if layout == "channels_last":
        return x.reshape(n, hw, hw, c).permute(0, 3, 1, 2), 1
    if layout == "tokens":
        return x.reshape(n, hw * hw, c), 2
    x = x.reshape(n, c, hw, hw)
    return (x[:, c // 3 :] if layout == "channel_slice" else x), 1


def _model_sized_draws(rng: random.Random, device: str, threshold_sets: list[tuple[float, ...]]):
    """A model-sized case on ``device`` for each threshold set, each under a random number of CPU threads (1-5;
    the kernels split work by it), restored afterwards: yields (x, channel_dim, thresholds, ignore_ties, where)."""
    before = torch.get_num_threads()
    try:
        for thresholds in threshold_sets:
            torch.set_num_threads(rng.choice([1, 2, 3, 5]))
            x, channel_dim = _model_sized_case(rng, thresholds)
            ignore_ties = rng.random() < 0.3
            where = _describe(x, thresholds, channel_dim, ignore_ties, f"threads {torch.get_num_threads()}")
            yield x.to(device), channel_dim, thresholds, ignore_ties, where
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2], ids=lambda s: f"seed{s}")
def test_random_model_sized_counts_equal_reference(device_backend, seed):
    device, backend = device_backend
    rng = random.Random(2000 + seed)
    threshold_sets = [_thresholds(rng) for _ in range(MODEL_CASES_PER_SEED)]
    for x, channel_dim, thresholds, ignore_ties, where in _model_sized_draws(rng, device, threshold_sets):
        want = count_states(x, thresholds, channel_dim=channel_dim, ignore_ties=ignore_ties, backend="torch")
        got = count_states(x, thresholds, channel_dim=channel_dim, ignore_ties=ignore_ties, backend=backend)
        assert torch.equal(got, want), where


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1], ids=lambda s: f"seed{s}")
def test_random_model_sized_fused_activations_equal_torch(device_backend, seed):
    device, backend = device_backend
    on_cuda = _on_cuda(device_backend)
    rng = random.Random(3000 + seed)
    kinds = [_activation(rng) for _ in range(MODEL_CASES_PER_SEED)]
    knees = [default_thresholds(kind, params) for kind, params in kinds]
    for (kind, params), (x, channel_dim, thresholds, ignore_ties, where) in zip(
        kinds, _model_sized_draws(rng, device, knees), strict=True
    ):
        want_counts = count_states(x, thresholds, channel_dim=channel_dim, ignore_ties=ignore_ties, backend="torch")
        counts = torch.zeros_like(want_counts)
        y = fused_activation(
            x, kind, counts, channel_dim=channel_dim, ignore_ties=ignore_ties, backend=backend, **params
        )
        where = f"{where} {kind} {params}"
        _assert_fused(x, y, counts, want_counts, kind, params, on_cuda, where)


def _on_cuda(device_backend: tuple[str, str]) -> bool:
    """Whether the kernels compute as CUDA does: on a GPU, or the emulated CUDA kernels on the CPU."""
    return device_backend[0] == "cuda" or tuple(device_backend) == cuda_emulated.PAIR


def _assert_fused(  # noqa: PLR0913
    x: torch.Tensor,
    y: torch.Tensor,
    counts: torch.Tensor,
    want_counts: torch.Tensor,
    kind: str,
    params: dict[str, object],
    on_cuda: bool,
    where: str,
) -> None:
    """A fused activation's counts equal the reference's, and its output torch's (GELU: the float64 oracle)."""
    assert torch.equal(counts, want_counts), where
    want = _want(x, kind, params, on_cuda)
    if kind == "gelu":
        assert_gelu_close(y.cpu(), want, where)
    else:
        assert_bit_equal(y.cpu(), want, where)


def _activation(rng: random.Random) -> tuple[str, dict[str, object]]:
    kind = rng.choice(["relu", "hardtanh", "leaky_relu", "gelu"])
    if kind == "hardtanh":
        low, high = rng.choice([(0.0, 6.0), (-1.0, 1.0), (-0.3, 2.7), (0.1, 0.5), (-0.0, 1.0)])
        return kind, {"min_val": low, "max_val": high}
    if kind == "leaky_relu":
        return kind, {"negative_slope": rng.choice([0.01, 0.2, 0.0, 1.5])}
    if kind == "gelu":
        return kind, {"approximate": rng.choice(["none", "tanh"])}
    return kind, {}


def _want(x: torch.Tensor, kind: str, params: dict[str, object], on_cuda: bool) -> torch.Tensor:
    """torch's activation of x, computed on the CPU as torch computes it on the device the kernels ran for; GELU
    from the float64 oracle."""
    if kind == "gelu":
        return gelu_float64(x.cpu(), str(params["approximate"])).to(x.dtype)
    y = torch_activation(x.cpu(), kind, params)
    return as_cuda_computes(y, x.cpu(), kind, float(params.get("min_val", 0.0))) if on_cuda else y


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
def test_random_fused_activations_equal_torch(device_backend, seed):
    _check_fused(device_backend, seed)


@INTERPRETER_WARNINGS
@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
def test_random_fused_activations_equal_torch_triton_interpreted(triton_interpreter, seed):
    _check_fused(triton_interpreter, seed)


def _check_fused(device_backend: tuple[str, str], seed: int) -> None:
    device, backend = device_backend
    on_cuda = _on_cuda(device_backend)
    rng = random.Random(1000 + seed)
    for _ in range(CASES_PER_SEED // 2):
        kind, params = _activation(rng)
        own = rng.random() < 0.5
        thresholds = _thresholds(rng) if own else default_thresholds(kind, params)
        x, channel_dim, ignore_ties, want_counts = _draw(rng, device, thresholds)
        counts = torch.zeros_like(want_counts)
        y = fused_activation(
            x, kind, counts, channel_dim=channel_dim, thresholds=thresholds if own else None,
            ignore_ties=ignore_ties, backend=backend, **params,
        )  # fmt: skip
        where = _describe(x, kind, params, thresholds, channel_dim, ignore_ties)
        _assert_fused(x, y, counts, want_counts, kind, params, on_cuda, where)
