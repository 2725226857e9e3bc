"""The examples in the package's docstrings (``>>>``) run and print what they show, in every module of nepenthe.

Usage sketches that need the caller's model or data are written without prompts, so only runnable examples are
collected. ``python -m pytest --doctest-modules nepenthe`` runs the same examples.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import io
import pkgutil

import pytest

import nepenthe


def _python_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(nepenthe.__path__, "nepenthe."):
        spec = importlib.util.find_spec(info.name)
        if spec is not None and (spec.origin or "").endswith(".py") and not info.name.endswith("__main__"):
            names.append(info.name)
    return sorted(names)


MODULES = _python_modules()


def test_every_module_is_listed():
    assert {"nepenthe.kernels.fused", "nepenthe.kernels.triton_count", "nepenthe.surgery.constants"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    if name == "nepenthe.kernels.triton_count":
        pytest.importorskip("triton")
    module = importlib.import_module(name)
    report = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in doctest.DocTestFinder().find(module):
        runner.run(test, out=report.write)
    assert runner.failures == 0, report.getvalue()
