"""Backends run the lifecycle steps. `get_backend` imports only the one asked for."""

from __future__ import annotations

from amlft.backends.base import Backend, StepContext
from amlft.errors import ConfigError

__all__ = ["Backend", "StepContext", "get_backend"]


def get_backend(name: str) -> Backend:
    if name == "local":
        from amlft.backends.local.backend import LocalBackend

        return LocalBackend()
    if name == "azure":
        from amlft.backends.azure.backend import AzureBackend

        return AzureBackend()
    raise ConfigError(f"Unknown backend {name!r}.", hint="Use --backend local or --backend azure.")
