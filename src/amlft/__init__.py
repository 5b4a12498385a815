"""amlft: fine-tune, register, deploy, test and tear down chat models on Azure ML - or on one machine.

The package root stays import-light on purpose: `amlft --help` must not pay for
azure.ai.ml, torch or transformers. Heavy SDKs are imported inside the code that uses them,
and `amlft.Client` (the Python API, amlft.client) is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from amlft.version import __version__

__all__ = ["Client", "__version__"]

if TYPE_CHECKING:
    from amlft.client import Client


def __getattr__(name: str) -> Any:
    if name == "Client":
        from amlft.client import Client

        return Client
    raise AttributeError(f"module 'amlft' has no attribute {name!r}")
