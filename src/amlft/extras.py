"""The one way amlft imports a heavy, optional package.

Why: the core install is light (`amlft --help` imports no ML or cloud SDK), so any verb may
run where an extra is missing. Wrapping each function-level import in `needs_extra` turns
the resulting ModuleNotFoundError into a `MissingDependency` that names the extra to
install, instead of a traceback:

    with needs_extra("local", purpose="LoRA training"):
        import torch
        from peft import LoraConfig

or, where the module object itself is wanted,

    hub = require("huggingface_hub", extra="hub", purpose="Publishing to the Hub")

A missing module of amlft's own is a bug and keeps its traceback. The CLI's error funnel
also reports any ModuleNotFoundError for a package in EXTRA_OF that escapes unrouted the
same way, so a missed site still fails clearly.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from types import ModuleType

from amlft.errors import MissingDependency

__all__ = ["EXTRA_OF", "INSTALL_HINT", "extra_for", "missing_dependency", "needs_extra", "require"]

# top-level import name -> the extra that installs it (pyproject.toml [project.optional-dependencies])
EXTRA_OF: dict[str, str] = {
    "torch": "local",
    "transformers": "local",
    "peft": "local",
    "accelerate": "local",
    "tokenizers": "local",
    "safetensors": "local",
    "mlflow": "local",
    "starlette": "local",
    "uvicorn": "local",
    "psutil": "local",
    "gguf": "local",
    "matplotlib": "bench",
    "azure": "azure",
    "responses": "rehearse",
    "datasets": "data",
    "pyarrow": "data",
    "huggingface_hub": "hub",
    "onnxruntime_genai": "onnx",
    "onnxruntime": "onnx",
    "onnx": "onnx",
}

# extras whose install needs more than `pip install 'amlft[extra]'`
INSTALL_HINT: dict[str, str] = {
    "local": "pip install torch==2.13.0 && pip install 'amlft[local]'  "
             "(torch first and pinned: an unpinned torch pulls a multi-GB CUDA build)",
}


def extra_for(module: str) -> str | None:
    """The extra that provides `module` (dotted names resolve by their top-level package)."""
    return EXTRA_OF.get(module.split(".", 1)[0])


def missing_dependency(exc: ModuleNotFoundError, *, extra: str, purpose: str) -> MissingDependency | None:
    """The MissingDependency for `exc`, or None when it is not an optional package's absence.

    A module of amlft's own (or a nameless error) is a bug, not a missing extra: None. A known
    package names its own extra; anything else missing is attributed to `extra`.
    """
    missing = exc.name or ""
    if not missing or missing.split(".", 1)[0] == "amlft":
        return None
    owner = extra_for(missing) or extra
    err = MissingDependency(missing.split(".", 1)[0], extra=owner, purpose=purpose)
    if owner in INSTALL_HINT:
        err.hint = INSTALL_HINT[owner]
    return err


@contextlib.contextmanager
def needs_extra(extra: str, *, purpose: str = "This command") -> Iterator[None]:
    """Translate a missing optional package inside the block into MissingDependency."""
    try:
        yield
    except ModuleNotFoundError as exc:
        err = missing_dependency(exc, extra=extra, purpose=purpose)
        if err is None:  # our own module: a bug, keep the traceback
            raise
        raise err from exc


def require(module: str, *, extra: str, purpose: str) -> ModuleType:
    """Import and return an optional heavy module; missing, it raises MissingDependency naming `extra`."""
    with needs_extra(extra, purpose=purpose):
        return importlib.import_module(module)
    raise AssertionError("unreachable")  # pragma: no cover - needs_extra re-raises; this satisfies mypy
