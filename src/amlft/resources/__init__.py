"""Files shipped inside the package (sample chat data, profiles, component snapshot).

Shipped as package data so an installed `amlft` works outside a clone of the repo.
"""

from __future__ import annotations

from pathlib import Path

_ROOT = Path(__file__).resolve().parent


def resource_path(*parts: str) -> Path:
    return _ROOT.joinpath(*parts)


def sample_chat_dir() -> Path:
    """The project's own chat dataset, ultrachat-shaped: train_sft/test_sft/train_gen/test_gen .jsonl."""
    return resource_path("sample_chat")
