"""The local scoring server's generation engine: one model, one worker, dynamic batching.

Why a single worker thread: on a CPU (or one GPU) two `generate` calls running side by side
only fight over the same cores. What does pay is *batching*: requests that wait while a
batch runs are gathered into the next `generate` call (left-padded, so every row's new
tokens line up at the end), and a batch of eight costs little more than a batch of one.

Why a custom stopping criterion: it runs once per decoding step with the ids so far, so
it is where each row (1) stops at its *own* `max_new_tokens` or end-of-sequence token, (2)
stops when its caller timed out or went away — freeing the cores for everyone else — and
(3) streams its newly decoded text to a waiting SSE response. Rows are tracked here, not
by `generate`, so a row's output is exactly what it would have been had it run alone
(greedy decoding with left padding and an attention mask is position-exact).

Admission control (`max_concurrency` rows per batch, `max_queue` waiting) lives here too,
so the HTTP layer only maps exceptions to status codes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amlft.serving import ContractError

log = logging.getLogger("amlft.server")

# What a client may ask of `generate`, per contract field name. Anything else is refused with a
# 400 naming it: a parameter the server silently ignored would make results irreproducible.
AZUREML_PARAMETERS = ("temperature", "top_p", "top_k", "do_sample", "max_new_tokens",
                      "repetition_penalty", "ignore_eos")
DEFAULT_MAX_NEW_TOKENS = 200


class Overloaded(Exception):
    """Every batch slot and queue place is taken (HTTP 503)."""


class ShuttingDown(Exception):
    """The server is draining after SIGTERM (HTTP 503)."""


@dataclass(frozen=True)
class GenParams:
    """Validated generation parameters for one request."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    do_sample: bool = False
    temperature: float | None = None  # None: the model's generation_config decides
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool = False  # fixed-length outputs, as vLLM offers for benchmarking

    def batch_key(self) -> tuple[Any, ...]:
        """Requests batch together only when `generate` would treat them identically."""
        if not self.do_sample:
            return ("greedy", self.repetition_penalty)
        return ("sample", self.temperature, self.top_p, self.top_k, self.repetition_penalty)


def _number(value: Any, where: str, *, lo: float | None = None, hi: float | None = None,
            lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ContractError(f"{where} must be a number (got {value!r})")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ContractError(f"{where} must be {'>' if lo_open else '>='} {lo} (got {value!r})")
    if hi is not None and value > hi:
        raise ContractError(f"{where} must be <= {hi} (got {value!r})")
    return float(value)


def _integer(value: Any, where: str, *, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ContractError(f"{where} must be an integer >= {lo} (got {value!r})")
    return int(value)


def _boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ContractError(f"{where} must be true or false (got {value!r})")
    return value


def make_params(*, where: str, max_new_tokens: Any = None, temperature: Any = None, top_p: Any = None,
                top_k: Any = None, do_sample: Any = None, repetition_penalty: Any = None,
                ignore_eos: Any = None, limit: int) -> GenParams:
    """Validate raw values (None = not given) into GenParams; errors name `where.<field>`.

    Sampling happens only when asked for: do_sample true, or (do_sample absent) a temperature
    above zero. Temperature 0 always means greedy, as in the OpenAI API.
    """
    if max_new_tokens is None:
        max_new_tokens = min(DEFAULT_MAX_NEW_TOKENS, limit)
    n = _integer(max_new_tokens, f"{where}max_new_tokens", lo=1)
    if n > limit:
        raise ContractError(f"{where}max_new_tokens must be <= {limit} on this server (got {n})")
    temp = None if temperature is None else _number(temperature, f"{where}temperature", lo=0)
    tp = None if top_p is None else _number(top_p, f"{where}top_p", lo=0, hi=1, lo_open=True)
    tk = None if top_k is None else _integer(top_k, f"{where}top_k", lo=1)
    rp = None if repetition_penalty is None else _number(repetition_penalty, f"{where}repetition_penalty",
                                                         lo=0, lo_open=True)
    sample = (temp is not None and temp > 0) if do_sample is None else _boolean(do_sample, f"{where}do_sample")
    if temp == 0:
        sample = False
    ie = False if ignore_eos is None else _boolean(ignore_eos, f"{where}ignore_eos")
    if not sample:  # sampling knobs do not change greedy output; keep them out of the batch key
        temp, tp, tk = None, None, None
    return GenParams(max_new_tokens=n, do_sample=sample, temperature=temp, top_p=tp, top_k=tk,
                     repetition_penalty=rp, ignore_eos=ie)


@dataclass(eq=False)
class GenRequest:
    """One request's life: queued -> running -> done (text, or an error string)."""

    prompt_ids: list[int]
    params: GenParams
    deadline: float  # time.monotonic()
    stream: queue.Queue[str] | None = None  # text deltas; None ends the stream
    text: str = ""
    completion_tokens: int = 0
    finish_reason: str = "stop"  # "stop" | "length"
    error: str | None = None  # "timeout" | "cancelled" | "shutdown" | "internal: ..."
    done: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False
    # streaming bookkeeping (worker thread only)
    _emitted: str = ""

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)


class Engine:
    """Loads a transformers folder and serves generation requests from one worker thread."""

    def __init__(self, model_dir: Path, *, max_concurrency: int = 1, max_queue: int = 16,
                 batch_wait_s: float = 0.05, device: str = "auto", max_new_tokens_limit: int = 4096,
                 threads: int | str | None = None) -> None:
        if max_concurrency < 1 or max_queue < 0:
            raise ValueError("max_concurrency must be >= 1 and max_queue >= 0")
        self.model_dir = Path(model_dir)
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.batch_wait_s = batch_wait_s
        self.max_new_tokens_limit = max_new_tokens_limit
        self._load(device, threads)
        self._lock = threading.Condition()
        self._pending: deque[GenRequest] = deque()
        self._running: list[GenRequest] = []
        self._admitted = 0
        self._closing = False
        self.stats = {"requests": 0, "batches": 0, "batched_rows": 0, "max_batch": 0, "rejected": 0}
        self._last_end = float("-inf")  # when the last batch finished, its size, and what was waiting then
        self._last_size = 0
        self._pending_at_end = 0
        self._worker = threading.Thread(target=self._loop, name="amlft-generate", daemon=True)
        self._worker.start()

    # ---- model -------------------------------------------------------------------------
    def _load(self, device: str, threads: int | str | None) -> None:
        from amlft.errors import ConfigError

        if not (self.model_dir / "config.json").is_file():
            raise ConfigError(f"{self.model_dir} is not a transformers model folder (no config.json).",
                              hint="Point --model-dir at the registered model's folder (outputs.register.model_dir).")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(f"The tokenizer in {self.model_dir} has no chat template.",
                              hint="Serve a chat (instruct) model, or save a tokenizer with chat_template set.")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype).to(device).eval()
        self.model_name = self.model_dir.name
        # Chat models often end a turn with a token other than the tokenizer's eos (or list several).
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        if self.tokenizer.eos_token_id is not None:
            self.eos_ids.add(self.tokenizer.eos_token_id)
        # End-of-sequence is decided per row by the engine (ignore_eos differs between rows of a
        # batch), so generate() must not act on it: it would pad a row that asked to go on.
        self.model.generation_config.eos_token_id = None
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (min(self.eos_ids) if self.eos_ids else 0)
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None)
        if threads == "auto":
            # A small model's matmuls are too small to split: extra intra-op threads only spin and,
            # on a shared machine, slow decoding several-fold. Big models keep torch's default.
            small = device == "cpu" and sum(p.numel() for p in self.model.parameters()) < 50_000_000
            threads = 1 if small else None
        if isinstance(threads, int) and threads > 0:  # process-wide: only the server process asks
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()

    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        """The chat template with the assistant turn opened, as token ids; special-token text that a
        client put in a message stays text (no role forgery, see amlft.backends.local.chat)."""
        from amlft.backends.local.chat import TemplateRewritesContent, encode_prompt

        try:
            ids = encode_prompt(self.tokenizer, messages)
        except TemplateRewritesContent as exc:
            raise ContractError(f"{exc}; remove the special tokens from the messages") from exc
        if self.max_positions and len(ids) >= self.max_positions:
            raise ContractError(f"the conversation is {len(ids)} tokens; this model reads at most "
                                f"{self.max_positions - 1} (shorten the messages)")
        return list(ids)

    # ---- admission ---------------------------------------------------------------------
    def submit(self, req: GenRequest) -> None:
        """Queue a request, or raise Overloaded/ShuttingDown at once (never block the caller)."""
        with self._lock:
            if self._closing:
                raise ShuttingDown()
            if self._admitted >= self.max_concurrency + self.max_queue:
                self.stats["rejected"] += 1
                raise Overloaded()
            self._admitted += 1
            self.stats["requests"] += 1
            self._pending.append(req)
            self._lock.notify_all()

    def cancel(self, req: GenRequest, reason: str) -> None:
        """Give up on a request (timed out, client gone). A queued one leaves the queue now;
        a running one stops at the next decoding step. A finished one keeps its result."""
        with self._lock:
            if req.done.is_set():
                return
            req.cancelled = True
            req.error = reason
            if req in self._pending:
                self._pending.remove(req)
                self._admitted -= 1
            self._finish_stream(req)
            req.done.set()

    def load(self) -> dict[str, int]:
        with self._lock:
            return {"running": len(self._running), "queued": len(self._pending),
                    "capacity": self.max_concurrency + self.max_queue}

    def close(self, drain_s: float) -> None:
        """Refuse new work, fail queued requests, give running ones `drain_s` to finish."""
        with self._lock:
            self._closing = True
            while self._pending:
                req = self._pending.popleft()
                self._admitted -= 1
                req.error = "shutdown"
                self._finish_stream(req)
                req.done.set()
            running = list(self._running)
            self._lock.notify_all()
        end = time.monotonic() + drain_s
        for req in running:
            if not req.done.wait(max(0.0, end - time.monotonic())):
                self.cancel(req, "shutdown")
        self._worker.join(timeout=max(0.5, end - time.monotonic() + 2))

    # ---- worker ------------------------------------------------------------------------
    def _take_batch(self) -> list[GenRequest] | None:
        """The next batch: the oldest request plus every waiting one that shares its batch key.

        Clients just answered tend to come straight back (closed-loop callers, benchmark tools,
        chat UIs). Right after a batch, the worker waits up to batch_wait_s for that many new
        requests, so the batch stays whole instead of splitting into groups that alternate.
        It never waits when idle: a lone request starts at once.
        """
        with self._lock:
            while not self._pending and not self._closing:
                self._lock.wait()
            if self._closing and not self._pending:
                return None
            if self.max_concurrency > 1 and time.monotonic() - self._last_end < self.batch_wait_s:
                target = min(self.max_concurrency, self._pending_at_end + self._last_size)
                end = self._last_end + self.batch_wait_s
                while len(self._pending) < target and not self._closing and (left := end - time.monotonic()) > 0:
                    self._lock.wait(left)
            if not self._pending:
                return []
            key = self._pending[0].params.batch_key()
            batch = [r for r in self._pending if r.params.batch_key() == key][: self.max_concurrency]
            for r in batch:
                self._pending.remove(r)
            self._running = batch
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            if not batch:
                continue
            try:
                self.generate_batch(batch)
            except Exception as exc:  # a bug or OOM must fail the batch, not kill the server
                log.exception("generation failed")
                for r in batch:
                    if not r.done.is_set():
                        r.error = f"internal: {type(exc).__name__}: {exc}"
            with self._lock:
                for r in batch:
                    self._finish_stream(r)
                    r.done.set()
                self._admitted -= len(batch)
                self._running = []
                self._last_end, self._last_size = time.monotonic(), len(batch)
                self._pending_at_end = len(self._pending)
                self.stats["batches"] += 1
                self.stats["batched_rows"] += len(batch)
                self.stats["max_batch"] = max(self.stats["max_batch"], len(batch))

    def _finish_stream(self, req: GenRequest) -> None:
        if req.stream is not None and not req.done.is_set():
            req.stream.put(None)  # type: ignore[arg-type]

    def generate_batch(self, batch: list[GenRequest]) -> None:
        """Run one left-padded `generate` call for requests sharing a batch key; fills each
        request's text/completion_tokens/finish_reason (requests already cancelled are skipped)."""
        torch = self.torch
        from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

        width = max(len(r.prompt_ids) for r in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for i, r in enumerate(batch):
            input_ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids, dtype=torch.long)
            attention[i, width - len(r.prompt_ids):] = 1
        budgets = []
        for r in batch:
            room = (self.max_positions - len(r.prompt_ids)) if self.max_positions else r.params.max_new_tokens
            budgets.append(max(1, min(r.params.max_new_tokens, room)))
        stop_len: list[int | None] = [None] * len(batch)  # tokens kept per row once it stops
        eos_ids = self.eos_ids
        engine = self

        class RowControl(StoppingCriteria):
            def __call__(self, ids: Any, scores: Any, **kwargs: Any) -> Any:
                n = ids.shape[1] - width
                last = ids[:, -1].tolist()
                now = time.monotonic()
                done = []
                for i, r in enumerate(batch):
                    if stop_len[i] is not None:  # stopped earlier: its later tokens are discarded
                        done.append(True)
                        continue
                    if r.cancelled or now > r.deadline:
                        stop_len[i] = n
                        if not r.cancelled:
                            engine.cancel(r, "timeout")
                    elif last[i] in eos_ids and not r.params.ignore_eos:
                        stop_len[i] = n - 1
                        r.finish_reason = "stop"
                    elif n >= budgets[i]:
                        stop_len[i] = n
                        r.finish_reason = "length"
                    if r.stream is not None and not r.cancelled:
                        kept = stop_len[i] if stop_len[i] is not None else n
                        engine._stream_delta(r, ids[i, width: width + kept], final=False)
                    done.append(stop_len[i] is not None)
                return torch.tensor(done, dtype=torch.bool, device=ids.device)

        p = batch[0].params
        # Unset knobs fall back to the model's generation_config, as the HF pipeline behind Azure does.
        cfg = GenerationConfig(max_new_tokens=max(budgets), do_sample=p.do_sample, pad_token_id=self.pad_id)
        if p.do_sample:
            for name in ("temperature", "top_p", "top_k"):
                if getattr(p, name) is not None:
                    setattr(cfg, name, getattr(p, name))
        if p.repetition_penalty is not None:
            cfg.repetition_penalty = p.repetition_penalty
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device),
                                      generation_config=cfg, stopping_criteria=StoppingCriteriaList([RowControl()]))
        out = out.cpu()
        for i, r in enumerate(batch):
            if r.cancelled:
                continue
            n = stop_len[i] if stop_len[i] is not None else out.shape[1] - width
            if stop_len[i] is None:
                r.finish_reason = "length"
            gen = out[i, width: width + n]
            r.completion_tokens = int(gen.shape[0])
            r.text = self.tokenizer.decode(gen.tolist(), skip_special_tokens=True)
            if r.stream is not None:
                self._stream_delta(r, gen, final=True)

    def _stream_delta(self, r: GenRequest, gen: Any, *, final: bool) -> None:
        """Push the text decoded since the last push (held back while a multi-byte char is incomplete)."""
        text = r.text if final else self.tokenizer.decode(gen.tolist(), skip_special_tokens=True)
        if not final and text.endswith("\ufffd"):
            return
        if text.startswith(r._emitted) and len(text) > len(r._emitted):
            assert r.stream is not None
            r.stream.put(text[len(r._emitted):])
            r._emitted = text
