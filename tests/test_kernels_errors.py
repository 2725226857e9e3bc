"""Bad input raises a ValueError/TypeError naming the argument before any kernel runs; a backend that cannot run
says why; a missing extension never breaks ``import nepenthe``."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import nepenthe
from nepenthe.kernels import BackendUnavailable, count_states, cpu_backend, dispatch, fused_activation


def _sparse_csr(x: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # torch's "sparse CSR support is in beta" notice
        warnings.simplefilter("ignore", UserWarning)
        return x.to_sparse_csr()


def _nested(layout: torch.layout) -> torch.Tensor:
    with warnings.catch_warnings():  # torch's "nested tensors are in prototype stage" notice
        warnings.simplefilter("ignore", UserWarning)
        return torch.nested.nested_tensor([torch.ones(2, 3), torch.ones(4, 3)], layout=layout)


@pytest.mark.parametrize(
    "x,error,name",
    [
        (torch.ones(4, 3, dtype=torch.int32), TypeError, "x"),
        (torch.ones(4, 3, dtype=torch.bool), TypeError, "x"),
        (torch.ones(4, 3, dtype=torch.complex64), TypeError, "x"),
        ([1.0, 2.0], TypeError, "x"),
        (torch.tensor(1.0), ValueError, "x"),
        (torch.ones(4, 3).to_sparse(), TypeError, "x"),
        (_sparse_csr(torch.ones(4, 3)), TypeError, "x"),
        (_nested(torch.strided), TypeError, "x"),  # strided layout, but no sizes: failed inside torch before
        (_nested(torch.jagged), TypeError, "x"),
    ],
    ids=["int32", "bool", "complex", "list", "0-d", "sparse_coo", "sparse_csr", "nested", "nested_jagged"],
)
def test_bad_x(x, error, name):
    with pytest.raises(error, match=rf"\b{name}\b"):
        count_states(x)


@pytest.mark.parametrize("channel_dim,error", [(2, ValueError), (-3, ValueError), (1.0, TypeError), (True, TypeError)])
def test_bad_channel_dim(channel_dim, error):
    with pytest.raises(error, match="channel_dim"):
        count_states(torch.ones(4, 3), channel_dim=channel_dim)


@pytest.mark.parametrize(
    "thresholds,error",
    [
        ((1.0, 0.0), ValueError),
        ((0.0, 0.0), ValueError),
        ((), ValueError),
        (tuple(range(8)), ValueError),
        ((0.0, math.nan), ValueError),
        ((math.inf,), ValueError),
        (("a",), TypeError),
        (None, TypeError),
        ("0", TypeError),  # a str is a sequence of characters: it was read as (0.0,)
    ],
    ids=["decreasing", "equal", "empty", "eight", "nan", "inf", "string", "none", "str"],
)
def test_bad_thresholds(thresholds, error):
    counts = torch.zeros(3, 2, dtype=torch.int64)
    with pytest.raises(error, match="thresholds"):
        count_states(torch.ones(4, 3), thresholds, counts=counts)
    assert int(counts.abs().sum()) == 0  # nothing ran


@pytest.mark.parametrize(
    "counts,error",
    [
        (torch.zeros(3, 3, dtype=torch.int64), ValueError),
        (torch.zeros(4, 2, dtype=torch.int64), ValueError),
        (torch.zeros(3, 2, dtype=torch.int32), TypeError),
        (torch.zeros(3, 2, dtype=torch.float32), TypeError),
        (torch.zeros(2, 3, dtype=torch.int64).T, ValueError),
        (torch.zeros(3, 2, dtype=torch.int64, device="meta"), ValueError),
        ([[0, 0]] * 3, TypeError),
        (torch.zeros(3, 2, dtype=torch.int64).to_sparse(), TypeError),
    ],
    ids=["shape_k", "shape_c", "int32", "float", "non_contiguous", "other_device", "list", "sparse"],
)
def test_bad_counts(counts, error):
    with pytest.raises(error, match="counts"):
        count_states(torch.ones(4, 3), (0.0,), counts=counts)


def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match="backend"):
        count_states(torch.ones(4, 3), backend="opencl")


def test_backend_from_environment(monkeypatch):
    monkeypatch.setenv("NEPENTHE_BACKEND", "opencl")
    with pytest.raises(ValueError, match="backend"):
        count_states(torch.ones(4, 3))
    monkeypatch.setenv("NEPENTHE_BACKEND", "torch")
    assert count_states(torch.tensor([[-1.0], [2.0]])).tolist() == [[1, 1]]


def test_cuda_backend_on_cpu_tensor_says_why():
    with pytest.raises(BackendUnavailable, match="cuda") as err:
        count_states(torch.ones(4, 3), backend="cuda")
    reason = str(err.value)
    if torch.cuda.is_available() and "cuda" in nepenthe.available_backends("cuda"):
        assert "CUDA tensors only" in reason
    else:
        assert "not available" in reason and len(reason) > len("backend 'cuda' is not available: ")


def test_cpu_backend_on_cuda_tensor_says_why():
    assert "CPU tensors only" in cpu_backend.device_problem(torch.device("cuda", 0))
    assert cpu_backend.device_problem(torch.device("cpu")) is None


def test_missing_extension_reports_how_to_build(monkeypatch):
    """A missing nepenthe._cpu leaves the cpu backend out with a reason; the torch reference still counts."""
    monkeypatch.setattr(cpu_backend, "EXTENSION", "nepenthe._cpu_never_built")
    monkeypatch.setattr(dispatch, "_loaded", {})
    status = {s.name: s for s in nepenthe.backend_status()}
    assert not status["cpu"].loaded
    assert "nepenthe._cpu_never_built not built" in status["cpu"].reason and "pip install" in status["cpu"].reason
    assert "cpu" not in nepenthe.available_backends("cpu")
    with pytest.raises(BackendUnavailable, match="not built"):
        count_states(torch.ones(4, 3), backend="cpu")
    assert count_states(torch.tensor([[-1.0], [2.0]])).tolist() == [[1, 1]]  # falls back to torch


@pytest.mark.parametrize(
    "kind,params,name",
    [
        ("swish", {}, "kind"),
        ("hardtanh", {"min_val": 0.0}, "max_val"),
        ("hardtanh", {"min_val": 1.0, "max_val": 1.0}, "min_val"),
        ("leaky_relu", {}, "negative_slope"),
        ("gelu", {"approximate": "fast"}, "approximate"),
    ],
)
def test_bad_fused_arguments(kind, params, name):
    counts = torch.zeros(3, 2, dtype=torch.int64)
    with pytest.raises(ValueError, match=name):
        fused_activation(torch.ones(4, 3), kind, counts, **params)


def test_fused_bad_counts_and_input():
    with pytest.raises(ValueError, match="counts"):
        fused_activation(torch.ones(4, 3), "relu", torch.zeros(3, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="x"):
        fused_activation(torch.ones(4, 3, dtype=torch.int64), "relu", torch.zeros(3, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="x must be a dense"):
        fused_activation(torch.ones(4, 3).to_sparse(), "relu", torch.zeros(3, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="nested"):
        fused_activation(_nested(torch.strided), "relu", torch.zeros(3, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="thresholds"):
        fused_activation(torch.ones(4, 3), "relu", torch.zeros(3, 2, dtype=torch.int64), thresholds="0")


def test_triton_without_the_internals_the_kernel_uses_is_left_out_with_the_reason(monkeypatch):
    """A Triton release that drops ``tl.standard._sum_combine`` disables the backend at load, saying what is missing."""
    triton_standard = pytest.importorskip("triton.language.standard")
    monkeypatch.delattr(triton_standard, "_sum_combine")
    monkeypatch.setattr(dispatch, "_loaded", {})
    status = {s.name: s for s in nepenthe.backend_status()}
    assert not status["triton"].loaded
    assert "triton.language.standard._sum_combine" in status["triton"].reason
    assert "triton" not in nepenthe.available_backends()


def test_environment_backend_is_read_on_every_call(monkeypatch):
    from nepenthe.kernels.dispatch import select_backend

    cpu = torch.device("cpu")
    default = "cpu" if "cpu" in nepenthe.available_backends("cpu") else "torch"
    monkeypatch.delenv("NEPENTHE_BACKEND", raising=False)
    assert select_backend(cpu, None).NAME == default
    monkeypatch.setenv("NEPENTHE_BACKEND", "torch")
    assert select_backend(cpu, None).NAME == "torch"
    assert select_backend(cpu, "cpu" if default == "cpu" else "torch").NAME == default  # an argument wins
    monkeypatch.setenv("NEPENTHE_BACKEND", "")  # empty: as if unset
    assert select_backend(cpu, None).NAME == default
    monkeypatch.setenv("NEPENTHE_BACKEND", "torch")
    monkeypatch.delenv("NEPENTHE_BACKEND")
    assert select_backend(cpu, None).NAME == default


@pytest.mark.parametrize(
    "change,message",
    [
        ({"view": (1, 2, 3)}, "view must be (outer, C, inner"),
        ({"view": [1, 4, 1, 0, 1, 0.5]}, "view must hold integers"),
        ({"view": "123456"}, "view must be a tuple or list"),
        ({"greater": (), "tie": ()}, "need 1 to 7 thresholds"),
        ({"greater": (0.0,) * 8, "tie": (0.0,) * 8}, "greater has too many values"),
        ({"tie": (0.0, 1.0)}, "as many tie values"),
        ({"greater": ("a",)}, "greater must hold numbers"),
        ({"dtype": 9}, "unknown dtype code"),
    ],
)
def test_cpu_extension_names_a_bad_argument(change, message):
    """The extension reads its tuples itself (no std::vector casters): a bad one is a ValueError naming it."""
    if "cpu" not in nepenthe.kernels.available_backends("cpu"):
        pytest.skip("the cpu backend did not load here")
    x, counts = torch.ones(1, 4), torch.zeros(4, 2, dtype=torch.int64)
    args = {"x": x.data_ptr(), "dtype": 0, "view": (1, 4, 1, 0, 1, 0), "greater": (0.0,), "tie": (0.0,)}
    args.update(ignore_ties=False, counts=counts.data_ptr(), threads=1)
    cpu_backend._ext.count(**args)  # the unchanged call counts
    assert counts[:, 1].tolist() == [1, 1, 1, 1]
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        cpu_backend._ext.count(**{**args, **change})
    assert counts[:, 1].tolist() == [1, 1, 1, 1], "a rejected call must not count"
