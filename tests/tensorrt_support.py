"""When TensorRT tests may skip, and when a missing TensorRT must fail them instead.

A test that needs TensorRT is marked ``@pytest.mark.tensorrt`` (``rtx=True``: it needs TensorRT-RTX in
particular, which builds engines without a GPU), or a fixture calls :func:`require_tensorrt`. Where
the bindings cannot be used the test is skipped with the reason, except in CI (``CI`` set, as
``.ci/run`` runs) when the ``tensorrt`` extra is installed (its distributions' metadata is present):
there a binding that does not import or load its libraries is a broken install, and the test fails
naming the error, instead of a dozen TensorRT tests turning into silent skips.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os

import pytest

# setup.cfg's [options.extras_require] tensorrt: what `pip install "resnet-deploy[tensorrt]"` installs.
TENSORRT_EXTRA = ("tensorrt-rtx-cu13-bindings", "tensorrt-rtx-cu13-libs")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def tensorrt_extra_installed() -> list[str]:
    """``name version`` of each distribution of the tensorrt extra that is installed."""
    found = []
    for name in TENSORRT_EXTRA:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


@functools.lru_cache(maxsize=None)
def tensorrt_problem(rtx: bool = False) -> str | None:
    """Why TensorRT (with ``rtx``: TensorRT-RTX) cannot be used here, or None when it can."""
    try:
        if rtx:
            importlib.import_module("tensorrt_rtx_bindings")
        else:
            from resnet_deploy.export.tensorrt import import_tensorrt

            import_tensorrt()
    except Exception as exc:  # ImportError, OSError from a library that does not load, or anything else
        reasons = getattr(exc, "reasons", None)
        return f"{type(exc).__name__}: {exc}".strip() + (f" ({'; '.join(reasons)})" if reasons else "")
    return None


def require_tensorrt(rtx: bool = False) -> None:
    """Return when the bindings load; else skip, or in CI with the tensorrt extra installed, fail."""
    problem = tensorrt_problem(rtx)
    if problem is None:
        return
    what = "TensorRT-RTX bindings" if rtx else "TensorRT or TensorRT-RTX bindings"
    installed = tensorrt_extra_installed()
    if in_ci() and installed:
        pytest.fail(
            f"CI with the tensorrt extra installed ({', '.join(installed)}), but the {what} cannot be used: {problem}. "
            "A broken TensorRT install must fail CI, not skip the TensorRT tests (unset CI to skip them locally).",
            pytrace=False,
        )
    pytest.skip(f"{what} not usable here ({problem}); pip install 'resnet-deploy[tensorrt]'")
