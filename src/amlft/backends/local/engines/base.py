"""What a generation engine is to the local scoring server: a Protocol and the values it trades.

The HTTP layer (server.py) validates requests, bounds them, admits them and streams results;
an engine only turns prompt ids into text. Two engines implement this: transformers
(`transformers_engine`) and ONNX Runtime GenAI. The full contract, with the semantics of each
method, is docs/ENGINE_INTERFACE.md; the short form:

    admit(req)               reserve a place or raise Overloaded / ShuttingDown at once (never block)
    encode(messages)         chat template -> ids (run only after admit; PromptTooLong if no room)
    submit(req, prompt_ids)  queue an admitted request
    cancel(req, reason)      give up on it in any state; its place is freed now, its compute at the next step
    health()                 {"running", "queued", "capacity", "stats"}
    close(drain_s)           refuse new work, let running requests finish within drain_s

Results travel on the GenRequest: `on_delta` (streamed text, from the engine's thread) and
`on_done` (exactly once), so an asyncio server can hand them to its loop thread-safely.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from amlft.serving import ContractError

DEFAULT_MAX_NEW_TOKENS = 200
MAX_STOP_STRINGS = 4


class Overloaded(Exception):
    """Every generation slot and queue place is taken (HTTP 503 with Retry-After)."""


class ShuttingDown(Exception):
    """The engine is closing: it takes no new work (HTTP 503 with Retry-After)."""


class PromptTooLong(ContractError):
    """The prompt leaves no room to generate in the model's context (HTTP 422)."""


@dataclass(frozen=True)
class EngineOptions:
    """How an engine is sized; the server's command-line flags map onto these one to one."""

    max_concurrency: int = 1
    max_queue: int = 16
    max_new_tokens_limit: int = 4096
    device: str = "auto"
    threads: int | None = None
    batch_wait_s: float = 0.05


@dataclass(frozen=True)
class GenParams:
    """Validated generation parameters of one request (every number finite and in range)."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    min_tokens: int = 0  # EOS and stop strings cannot end the output earlier (vLLM's min_tokens)
    do_sample: bool = False
    temperature: float | None = None  # None: the model's generation_config decides
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool = False  # fixed-length outputs, as vLLM offers for benchmarking
    stop: tuple[str, ...] = ()

    def batch_key(self) -> tuple[Any, ...]:
        """Requests batch together only when `generate` would treat them identically."""
        if not self.do_sample:
            return ("greedy", self.repetition_penalty)
        return ("sample", self.temperature, self.top_p, self.top_k, self.repetition_penalty)


def make_params(*, where: str, limit: int, max_new_tokens: int | None = None, min_tokens: int | None = None,
                temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
                do_sample: bool | None = None, repetition_penalty: float | None = None,
                ignore_eos: bool | None = None, stop: str | list[str] | tuple[str, ...] | None = None) -> GenParams:
    """Normalise already type-checked values (None = not given) into GenParams.

    Types, finiteness and static ranges are checked by the request models (amlft.serving); this
    adds the server's limits (errors name `where<field>`) and the sampling rules: sampling happens
    only when asked for (do_sample true, or do_sample absent and temperature above zero), and
    temperature 0 always means greedy, as in the OpenAI API.
    """
    n = min(DEFAULT_MAX_NEW_TOKENS, limit) if max_new_tokens is None else max_new_tokens
    if n > limit:
        raise ContractError(f"{where}max_new_tokens must be <= {limit} on this server (got {n})")
    floor = min_tokens or 0
    if floor > n:
        raise ContractError(f"{where}min_tokens ({floor}) must be <= max_new_tokens ({n})")
    sample = (temperature is not None and temperature > 0) if do_sample is None else do_sample
    if temperature == 0:
        sample = False
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if len(stops) > MAX_STOP_STRINGS or any(not s for s in stops):
        raise ContractError(f"{where}stop must be a non-empty string or a list of at most {MAX_STOP_STRINGS}")
    if not sample:  # sampling knobs do not change greedy output; keep them out of the batch key
        temperature, top_p, top_k = None, None, None
    return GenParams(max_new_tokens=n, min_tokens=floor, do_sample=sample, temperature=temperature, top_p=top_p,
                     top_k=top_k, repetition_penalty=repetition_penalty, ignore_eos=bool(ignore_eos), stop=stops)


@dataclass(eq=False)
class GenRequest:
    """One request's life: admitted -> queued -> running -> done (text, or an error string)."""

    params: GenParams
    deadline: float  # time.monotonic()
    on_delta: Callable[[str], None] | None = None  # streamed text, in order, from the engine's thread
    on_done: Callable[[], None] | None = None  # exactly once, after the last delta, whatever the outcome
    prompt_ids: list[int] = field(default_factory=list)
    text: str = ""
    completion_tokens: int = 0
    finish_reason: str = "stop"  # "stop" | "length"
    error: str | None = None  # "timeout" | "cancelled" | "shutdown" | "internal: ..."
    cancelled: bool = False
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)


@runtime_checkable
class GenerationEngine(Protocol):
    """What the scoring server needs from an engine (semantics: docs/ENGINE_INTERFACE.md)."""

    model_name: str
    device: str
    roles: tuple[str, ...]
    max_new_tokens_limit: int
    context_length: int | None

    def encode(self, messages: list[dict[str, str]]) -> list[int]: ...

    def admit(self, req: GenRequest) -> None: ...

    def submit(self, req: GenRequest, prompt_ids: list[int]) -> None: ...

    def cancel(self, req: GenRequest, reason: str) -> None: ...

    def health(self) -> dict[str, Any]: ...

    def close(self, drain_s: float) -> None: ...


# name -> "module:Class"; imported only when chosen, so neither torch nor onnxruntime_genai loads for nothing
ENGINES: dict[str, str] = {
    "transformers": "amlft.backends.local.engines.transformers_engine:TransformersEngine",
    "onnxruntime-genai": "amlft.backends.local.engines.ortgenai_engine:OrtGenaiEngine",
}


def create_engine(name: str, model_dir: Path, options: EngineOptions) -> GenerationEngine:
    """Load a model folder with the named engine (slow: reads the weights)."""
    import importlib

    from amlft.errors import ConfigError

    if name not in ENGINES:
        raise ConfigError(f"Unknown engine {name!r}.", hint=f"Use one of: {', '.join(sorted(ENGINES))}.")
    module, _, cls = ENGINES[name].partition(":")
    engine: GenerationEngine = getattr(importlib.import_module(module), cls)(Path(model_dir), options)
    return engine


CANDIDATE_ROLES = ("system", "user", "assistant")


def template_roles(tokenizer: Any) -> tuple[str, ...]:
    """The roles a chat template renders (a template may refuse, e.g., a system turn): what the
    server lets a request use. Shared by every engine that renders with the model's template."""
    from amlft.backends.local.chat import render

    roles = []
    for role in CANDIDATE_ROLES:
        convo = [{"role": role, "content": "probe"}]
        if role == "assistant":
            convo = [{"role": "user", "content": "hi"}, *convo]
        try:
            if "probe" in render(tokenizer, convo):
                roles.append(role)
        except Exception:  # jinja's raise_exception: the template does not take this role
            continue
    return tuple(roles) or CANDIDATE_ROLES


def encode_within_context(tokenizer: Any, messages: list[dict[str, str]], context_length: int | None) -> list[int]:
    """The chat template with the assistant turn opened, as token ids - control-token text inside
    message content stays ordinary text (no role forgery) - or PromptTooLong when it leaves no room."""
    from amlft.backends.local.chat import encode_prompt

    ids = list(encode_prompt(tokenizer, messages))
    if context_length and len(ids) >= context_length:
        raise PromptTooLong(f"the conversation is {len(ids)} tokens; this model reads at most "
                            f"{context_length - 1} (shorten the messages)")
    return ids
