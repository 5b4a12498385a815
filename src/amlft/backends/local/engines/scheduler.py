"""Admission, queueing and dynamic batching shared by the local server's engines.

Why a single worker thread: on a CPU (or one GPU) two generate calls running side by side
only fight over the same cores. What does pay is *batching*: requests that wait while a
batch runs are gathered into the next call, and a batch of eight costs little more than a
batch of one. A subclass loads its model, implements `encode` and `generate_batch`, and
calls `start()`; everything else of the GenerationEngine protocol lives here.

Places: `max_concurrency` rows run at once and `max_queue` more wait; a request holds its
place from `admit` (before its prompt is even tokenized) until it ends or is cancelled, so
the server never does work for a request it would have to refuse.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from amlft.backends.local.engines.base import EngineOptions, GenRequest, Overloaded, ShuttingDown

log = logging.getLogger("amlft.server")


def find_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Index where the earliest stop string starts in text, or None."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def releasable(text: str, stops: tuple[str, ...]) -> int:
    """How much of text can be streamed now: all but a tail that may still grow into a stop string."""
    keep = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), keep, -1):
            if text.endswith(s[:n]):
                keep = n
                break
    return len(text) - keep


class BatchScheduler:
    """The engine-independent half of an engine: places, queue, worker, cancel, drain, streaming."""

    model_name: str = "model"
    device: str = "cpu"
    roles: tuple[str, ...] = ("system", "user", "assistant")
    context_length: int | None = None

    def __init__(self, options: EngineOptions) -> None:
        if options.max_concurrency < 1 or options.max_queue < 0:
            raise ValueError("max_concurrency must be >= 1 and max_queue >= 0")
        self.max_concurrency = options.max_concurrency
        self.max_queue = options.max_queue
        self.batch_wait_s = options.batch_wait_s
        self.max_new_tokens_limit = options.max_new_tokens_limit
        self._lock = threading.Condition()
        self._reserved: set[GenRequest] = set()  # admitted, prompt not submitted yet
        self._pending: deque[GenRequest] = deque()
        self._running: list[GenRequest] = []
        self._emitted: dict[GenRequest, str] = {}
        self._closing = False
        self.stats = {"requests": 0, "batches": 0, "batched_rows": 0, "max_batch": 0, "rejected": 0}
        self._last_end = float("-inf")  # when the last batch finished, its size, and what was waiting then
        self._last_size = 0
        self._pending_at_end = 0
        self._worker: threading.Thread | None = None

    # ---- to implement --------------------------------------------------------------------
    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        raise NotImplementedError

    def generate_batch(self, batch: list[GenRequest]) -> None:
        """Generate for requests sharing a batch key: set text/completion_tokens/finish_reason,
        stream through `push_text`, stop a row at its next step once `req.cancelled` is set."""
        raise NotImplementedError

    # ---- the protocol ----------------------------------------------------------------------
    def start(self) -> None:
        self._worker = threading.Thread(target=self._loop, name="amlft-generate", daemon=True)
        self._worker.start()

    @property
    def capacity(self) -> int:
        return self.max_concurrency + self.max_queue

    def admit(self, req: GenRequest) -> None:
        with self._lock:
            if self._closing:
                raise ShuttingDown()
            if len(self._reserved) + len(self._pending) + len(self._running) >= self.capacity:
                self.stats["rejected"] += 1
                raise Overloaded()
            self._reserved.add(req)
            self.stats["requests"] += 1

    def submit(self, req: GenRequest, prompt_ids: list[int]) -> None:
        with self._lock:
            if req.done.is_set():  # cancelled (or shut down) while its prompt was tokenized
                return
            if req not in self._reserved:
                raise ValueError("submit() takes a request admit() accepted")
            self._reserved.discard(req)
            if self._closing:
                self._finish(req, "shutdown")
                raise ShuttingDown()
            req.prompt_ids = list(prompt_ids)
            self._pending.append(req)
            self._lock.notify_all()

    def cancel(self, req: GenRequest, reason: str) -> None:
        with self._lock:
            if req.done.is_set():
                return
            self._reserved.discard(req)
            if req in self._pending:
                self._pending.remove(req)
            self._finish(req, reason)  # a running row stops at its next step; its place frees with the batch

    def health(self) -> dict[str, Any]:
        with self._lock:
            return {"running": len(self._running), "queued": len(self._pending) + len(self._reserved),
                    "capacity": self.capacity, "stats": dict(self.stats)}

    def close(self, drain_s: float) -> None:
        with self._lock:
            self._closing = True
            for req in [*self._reserved, *self._pending]:
                self._finish(req, "shutdown")
            self._reserved.clear()
            self._pending.clear()
            running = list(self._running)
            self._lock.notify_all()
        end = time.monotonic() + drain_s
        for req in running:
            if not req.done.wait(max(0.0, end - time.monotonic())):
                self.cancel(req, "shutdown")
        if self._worker is not None:
            self._worker.join(timeout=max(0.5, end - time.monotonic() + 2))

    # ---- helpers for generate_batch ----------------------------------------------------------
    def push_text(self, req: GenRequest, text: str, *, final: bool) -> None:
        """Stream what `text` (the whole completion so far) adds to what was sent: nothing while a
        multi-byte character is incomplete or the tail may still become a stop string."""
        if req.on_delta is None:
            return
        if not final:
            if text.endswith("\ufffd"):
                return
            text = text[: releasable(text, req.params.stop)]
        with self._lock:
            if req.done.is_set():  # cancelled: nothing more reaches the client
                return
            sent = self._emitted.get(req, "")
            if len(text) > len(sent) and text.startswith(sent):
                self._emitted[req] = text
                req.on_delta(text[len(sent):])

    # ---- worker ------------------------------------------------------------------------------
    def _finish(self, req: GenRequest, error: str | None) -> None:
        """End a request exactly once (caller holds the lock)."""
        if req.done.is_set():
            return
        if error is not None:
            req.error, req.cancelled = error, True
        self._emitted.pop(req, None)
        req.done.set()
        if req.on_done is not None:
            try:
                req.on_done()
            except Exception:  # a broken callback must not take the worker down
                log.exception("on_done callback failed")

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
        while (batch := self._take_batch()) is not None:
            if batch:
                self._run(batch)

    def _run(self, batch: list[GenRequest]) -> None:
        failure = None
        try:
            self.generate_batch(batch)
        except Exception as exc:  # a bug or OOM must fail the batch, not kill the server
            log.exception("generation failed")
            failure = f"internal: {type(exc).__name__}: {exc}"
        with self._lock:
            for r in batch:
                self._finish(r, failure)
            self._running = []
            self._last_end, self._last_size = time.monotonic(), len(batch)
            self._pending_at_end = len(self._pending)
            self.stats["batches"] += 1
            self.stats["batched_rows"] += len(batch)
            self.stats["max_batch"] = max(self.stats["max_batch"], len(batch))


class FolderEngine(BatchScheduler):
    """A BatchScheduler serving a model folder: load it (subclasses implement `_load`), then start
    the worker. Both shipped engines are built this way; only how a folder loads differs."""

    def __init__(self, model_dir: Path, options: EngineOptions | None = None) -> None:
        options = options or EngineOptions()
        super().__init__(options)
        self.model_dir = Path(model_dir)
        self._load(options.device, options.threads)
        self.start()

    def _load(self, device: str, threads: int | None) -> None:
        raise NotImplementedError
