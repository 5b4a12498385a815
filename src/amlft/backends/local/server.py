"""The local scoring server: Azure ML's `/score` contract and an OpenAI-compatible API.

    launch(model_dir, key=..., log_path=...) -> ServerHandle   start a detached server, wait until ready
    stop(pid) -> bool                                          SIGTERM (drains), then SIGKILL; idempotent
    is_alive(pid, port) -> bool                                process up *and* /health answering
    python -m amlft.backends.local.server --model-dir DIR      the server itself (key in $AMLFT_SERVER_KEY)

Routes: `POST /score` (Azure ML chat), `POST /v1/chat/completions` (OpenAI, `stream: true` as
SSE), `GET /v1/models`, `GET /health` (the process is up), `GET /ready` (the model is loaded; 503
until then). /health and /ready need no key and show no secrets; everything else needs
`Authorization: Bearer <key>`, like an Azure endpoint with `auth_mode: key`.

Why Starlette on uvicorn: an asyncio server holds a connection for the price of a few objects,
not a thread, and the HTTP parsing (h11) is a maintained, strict implementation: a malformed
request line, a negative or non-numeric Content-Length, oversized headers are refused before
any of our code runs. What uvicorn lacks, this module adds, in one small protocol subclass:
a JSON body on its own 400, a cap on open connections answered with a JSON 503 + Retry-After,
and an idle timeout for connections that never send a request. The body is read here, counted
as it arrives (chunked or not), with a deadline (413 / 408).

Admission before work: a request is validated (pydantic models in amlft.serving, which also
refuse NaN/Infinity, lone surrogates and deep nesting), its prompt bounded by characters, and
only once the engine has *admitted* it (503 if full) is the prompt tokenized, in a worker thread.
The generation engine sits behind a small Protocol (engines/base.py; docs/ENGINE_INTERFACE.md).

Why the key travels in an environment variable: argv is world-readable through `ps`. The server
reads it once and removes it from its environment. It is never logged: the access log has
client, method, path, status and latency only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amlft.backends.local import processes
from amlft.errors import DeploymentError
from amlft.extras import needs_extra

if TYPE_CHECKING:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from amlft.backends.local.engines import GenerationEngine, GenParams, GenRequest

KEY_ENV = "AMLFT_SERVER_KEY"
INLINE_ENCODE_CHARS = 2_000
MODULE = "amlft.backends.local.server"
log = logging.getLogger("amlft.server")
access_log = logging.getLogger("amlft.server.access")


# ======================================================================================
# Launcher API (runs in the CLI process; no heavy imports)
# ======================================================================================
@dataclass(frozen=True)
class ServerHandle:
    pid: int
    host: str
    port: int
    scoring_uri: str
    openai_base_url: str


def _connect_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to host (URL-ready: IPv6 in brackets)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def launch(model_dir: Path, *, key: str, host: str = "127.0.0.1", port: int = 0, max_concurrency: int = 1,
           max_queue: int = 16, request_timeout_s: float = 120, max_request_bytes: int = 1_000_000,
           log_path: Path, ready_timeout_s: float = 120, model_name: str | None = None,
           threads: int | None = None, on_started: Callable[[int], None] | None = None,
           engine: str = "transformers") -> ServerHandle:
    """Start a detached scoring server for a model folder and wait until /ready answers.

    The process outlives the caller (its own session), so `amlft deploy` can return and a later
    `amlft teardown` stops it by pid. Its stdout/stderr (model loading, access log) go to log_path.
    on_started(pid) runs right after the process starts, before the (possibly long) ready wait, so
    the caller can record it first and a teardown can find it even if this process is killed.
    """
    if not key:
        raise DeploymentError("Refusing to start a scoring server without a key.",
                              hint="Pass the endpoint key (amlft generates one at deploy).")
    with needs_extra("local", purpose="The local scoring server"):
        # fail here, naming the extra, rather than in the detached server's log after a ready timeout
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    model_dir, log_path = Path(model_dir), Path(log_path)
    if engine == "transformers" and not (model_dir / "config.json").is_file():
        raise DeploymentError(f"{model_dir} is not a transformers model folder (no config.json).",
                              hint="Deploy the registered model's folder (outputs.register.model_dir); "
                                   "run `amlft register` first.")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    ready_file = log_path.with_name(log_path.name + ".ready.json")
    ready_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", MODULE, "--model-dir", str(model_dir), "--host", host, "--port", str(port),
           "--max-concurrency", str(max_concurrency), "--max-queue", str(max_queue),
           "--request-timeout-s", str(request_timeout_s), "--max-request-bytes", str(max_request_bytes),
           "--ready-file", str(ready_file), "--engine", engine]
    if model_name:
        cmd += ["--model-name", model_name]
    if threads:
        cmd += ["--threads", str(threads)]
    env = dict(os.environ)
    env[KEY_ENV] = key
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True, close_fds=True)
    processes.track(proc)
    if on_started is not None:
        try:
            on_started(proc.pid)
        except BaseException:
            stop(proc.pid)
            raise
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            raise DeploymentError(f"The scoring server exited with code {code} while starting:\n"
                                  f"{_tail(log_path)}", hint=f"Full log: {log_path}")
        if ready_file.is_file():
            with contextlib.suppress(ValueError, OSError):
                p, h = int(json.loads(ready_file.read_text())["port"]), _connect_host(host)
                if _get_json(h, p, "/ready") is not None:
                    return ServerHandle(pid=proc.pid, host=host, port=p, scoring_uri=f"http://{h}:{p}/score",
                                        openai_base_url=f"http://{h}:{p}/v1")
        time.sleep(0.1)
    stop(proc.pid)
    raise DeploymentError(f"The scoring server did not become ready within {ready_timeout_s:.0f}s:\n"
                          f"{_tail(log_path)}", hint=f"Full log: {log_path}. A big model on CPU loads slowly: "
                                                     "raise the ready timeout.")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _get_json(host: str, port: int, path: str, timeout: float = 2.0) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=timeout) as resp:
            return json.loads(resp.read()) if resp.status == 200 else None
    except (OSError, ValueError):
        return None


def stop(pid: int, *, timeout_s: float = 10) -> bool:
    """Stop a server: SIGTERM (it drains in-flight requests), SIGKILL after timeout_s.
    Returns whether it was running. Safe to call again, or for a pid that is long gone."""
    return processes.terminate(pid, module=MODULE, timeout_s=timeout_s)


def is_alive(pid: int, port: int, *, host: str = "127.0.0.1") -> bool:
    """True when the process runs and answers /health on port (a hung or foreign process does not count)."""
    return processes.is_running(pid, module=MODULE) and _get_json(_connect_host(host), port, "/health") is not None


# ======================================================================================
# The server process: settings, errors, the ASGI app
# ======================================================================================
@dataclass(frozen=True)
class Settings:
    """The server's limits (command-line flags of the same names)."""

    request_timeout_s: float = 120.0  # a generation past this gets 504 and stops
    max_request_bytes: int = 1_000_000  # body bytes actually read, chunked or not (413)
    max_prompt_chars: int = 200_000  # all message contents together, checked before tokenizing (413)
    read_timeout_s: float = 30.0  # the whole body must arrive within this (408)
    keep_alive_s: float = 15.0  # an idle connection (also one that never sends a request) is closed
    max_connections: int = 256  # open connections; beyond, a new one gets 503 + Retry-After
    drain_s: float = 5.0  # on SIGTERM, time in-flight requests get to finish (stop() waits 10 s)
    retry_after_s: int = 1


class ApiError(Exception):
    """Any error answer: status, message, OpenAI-style type; rendered as JSON by _error_response."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, dict(headers or {})


def error_body(status: int, message: str, kind: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "code": status}}, ensure_ascii=False).encode()


@dataclass
class State:
    """What the handlers share: the engine (None until loaded), the key, the limits."""

    key: bytes
    settings: Settings
    engine: GenerationEngine | None = None
    model_name: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    def authorized(self, header: str | None) -> bool:
        scheme, _, token = (header or "").partition(" ")
        # compare_digest on equal-type bytes: the time taken does not reveal how much of the key matched
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.key)

    def ready_engine(self) -> GenerationEngine:
        if self.engine is None:
            raise ApiError(503, "the model is still loading; retry shortly (GET /ready says when)",
                           kind="server_error", headers={"Retry-After": str(self.settings.retry_after_s)})
        return self.engine


def _retry(state: State) -> dict[str, str]:
    return {"Retry-After": str(state.settings.retry_after_s)}


async def read_body(request: Request, state: State) -> bytes:
    """The body, counted as it arrives (chunked or not): 413 past the limit, 408 past the deadline,
    415 for a content type other than JSON. The connection is closed after such an answer."""
    limit = state.settings.max_request_bytes
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype and not (ctype == "application/json" or ctype.endswith("+json")):
        raise ApiError(415, f"Content-Type {ctype} is not supported; send application/json",
                       headers={"Connection": "close"})
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is {declared} bytes; this server accepts at most {limit}",
                       headers={"Connection": "close"})
    chunks: list[bytes] = []

    async def receive_all() -> None:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"request body exceeds {limit} bytes, the most this server accepts",
                               headers={"Connection": "close"})
            chunks.append(chunk)

    try:
        await asyncio.wait_for(receive_all(), timeout=state.settings.read_timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {state.settings.read_timeout_s:g}s "
                            "(is Content-Length larger than the body?)", kind="timeout",
                       headers={"Connection": "close"}) from None
    return b"".join(chunks)


class Job:
    """One generation seen from the event loop: the engine's thread hands results over safely."""

    def __init__(self, params: GenParams, timeout_s: float, *, stream: bool) -> None:
        from amlft.backends.local.engines import GenRequest

        self.loop = asyncio.get_running_loop()
        self.finished = asyncio.Event()
        self.deltas: asyncio.Queue[str | None] | None = asyncio.Queue() if stream else None
        self.req: GenRequest = GenRequest(params=params, deadline=time.monotonic() + timeout_s,
                                          on_delta=self._delta if stream else None, on_done=self._done)

    def _delta(self, text: str) -> None:  # engine thread
        assert self.deltas is not None
        with contextlib.suppress(RuntimeError):  # the loop is gone: the process is exiting
            self.loop.call_soon_threadsafe(self.deltas.put_nowait, text)

    def _done(self) -> None:  # engine thread, or the loop itself (cancel)
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._finish)

    def _finish(self) -> None:
        self.finished.set()
        if self.deltas is not None:
            self.deltas.put_nowait(None)

    def left(self) -> float:
        return max(0.0, self.req.deadline - time.monotonic())


async def start_job(state: State, messages: list[dict[str, str]], params: GenParams, *, stream: bool) -> Job:
    """Admit, then tokenize (in a thread), then queue: no work for a request that would be refused."""
    with needs_extra("local", purpose="The local scoring server"):
        from starlette.concurrency import run_in_threadpool

    from amlft.backends.local.engines import Overloaded, PromptTooLong, ShuttingDown
    from amlft.serving import ContractError

    engine = state.ready_engine()
    chars = sum(len(m["content"]) for m in messages)
    if chars > state.settings.max_prompt_chars:
        raise ApiError(413, f"the messages hold {chars} characters; this server accepts at most "
                            f"{state.settings.max_prompt_chars} (shorten them)")
    job = Job(params, state.settings.request_timeout_s, stream=stream)
    try:
        engine.admit(job.req)
    except Overloaded:
        raise ApiError(503, "server is at capacity (all generation slots and queue places taken); retry shortly",
                       kind="server_error", headers=_retry(state)) from None
    except ShuttingDown:
        raise ApiError(503, "server is shutting down", kind="server_error", headers=_retry(state)) from None
    try:
        # A short prompt tokenizes in well under a millisecond: a thread hop would cost more than it
        # saves. A long one goes to a worker thread so the event loop keeps answering.
        if chars <= INLINE_ENCODE_CHARS:
            ids = engine.encode(messages)
        else:
            ids = await run_in_threadpool(engine.encode, messages)
        engine.submit(job.req, ids)
    except PromptTooLong as exc:
        engine.cancel(job.req, "cancelled")
        raise ApiError(422, str(exc)) from None
    except ContractError as exc:
        engine.cancel(job.req, "cancelled")
        raise ApiError(400, str(exc)) from None
    except ShuttingDown:
        raise ApiError(503, "server is shutting down", kind="server_error", headers=_retry(state)) from None
    except BaseException:  # the client went away while the prompt was tokenized
        engine.cancel(job.req, "cancelled")
        raise
    return job


def check(state: State, req: GenRequest) -> None:
    if req.error is None:
        return
    if req.error == "timeout":
        raise ApiError(504, f"generation did not finish within {state.settings.request_timeout_s:g}s "
                            "(request timeout); ask for fewer tokens or retry", kind="timeout")
    if req.error == "shutdown":
        raise ApiError(503, "server is shutting down", kind="server_error", headers=_retry(state))
    if req.error == "cancelled":
        raise ApiError(499, "request cancelled", kind="server_error")
    raise ApiError(500, req.error, kind="server_error")


async def race_disconnect(request: Request, awaitable: Awaitable[Any], timeout: float) -> tuple[Any, str | None]:
    """(result, None) once awaitable is done; (None, "cancelled") if the client hangs up first,
    (None, "timeout") if timeout passes first."""

    async def hung_up() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    main, gone = asyncio.ensure_future(awaitable), asyncio.ensure_future(hung_up())
    try:
        await asyncio.wait({main, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if main.done():
            return main.result(), None
        return None, "cancelled" if gone.done() else "timeout"
    finally:
        main.cancel()
        gone.cancel()


async def wait_job(state: State, request: Request, job: Job) -> GenRequest:
    """Wait for the result; a timeout or a client that hangs up cancels the generation at once."""
    engine = state.ready_engine()
    try:
        _, failure = await race_disconnect(request, job.finished.wait(), job.left())
        if failure is not None:
            engine.cancel(job.req, failure)
    finally:
        if not job.req.done.is_set():  # this handler was cancelled (server stopping past its drain)
            engine.cancel(job.req, "shutdown")
    check(state, job.req)
    return job.req


# ---- routes --------------------------------------------------------------------------------
def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    with needs_extra("local", purpose="The local scoring server"):
        from starlette.responses import Response

    return Response(json.dumps(payload, ensure_ascii=False), status_code=status, headers=headers,
                    media_type="application/json")


def _authorize(state: State, request: Request) -> None:
    if not state.authorized(request.headers.get("authorization")):
        raise ApiError(401, "missing or wrong key: send 'Authorization: Bearer <key>' "
                            "(`amlft endpoint credentials` prints it)", kind="authentication_error",
                       headers={"WWW-Authenticate": 'Bearer realm="amlft"', "Connection": "close"})


def _usage(req: GenRequest) -> dict[str, int]:
    return {"prompt_tokens": req.prompt_tokens, "completion_tokens": req.completion_tokens,
            "total_tokens": req.prompt_tokens + req.completion_tokens}


def make_routes(state: State) -> list[Any]:
    with needs_extra("local", purpose="The local scoring server"):
        from starlette.routing import Route

    from amlft.backends.local.engines import make_params
    from amlft.serving import ContractError, parse_azureml_body, parse_chat_body

    async def health(request: Request) -> Response:
        engine = state.engine
        load = engine.health() if engine is not None else {}
        return _json({"status": "ok" if engine is not None else "loading", "model": state.model_name, **load})

    async def ready(request: Request) -> Response:
        if state.engine is None:
            return _json({"status": "loading"}, 503, _retry(state))
        return _json({"status": "ready", "model": state.model_name})

    async def models(request: Request) -> Response:
        _authorize(state, request)
        return _json({"object": "list", "data": [{"id": state.model_name, "object": "model",
                                                  "created": state.created, "owned_by": "amlft"}]})

    async def score(request: Request) -> Response:
        _authorize(state, request)
        engine = state.ready_engine()
        raw = await read_body(request, state)
        try:
            body = parse_azureml_body(raw, roles=engine.roles)
            p = body.input_data.parameters
            params = make_params(where="input_data.parameters.", limit=engine.max_new_tokens_limit,
                                 **(p.model_dump(exclude_none=True) if p else {}))
        except ContractError as exc:
            raise ApiError(400, str(exc)) from None
        messages = [m.model_dump() for m in body.input_data.input_string]
        req = await wait_job(state, request, await start_job(state, messages, params, stream=False))
        return _json({"output": req.text})

    async def chat(request: Request) -> Response:
        _authorize(state, request)
        engine = state.ready_engine()
        raw = await read_body(request, state)
        try:
            body = parse_chat_body(raw, roles=engine.roles)
            params = make_params(
                where="", limit=engine.max_new_tokens_limit,
                max_new_tokens=body.max_completion_tokens or body.max_tokens, min_tokens=body.min_tokens,
                temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
                repetition_penalty=body.repetition_penalty, ignore_eos=body.ignore_eos, stop=body.stop)
        except ContractError as exc:
            raise ApiError(400, str(exc)) from None
        messages = [m.model_dump() for m in body.messages]
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
                "model": body.model or state.model_name}
        job = await start_job(state, messages, params, stream=bool(body.stream))
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return await stream_response(state, request, job, meta, include_usage=include_usage)
        req = await wait_job(state, request, job)
        return _json({**meta, "object": "chat.completion",
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": req.text},
                                   "finish_reason": req.finish_reason}], "usage": _usage(req)})

    return [Route("/health", health, methods=["GET"]), Route("/ready", ready, methods=["GET"]),
            Route("/v1/models", models, methods=["GET"]), Route("/score", score, methods=["POST"]),
            Route("/v1/chat/completions", chat, methods=["POST"])]


async def stream_response(state: State, request: Request, job: Job, meta: dict[str, Any], *,
                          include_usage: bool) -> Response:
    """SSE: `data: {chunk}` events, then `data: [DONE]`. Until the first text arrives a failure is
    still a proper status code; after that it is an error event. A client that disconnects makes
    Starlette cancel this generator, which cancels the generation at once."""
    with needs_extra("local", purpose="The local scoring server"):
        from starlette.responses import StreamingResponse

    engine = state.ready_engine()
    assert job.deltas is not None
    deltas = job.deltas
    try:  # a request still queued when its client leaves gives its place back at once, too
        first, failure = await race_disconnect(request, deltas.get(), job.left())
    except BaseException:
        engine.cancel(job.req, "cancelled")
        raise
    if failure is not None:
        engine.cancel(job.req, failure)
    if first is None:
        check(state, job.req)  # nothing streamed yet: a proper status code is still possible

    def event(payload: Any) -> bytes:
        return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"

    def chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
        return event({**meta, "object": "chat.completion.chunk",
                      "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    async def events() -> AsyncIterator[bytes]:
        req = job.req
        try:
            yield chunk({"role": "assistant", "content": ""})
            piece = first
            while piece is not None:
                yield chunk({"content": piece})
                try:
                    piece = await asyncio.wait_for(deltas.get(), timeout=job.left() + 5)
                except asyncio.TimeoutError:
                    engine.cancel(req, "timeout")
                    break
            await asyncio.wait_for(job.finished.wait(), timeout=5)
            if req.error is not None:
                status = 504 if req.error == "timeout" else 503 if req.error == "shutdown" else 500
                yield event({"error": {"message": f"generation stopped: {req.error}", "code": status}})
            else:
                yield chunk({}, req.finish_reason)
                if include_usage:
                    yield event({**meta, "object": "chat.completion.chunk", "choices": [], "usage": _usage(req)})
            yield b"data: [DONE]\n\n"
        finally:
            engine.cancel(req, "cancelled")  # no-op once finished; frees the slot when the client left

    return StreamingResponse(events(), headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                                "X-Accel-Buffering": "no"})


def _error_response(request: Request, exc: Exception) -> Response:
    with needs_extra("local", purpose="The local scoring server"):
        from starlette.exceptions import HTTPException

    if isinstance(exc, ApiError):
        status, message, kind, headers = exc.status, exc.message, exc.kind, exc.headers
    elif isinstance(exc, HTTPException):  # routing: 404, 405 (with Allow)
        status, headers = exc.status_code, dict(exc.headers or {})
        kind = "not_found" if status == 404 else "invalid_request_error"
        path = request.url.path
        message = (f"no route {path}; try POST /score or POST /v1/chat/completions" if status == 404 else
                   f"{request.method} is not allowed on {path} (allowed: {headers.get('Allow', '-')})"
                   if status == 405 else str(exc.detail))
    else:
        log.error("unhandled error on %s %s: %s", request.method, request.url.path, type(exc).__name__)
        status, message, kind, headers = 500, f"internal error: {type(exc).__name__}", "server_error", {}
    with needs_extra("local", purpose="The local scoring server"):
        from starlette.responses import Response

    return Response(error_body(status, message, kind), status_code=status, headers=headers,
                    media_type="application/json")


async def _async_error_response(request: Request, exc: Exception) -> Response:
    return _error_response(request, exc)


def create_app(state: State) -> Starlette:
    """The ASGI application: routes, JSON errors for every status, one access-log line per request."""
    with needs_extra("local", purpose="The local scoring server"):
        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException

    app = Starlette(routes=make_routes(state),
                    exception_handlers={ApiError: _async_error_response, HTTPException: _async_error_response,
                                        Exception: _async_error_response})
    app.add_middleware(AccessLog)
    return app


class AccessLog:
    """`client "METHOD /path" status latency` per request; never headers, query strings or bodies."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [0]

        async def send_logged(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        finally:
            client = (scope.get("client") or ("-",))[0]
            access_log.info('%s "%s %s" %d %.1fms', client, scope["method"], scope["path"], status[0],
                            (time.perf_counter() - start) * 1000)


# ======================================================================================
# uvicorn: the protocol tweaks, in-process serving (tests), the process entry point
# ======================================================================================
def _raw_json_response(status: int, reason: str, message: str, kind: str, extra: str = "") -> bytes:
    body = error_body(status, message, kind)
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"{extra}connection: close\r\n\r\n").encode() + body


def protocol_class(settings: Settings) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with JSON errors, a connection cap and an idle timeout from the start."""
    with needs_extra("local", purpose="The local scoring server"):
        from uvicorn.protocols.http.h11_impl import H11Protocol

    class AmlftH11Protocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > settings.max_connections:
                log.warning("refusing a connection: %d open (max %d)", len(self.connections) - 1,
                            settings.max_connections)
                transport.write(_raw_json_response(
                    503, "Service Unavailable", f"too many open connections (max {settings.max_connections}); "
                    "retry shortly", "server_error", f"retry-after: {settings.retry_after_s}\r\n"))
                transport.close()
                return
            # uvicorn arms its keep-alive timer only after a first response: a socket that never
            # sends a request would be held forever.
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                self.timeout_keep_alive_handler)

        def send_400_response(self, msg: str) -> None:
            log.info("malformed HTTP request from %s: %s", (self.client or ("-",))[0], msg)
            self.transport.write(_raw_json_response(
                400, "Bad Request", "malformed HTTP request (request line, headers or Content-Length); "
                "send HTTP/1.1 with a non-negative Content-Length or chunked encoding", "invalid_request_error"))
            self.transport.close()

    return AmlftH11Protocol


def uvicorn_server(app: Starlette, settings: Settings) -> uvicorn.Server:
    with needs_extra("local", purpose="The local scoring server"):
        import uvicorn

    config = uvicorn.Config(app, http=protocol_class(settings), lifespan="off", log_config=None,
                            access_log=False, server_header=False, date_header=False,
                            timeout_keep_alive=int(max(1, settings.keep_alive_s)),
                            timeout_graceful_shutdown=int(max(1, settings.drain_s)),
                            h11_max_incomplete_event_size=32 * 1024, backlog=256)
    return uvicorn.Server(config)


def bind(host: str, port: int) -> socket.socket:
    """Listen on (host, port); port 0 = any free port (read it from getsockname)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.set_inheritable(True)
    return sock


class InProcessServer:
    """The server in a background thread of this process (tests, benchmarks): `.url`, `.close()`."""

    def __init__(self, engine: GenerationEngine | None, key: str, settings: Settings | None = None,
                 host: str = "127.0.0.1") -> None:
        """engine None: serving as while the model loads (/ready 503) until `state.engine` is set."""
        self.settings = settings or Settings()
        self.state = State(key=key.encode(), settings=self.settings, engine=engine,
                           model_name=engine.model_name if engine is not None else None)
        self.server = uvicorn_server(create_app(self.state), self.settings)
        sock = bind(host, 0)
        self.port = int(sock.getsockname()[1])
        self.url = f"http://{_connect_host(host)}:{self.port}"
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                        name="amlft-uvicorn", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self.server.started:
            raise RuntimeError("the in-process server did not start")

    def close(self) -> None:
        self.server.should_exit = True
        self._thread.join(self.settings.drain_s + 5)


async def _serve(args: argparse.Namespace, state: State, sock: socket.socket) -> int:
    """Serve at once (/health answers), load the engine meanwhile (/ready answers once it is)."""
    from amlft.backends.local.engines import EngineOptions, create_engine

    server = uvicorn_server(create_app(state), state.settings)
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    loop = asyncio.get_running_loop()
    loaded: asyncio.Future[Any] = loop.create_future()
    options = EngineOptions(max_concurrency=args.max_concurrency, max_queue=args.max_queue,
                            max_new_tokens_limit=args.max_new_tokens_limit, device=args.device,
                            threads=args.threads, batch_wait_s=args.batch_wait_ms / 1000)

    def load() -> None:  # a daemon thread: a SIGTERM during a long load need not wait for it
        try:
            result: Any = create_engine(args.engine, args.model_dir, options)
        except Exception as exc:
            result = exc
        def deliver() -> None:
            if not loaded.done():
                loaded.set_result(result)

        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(deliver)

    log.info("loading %s with the %s engine", args.model_dir, args.engine)
    threading.Thread(target=load, name="amlft-load", daemon=True).start()
    await asyncio.wait({serving, loaded}, return_when=asyncio.FIRST_COMPLETED)
    if not loaded.done():  # stopped while loading
        await serving
        return 0
    engine = loaded.result()
    if isinstance(engine, Exception):
        log.error("%s", engine)  # message and hint; launch() shows this tail of the log
        server.should_exit = True
        await serving
        return 2
    if args.model_name:
        engine.model_name = args.model_name
    state.model_name = engine.model_name
    state.engine = engine
    port = sock.getsockname()[1]
    log.info("serving %s on http://%s:%d (engine=%s, max_concurrency=%d, max_queue=%d, device=%s)",
             engine.model_name, args.host, port, args.engine, args.max_concurrency, args.max_queue, engine.device)
    if args.ready_file:
        tmp = args.ready_file.with_name(args.ready_file.name + ".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "host": args.host, "port": port}))
        tmp.replace(args.ready_file)
    await serving  # returns after SIGTERM/SIGINT and uvicorn's drain (in-flight requests, --drain-s)
    log.info("closing the engine")
    await asyncio.to_thread(engine.close, 1.0)
    return 0


def read_key() -> str:
    """The key, taken out of the environment: read once, invisible to anything this process starts."""
    return os.environ.pop(KEY_ENV, "")


def main(argv: list[str] | None = None) -> int:
    from amlft.backends.local.engines import ENGINES

    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}",
                                     description=f"Serve a chat model (key in ${KEY_ENV}).")
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--engine", default="transformers", choices=sorted(ENGINES))
    parser.add_argument("--model-name", help="the id /v1/models reports (default: the folder's name)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-concurrency", type=int, default=1, help="requests generated at once (batch size)")
    parser.add_argument("--max-queue", type=int, default=16, help="requests waiting beyond that get 503")
    parser.add_argument("--request-timeout-s", type=float, default=Settings.request_timeout_s)
    parser.add_argument("--max-request-bytes", type=int, default=Settings.max_request_bytes)
    parser.add_argument("--max-prompt-chars", type=int, default=Settings.max_prompt_chars)
    parser.add_argument("--read-timeout-s", type=float, default=Settings.read_timeout_s)
    parser.add_argument("--keep-alive-s", type=float, default=Settings.keep_alive_s)
    parser.add_argument("--max-connections", type=int, default=Settings.max_connections)
    parser.add_argument("--max-new-tokens-limit", type=int, default=4096)
    parser.add_argument("--batch-wait-ms", type=float, default=50.0,
                        help="after a batch, how long to wait for its callers' next requests to batch them again")
    parser.add_argument("--drain-s", type=float, default=Settings.drain_s,
                        help="on SIGTERM, time given to in-flight requests")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, help="CPU threads (default: 1 for small models, else torch's)")
    parser.add_argument("--ready-file", type=Path, help="written (JSON: pid, host, port) once the model is loaded")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    key = read_key()
    if not key:
        log.error("no key: set %s (the server never runs without authentication)", KEY_ENV)
        return 2
    settings = Settings(request_timeout_s=args.request_timeout_s, max_request_bytes=args.max_request_bytes,
                        max_prompt_chars=args.max_prompt_chars, read_timeout_s=args.read_timeout_s,
                        keep_alive_s=args.keep_alive_s, max_connections=args.max_connections, drain_s=args.drain_s)
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s (pick another port, or 0 for any free one)", args.host, args.port, exc)
        return 3
    # uvicorn re-raises the signal that stopped it once it is done; let that land here, not kill us mid-cleanup
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    code = asyncio.run(_serve(args, State(key=key.encode(), settings=settings), sock))
    if args.ready_file:
        args.ready_file.unlink(missing_ok=True)
    log.info("stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
