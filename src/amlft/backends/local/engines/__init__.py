"""Generation engines of the local scoring server (contract: docs/ENGINE_INTERFACE.md)."""

from amlft.backends.local.engines.base import (
    DEFAULT_MAX_NEW_TOKENS,
    ENGINES,
    EngineOptions,
    GenerationEngine,
    GenParams,
    GenRequest,
    Overloaded,
    PromptTooLong,
    ShuttingDown,
    create_engine,
    make_params,
)

__all__ = ["DEFAULT_MAX_NEW_TOKENS", "ENGINES", "EngineOptions", "GenParams", "GenRequest", "GenerationEngine",
           "Overloaded", "PromptTooLong", "ShuttingDown", "create_engine", "make_params"]
