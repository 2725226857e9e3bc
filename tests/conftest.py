"""Shared test setup: `gpu` tests skip with a reason where no CUDA GPU is present; kernel backends as params.

A test that takes ``device_backend`` runs once per ``(device, backend)`` pair whose compiled or Triton
backend can run here (the torch reference is what they are compared with). CUDA pairs carry the ``gpu``
mark; without a GPU a single placeholder CUDA pair is collected and skipped, so a run says what it did not
cover. Triton is listed for CPU tensors only under ``TRITON_INTERPRET=1``. Where nvcc is installed, the pair
``("cpu", "cuda")`` (id ``cpu-cuda_emulated``) runs the CUDA kernels on CPU tensors through an emulation
(tests/cuda_emulated.py): during those tests the dispatcher's ``cuda`` backend is the emulated one.
"""

from __future__ import annotations

import cpu_variants
import cuda_emulated
import pytest
import torch

from nepenthe.kernels import available_backends, cpu_backend, dispatch


def pytest_collection_finish(session: pytest.Session) -> None:
    # The CPU extension's builds for other x86 CPUs compile on the core the other tests leave idle (cpu_variants.py).
    archs = {
        item.callspec.params["portable_ext"]
        for item in session.items
        if "portable_ext" in getattr(getattr(item, "callspec", None), "params", {})
    }
    if archs:
        from test_kernels_portable_build import start_portable_builds

        start_portable_builds(archs)


def pytest_sessionfinish(session: pytest.Session) -> None:
    cpu_variants.stop_builds()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _device_backends() -> list[object]:
    params: list[object] = []
    for device in ("cpu", "cuda"):
        if device == "cuda" and not torch.cuda.is_available():
            params.append(pytest.param(("cuda", "cuda"), marks=pytest.mark.gpu, id="cuda-cuda"))
            continue
        marks = [pytest.mark.gpu] if device == "cuda" else []
        for name in available_backends(device):
            if name != "torch":
                params.append(pytest.param((device, name), marks=marks, id=f"{device}-{name}"))
    if cuda_emulated.available():
        params.append(pytest.param(cuda_emulated.PAIR, id=cuda_emulated.PAIR_ID))
    return params


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "device_backend" in metafunc.fixturenames:
        metafunc.parametrize("device_backend", _device_backends())


@pytest.fixture(scope="session")
def emulated_cuda_backend(tmp_path_factory):
    """The CUDA kernels built as host code, as a dispatcher backend for CPU tensors (built once per session)."""
    return cuda_emulated.backend(cuda_emulated.build_extension(tmp_path_factory.mktemp("cuda_emulated")))


@pytest.fixture(autouse=True)
def _dispatch_emulated_cuda(request):
    """For the ``cpu-cuda_emulated`` pair, the dispatcher's ``cuda`` backend is the emulation during the test."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is None or callspec.params.get("device_backend") != cuda_emulated.PAIR:
        yield
        return
    saved = dispatch._loaded
    dispatch._loaded = {**saved, "cuda": request.getfixturevalue("emulated_cuda_backend")}
    try:
        yield
    finally:
        dispatch._loaded = saved


@pytest.fixture(scope="module")
def one_thread():
    """Run a test module with one torch thread, restoring the count after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def every_fused_call_runs_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """fused_activation runs the backend's fused kernel even where the cpu backend would rather count and call torch's
    activation (``cpu_backend.fused_one_pass``: GELU in bfloat16, float64, and float32 in AVX2 builds): for the tests
    of the kernels."""
    monkeypatch.setattr(cpu_backend, "fused_one_pass", lambda plan: True)
