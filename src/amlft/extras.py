"""The one way amlft imports a heavy, optional package.

Why: the core install is light (`amlft --help` imports no ML or cloud SDK), so any verb may
run where an extra is missing. Wrapping each function-level import in `needs_extra` turns
the resulting ModuleNotFoundError into a `MissingDependency` that names the extra to
install, instead of a traceback:

    with needs_extra("local", purpose="LoRA training"):
        import torch
        from peft import LoraConfig

A missing module of amlft's own is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from amlft.errors import MissingDependency

__all__ = ["EXTRA_OF", "INSTALL_HINT", "extra_for", "needs_extra"]

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


@contextlib.contextmanager
def needs_extra(extra: str, *, purpose: str = "This command") -> Iterator[None]:
    """Translate a missing optional package inside the block into MissingDependency."""
    try:
        yield
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if not missing or missing.split(".", 1)[0] == "amlft":  # our own module: a bug, keep the traceback
            raise
        # a known package names its own extra; anything else missing here came with the block's extra
        owner = extra_for(missing) or extra
        err = MissingDependency(missing.split(".", 1)[0], extra=owner, purpose=purpose)
        if owner in INSTALL_HINT:
            err.hint = INSTALL_HINT[owner]
        raise err from exc
