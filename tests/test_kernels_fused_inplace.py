"""``fused_activation_``: the activation written over its input, and the input's states counted, in one call.

The oracle is torch's own activation of a copy of the input (bit for bit; GELU within tolerance) and the reference
counts of that copy. On the cpu backend the extension gets y = x: every path that writes the output as it reads
the input (the bitmap fills, byte and word lanes, sign and word rows) must write only what it has counted,
because a block, item or row that holds NaN is read again to be counted exactly. The inputs put NaN next to
values above ReLU6's 6 and below leaky_relu's knee, which the activation changes: a recount that read the output
would miscount them.
"""

from __future__ import annotations

import math
import zlib

import cuda_emulated
import pytest
import torch
from activation_oracles import as_cuda_computes, assert_bit_equal, assert_gelu_close, torch_activation

from nepenthe.kernels import available_backends, cpu_backend, dispatch, fused_activation_
from nepenthe.kernels.fused_plan import default_thresholds
from nepenthe.kernels.reference import count_states_reference

needs_cpu = pytest.mark.skipif("cpu" not in available_backends(), reason="the cpu extension is not built")


@pytest.fixture
def kernel_calls(monkeypatch) -> list[bool]:
    """The cpu backend's in-place kernel for every layout and dtype (its own choice leaves some to the count and
    torch's pass): one entry per extension call, True when it got y = x."""
    calls: list[bool] = []
    kernel = cpu_backend.fused_forward

    def spy(job):
        calls.append(job.y is job.x)
        kernel(job)

    monkeypatch.setattr(cpu_backend, "fused_in_place", lambda plan: True)
    monkeypatch.setattr(cpu_backend, "fused_forward", spy)
    return calls


KINDS = [
    ("relu", {}, None),
    ("hardtanh", {"min_val": 0.0, "max_val": 6.0}, None),
    ("hardtanh", {"min_val": -1.0, "max_val": 0.3}, None),
    ("leaky_relu", {"negative_slope": 0.1}, None),
    ("leaky_relu", {"negative_slope": 0.1}, (-0.5, 0.0)),
    ("relu", {}, (0.0, 1.0)),
    ("gelu", {"approximate": "tanh"}, None),
]
KIND_IDS = ["relu", "relu6", "hardtanh", "leaky", "leaky-below", "relu-2", "gelu"]

# (shape, channels_last, channel_dim): 7x7 and 14x14 maps (bitmap rows), 56x56 (long rows), channels_last maps
# of 64, 96 and 1312 channels (byte and word lanes, tiles), tokens, and (N, C).
SHAPES = [
    ((6, 163, 7, 7), False, 1),
    ((3, 40, 14, 14), False, 1),
    ((2, 5, 56, 56), False, 1),
    ((4, 64, 9, 7), True, 1),
    ((3, 96, 6, 6), True, 1),
    ((2, 1312, 3, 3), True, 1),
    ((3, 50, 128), False, -1),
    ((300, 33), False, 1),
]
SHAPE_IDS = ["7x7", "14x14", "56x56", "cl64", "cl96", "cl1312", "tokens", "nc"]


def _input(shape: tuple[int, ...], channels_last: bool, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Values around the knees, NaN in about one block in three, and infinities."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 5
    x = torch.where(torch.rand(shape, generator=gen) < 0.2, torch.round(x), x)
    flat = x.view(-1)
    nans = torch.randint(0, flat.numel(), (max(1, flat.numel() // 3000),), generator=gen)
    flat[nans] = math.nan
    flat[7] = math.nan
    flat[-1] = math.inf
    flat[flat.numel() // 2] = -math.inf
    x = x.to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@needs_cpu
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("shape,channels_last,channel_dim", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("kind,params,thresholds", KINDS, ids=KIND_IDS)
def test_in_place_matches_torch_and_reference(
    kind, params, thresholds, shape, channels_last, channel_dim, dtype, threads, kernel_calls
):
    seed = zlib.crc32(repr((kind, params, thresholds, shape, channels_last, dtype)).encode())
    x = _input(shape, channels_last, dtype, seed)
    if kind == "gelu":  # torch's vectorized GELU turns +-inf into NaN; the fused kernel gives the limit
        x = torch.nan_to_num(x, nan=math.nan, posinf=3.0, neginf=-3.0)
    original = x.clone()
    states = default_thresholds(kind, params) if thresholds is None else thresholds
    want_counts = count_states_reference(original, states, channel_dim, False)
    want_y = torch_activation(original, kind, params)
    counts = torch.zeros(x.shape[channel_dim], len(states) + 1, dtype=torch.int64)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = fused_activation_(
            x, kind, counts, channel_dim=channel_dim, thresholds=thresholds, backend="cpu", **params
        )
    finally:
        torch.set_num_threads(before)
    assert got is x and kernel_calls == [True]
    assert x.stride() == original.stride()
    if kind == "gelu":
        assert_gelu_close(x, want_y)
    else:
        assert_bit_equal(x, want_y)
    assert torch.equal(counts, want_counts)


@needs_cpu
@pytest.mark.parametrize(
    "shape,channels_last",
    [((32, 96, 28, 28), False), ((32, 96, 28, 28), True), ((8, 64, 56, 56), True)],
    ids=["nchw", "cl96", "cl64"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("kind,params,thresholds", KINDS[:2], ids=KIND_IDS[:2])
def test_in_place_on_a_large_map_adds_into_counts(kind, params, thresholds, shape, channels_last, dtype, kernel_calls):
    """A map large enough for two threads' items and every path's blocks, counted twice into the same counts. The
    channels_last maps take several blocks of byte lanes (float32 ReLU: 255 positions each) and chunks of float32 or
    16-bit word lanes (128 KiB each), each written once it is counted, some of them holding NaN."""
    x = _input(shape, channels_last, dtype, 11)
    original = x.clone()
    states = default_thresholds(kind, params)
    counts = torch.zeros(shape[1], len(states) + 1, dtype=torch.int64)
    fused_activation_(x, kind, counts, backend="cpu", **params)
    assert_bit_equal(x, torch_activation(original, kind, params))
    fused_activation_(original.clone(), kind, counts, backend="cpu", **params)
    assert torch.equal(counts, 2 * count_states_reference(original, states, 1, False))
    assert kernel_calls == [True, True]


@needs_cpu
@pytest.mark.parametrize(
    "shape,channels_last,dtype,kind,chosen",
    [((2, 8, 56, 56), False, torch.float32, "relu", True), ((2, 8, 7, 7), False, torch.float32, "relu", True),
     ((2, 8, 7, 7), True, torch.float32, "relu", True), ((2, 8, 7, 7), True, torch.bfloat16, "relu", True),
     ((2, 8, 7, 7), False, torch.float16, "relu", True), ((50, 8), False, torch.float32, "relu", True),
     ((50, 8), False, torch.float16, "relu", True), ((2, 8, 7, 7), False, torch.float64, "relu", True),
     ((2, 8, 7, 7), True, torch.float64, "relu", True), ((2, 8, 7, 7), True, torch.float32, "gelu", True),
     ((2, 8, 7, 7), False, torch.float64, "gelu", False), ((2, 8, 7, 7), True, torch.float64, "gelu", False),
     ((2, 8, 7, 7), False, torch.bfloat16, "gelu", False), ((2, 8, 7, 7), True, torch.bfloat16, "gelu", True),
     ((50, 8), False, torch.bfloat16, "gelu", True), ((2, 8, 7, 7), False, torch.float16, "gelu", True)],
    ids=["56x56", "7x7", "cl7x7", "cl7x7-bf16", "7x7-f16", "nc", "nc-f16", "7x7-f64", "cl7x7-f64", "cl7x7-gelu",
         "7x7-f64-gelu", "cl7x7-f64-gelu", "7x7-bf16-gelu", "cl7x7-bf16-gelu", "nc-bf16-gelu", "7x7-f16-gelu"],
)  # fmt: skip
def test_cpu_backend_chooses_its_kernel_where_it_measured_faster(
    shape, channels_last, dtype, kind, chosen, monkeypatch
):
    calls: list[bool] = []
    kernel = cpu_backend.fused_forward
    monkeypatch.setattr(cpu_backend, "fused_forward", lambda job: (calls.append(job.y is job.x), kernel(job)))
    x = _input(shape, channels_last, dtype, 9)
    if kind == "gelu":  # no infinities: torch's GELU of -inf is NaN, as is the kernel's, but compare finite values
        x = torch.nan_to_num(x, nan=math.nan, posinf=3.0, neginf=-3.0)
    original = x.clone()
    counts = torch.zeros(8, 2, dtype=torch.int64)
    fused_activation_(x, kind, counts, backend="cpu")
    assert calls == ([True] if chosen else [])
    if kind == "gelu":
        assert_gelu_close(x, torch_activation(original, kind, {"approximate": "none"}))
    else:
        assert_bit_equal(x, torch.relu(original))
    assert torch.equal(counts, count_states_reference(original, (0.0,), 1, False))


@pytest.mark.parametrize("kind,params,thresholds", KINDS, ids=KIND_IDS)
def test_other_backends_count_then_activate_in_place(kind, params, thresholds):
    """The torch backend has no in-place kernel: x is counted, then activated by torch's in-place operation."""
    x = _input((4, 19, 5, 7), False, torch.float32, 3)
    if kind == "gelu":
        x = torch.nan_to_num(x, nan=math.nan, posinf=3.0, neginf=-3.0)
    original = x.clone()
    states = default_thresholds(kind, params) if thresholds is None else thresholds
    counts = torch.zeros(19, len(states) + 1, dtype=torch.int64)
    assert fused_activation_(x, kind, counts, thresholds=thresholds, backend="torch", **params) is x
    assert torch.equal(counts, count_states_reference(original, states, 1, False))
    if kind == "gelu":
        assert_gelu_close(x, torch_activation(original, kind, params))
    else:
        assert_bit_equal(x, torch_activation(original, kind, params))


@pytest.mark.parametrize("backend", [None, "torch"])
def test_recorded_by_autograd_like_torch_in_place(backend):
    """x produced by a graph: the in-place activation is recorded as torch's own, so gradients are torch's."""
    w = torch.randn(6, 5, 4, 4, requires_grad=True)
    counts = torch.zeros(5, 3, dtype=torch.int64)
    y = fused_activation_(w * 2.0, "hardtanh", counts, backend=backend, min_val=0.0, max_val=6.0)
    y.sum().backward()
    w_ref = w.detach().clone().requires_grad_(True)
    torch.nn.functional.hardtanh(w_ref * 2.0, 0.0, 6.0, inplace=True).sum().backward()
    assert torch.equal(w.grad, w_ref.grad)
    assert torch.equal(counts, count_states_reference((w * 2.0).detach(), (0.0, 6.0), 1, False))


@needs_cpu
def test_kernel_marks_x_changed_for_graphs_that_saved_it(kernel_calls):
    """x needs no gradient, but a product recorded it for its other factor's: as after torch's relu_, the backward
    pass refuses to use the overwritten x."""
    w = torch.randn(4, 3, 5, 5, requires_grad=True)
    x = torch.randn(4, 3, 5, 5)
    product = w * x
    fused_activation_(x, "relu", torch.zeros(3, 2, dtype=torch.int64), backend="cpu")
    assert kernel_calls == [True]
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        product.sum().backward()


def test_recorded_gelu_is_refused():
    w = torch.randn(2, 3, requires_grad=True)
    counts = torch.zeros(3, 2, dtype=torch.int64)
    with pytest.raises(ValueError, match="gelu has no in-place form"):
        fused_activation_(w * 1.0, "gelu", counts, approximate="none")
    assert int(counts.sum()) == 0


@needs_cpu
def test_layout_that_needs_a_copy_still_writes_x(kernel_calls):
    """A strided view that no channel view describes with two strides: counted from a copy, activated in x."""
    base = _input((3, 8, 5, 6), False, torch.float32, 5)
    x = base[:, :, ::2, ::2]  # strides (240, 30, 12, 2)
    original = x.clone()
    counts = torch.zeros(8, 2, dtype=torch.int64)
    assert fused_activation_(x, "relu", counts, backend="cpu") is x
    assert kernel_calls == []  # counted from a copy, then activated by torch in place
    assert_bit_equal(x, torch.relu(original))
    assert_bit_equal(base[:, :, ::2, ::2], torch.relu(original))
    assert not torch.equal(base[:, :, 1::2], torch.relu(base[:, :, 1::2]))  # the rows between are left alone
    assert torch.equal(counts, count_states_reference(original, (0.0,), 1, False))


# The GPU kernels' paths: long rows (with a head before the first 16-byte boundary when x starts one value in),
# short rows, 16-byte channel groups, channels that fit no group, tokens and (N, C).
GPU_SHAPES = [
    ((2, 3, 33, 31), False, 1, 0),
    ((2, 3, 33, 31), False, 1, 1),
    ((4, 19, 5, 7), False, 1, 0),
    ((2, 64, 5, 3), True, 1, 0),
    ((3, 19, 4, 5), True, 1, 0),
    ((3, 50, 128), False, -1, 0),
    ((300, 33), False, 1, 0),
]
GPU_SHAPE_IDS = ["rows", "rows-offset", "short-rows", "cl64", "cl19", "tokens", "nc"]
GPU_KINDS = [KINDS[0], KINDS[1], KINDS[3], KINDS[6]]
GPU_KIND_IDS = [KIND_IDS[0], KIND_IDS[1], KIND_IDS[3], KIND_IDS[6]]


def _gpu_input(shape, channels_last, offset, dtype, device, seed) -> torch.Tensor:
    """``_input`` on ``device``, starting ``offset`` values into its storage (still dense, so one pass takes it)."""
    x = _input(shape, channels_last, dtype, seed)
    if offset:
        flat = torch.empty(x.numel() + offset, dtype=dtype)
        x = flat[offset:].view(shape).copy_(x)
    return x.to(device)


def _expected(original: torch.Tensor, kind: str, params: dict, emulated: bool) -> torch.Tensor:
    want = torch_activation(original, kind, params)
    if emulated:  # the CUDA kernels on CPU tensors give what torch's CUDA kernels give (-0.0 at a bound: +0.0)
        want = as_cuda_computes(want, original, kind, params.get("min_val", 0.0))
    return want


def _check_in_place(x, original, kind, params, thresholds, channel_dim, backend, emulated, calls) -> None:
    states = default_thresholds(kind, params) if thresholds is None else thresholds
    counts = torch.zeros(x.shape[channel_dim], len(states) + 1, dtype=torch.int64, device=x.device)
    got = fused_activation_(x, kind, counts, channel_dim=channel_dim, thresholds=thresholds, backend=backend,
                            **params)  # fmt: skip
    assert got is x and calls == [True]
    if kind == "gelu":
        assert_gelu_close(x, torch_activation(original, kind, params))
    else:
        assert_bit_equal(x, _expected(original, kind, params, emulated))
    assert torch.equal(counts.cpu(), count_states_reference(original.cpu(), states, channel_dim, False))


def _spy_on(monkeypatch, backend: str) -> list[bool]:
    """One entry per call of the dispatcher's ``backend``'s fused kernel, True when it got y = x."""
    module = dispatch._loaded[backend]
    kernel = module.fused_forward
    calls: list[bool] = []

    def spy(job):
        calls.append(job.y is job.x)
        kernel(job)

    monkeypatch.setattr(module, "fused_forward", spy)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("shape,channels_last,channel_dim,offset", GPU_SHAPES, ids=GPU_SHAPE_IDS)
@pytest.mark.parametrize("kind,params,thresholds", GPU_KINDS, ids=GPU_KIND_IDS)
def test_gpu_kernels_write_x_in_place(
    device_backend, kind, params, thresholds, shape, channels_last, channel_dim, offset, dtype, monkeypatch
):
    """The cuda kernels (on a GPU, or emulated on CPU tensors) and Triton's (on a GPU) take y = x on every dense
    layout: each value is read once, by the thread that then writes its activation. The cpu extension runs these
    inputs too. The cpu and triton backends are forced to their kernel on every layout (their own choice leaves
    some to a count and torch's op: test_cpu_backend_chooses_..., test_triton_takes_one_pass_...)."""
    device, backend = device_backend
    if backend in ("cpu", "triton"):
        monkeypatch.setattr(dispatch._loaded[backend], "fused_in_place", lambda plan: True)
    if device == "cpu" and backend == "triton":
        pytest.skip("interpreted Triton: test_triton_interpreted_writes_x_in_place")
    seed = zlib.crc32(repr((kind, params, shape, offset, dtype)).encode())
    x = _gpu_input(shape, channels_last, offset, dtype, device, seed)
    if kind == "gelu":
        x = torch.nan_to_num(x, nan=math.nan, posinf=3.0, neginf=-3.0)
    original = x.clone()
    calls = _spy_on(monkeypatch, backend)
    emulated = tuple(device_backend) == cuda_emulated.PAIR
    _check_in_place(x, original, kind, params, thresholds, channel_dim, backend, emulated, calls)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape,channels_last,channel_dim,offset", GPU_SHAPES[1:5], ids=GPU_SHAPE_IDS[1:5])
@pytest.mark.parametrize("kind,params,thresholds", GPU_KINDS[1:3], ids=GPU_KIND_IDS[1:3])
def test_triton_interpreted_writes_x_in_place(
    kind, params, thresholds, shape, channels_last, channel_dim, offset, dtype, monkeypatch
):
    """Triton's kernel, interpreted on CPU tensors, given y = x."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    if "triton" not in available_backends("cpu"):
        pytest.skip("Triton's interpreter cannot run nepenthe's kernel here (`python -m nepenthe doctor` says why)")
    seed = zlib.crc32(repr((kind, params, shape, offset, dtype, "triton")).encode())
    x = _gpu_input(shape, channels_last, offset, dtype, "cpu", seed)
    original = x.clone()
    calls = _spy_on(monkeypatch, "triton")
    _check_in_place(x, original, kind, params, thresholds, channel_dim, "triton", False, calls)


@pytest.mark.parametrize(
    "shape,channels_last,dtype,one_pass",
    [((2, 96, 5, 5), True, torch.float16, False), ((2, 96, 5, 5), True, torch.bfloat16, False),
     ((2, 96, 5, 5), True, torch.float32, True), ((2, 96, 5, 5), False, torch.float16, True),
     ((2, 64, 5, 5), True, torch.float16, True), ((2, 1280, 5, 5), True, torch.float16, True),
     ((2, 19, 5, 5), True, torch.float16, True)],
    ids=["cl96-f16", "cl96-bf16", "cl96-f32", "nchw96-f16", "cl64-f16", "cl1280-f16", "cl19-f16"],
)  # fmt: skip
def test_triton_takes_one_pass_unless_channel_blocks_share_lines(shape, channels_last, dtype, one_pass):
    """Triton's channel blocks narrower than a cache line (96 16-bit channels in blocks of 32: 64-byte rows) were
    slower in place on the H200 than a count and torch's op: those, and only those, take the count."""
    pytest.importorskip("triton")
    from nepenthe.kernels import triton_backend
    from nepenthe.kernels.fused_plan import fused_plan

    x = torch.empty(shape, dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    assert triton_backend.fused_in_place(fused_plan(x, "relu", {}, None, 1, False)) is one_pass


def _refused(x: torch.Tensor, match: str, **kw) -> None:
    """fused_activation_ raises naming why, before counting or writing anything."""
    before = x.detach().clone()
    counts = torch.zeros(x.shape[1], 2, dtype=torch.int64)
    with pytest.raises(RuntimeError, match=match):
        fused_activation_(x, "relu", counts, **kw)
    assert int(counts.abs().sum()) == 0
    assert_bit_equal(x.detach(), before)


# The default backend's kernel (the cpu backend's, where it loaded), and the torch backend's count then torch's op.
WRITE_BACKENDS = [None, "torch"]


@pytest.mark.parametrize("backend", WRITE_BACKENDS, ids=["kernel", "count-then-torch"])
def test_inference_tensor_outside_inference_mode_is_refused(backend):
    with torch.inference_mode():
        x = _input((2, 8, 56, 56), True, torch.float32, 21)
    _refused(x, "inference tensor", backend=backend)
    original = x.clone()
    counts = torch.zeros(8, 2, dtype=torch.int64)
    with torch.inference_mode():  # where torch's own relu_ may write it, so may fused_activation_
        fused_activation_(x, "relu", counts, backend=backend)
    assert_bit_equal(x, torch.relu(original))
    assert torch.equal(counts, count_states_reference(original, (0.0,), 1, False))


@pytest.mark.parametrize("backend", WRITE_BACKENDS, ids=["kernel", "count-then-torch"])
def test_leaf_that_requires_grad_is_refused_while_autograd_records(backend):
    leaf = _input((2, 8, 56, 56), True, torch.float32, 22).requires_grad_(True)
    _refused(leaf, "leaf tensor that requires grad", backend=backend)
    _refused(leaf[1:], "leaf tensor that requires grad", backend=backend)  # a view of it
    original = leaf.detach().clone()
    counts = torch.zeros(8, 2, dtype=torch.int64)
    with torch.no_grad():  # where torch's own relu_ may write it, so may fused_activation_
        fused_activation_(leaf, "relu", counts, backend=backend)
    assert_bit_equal(leaf.detach(), torch.relu(original))
    assert torch.equal(counts, count_states_reference(original, (0.0,), 1, False))


def test_expanded_tensor_is_refused():
    x = torch.randn(3, 1, 4, 4).expand(3, 5, 4, 4)
    _refused(x, "several elements in one memory location")
