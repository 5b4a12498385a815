"""LEGACY (http.server), kept only for scripts/bench_serving.py's old-vs-new comparison; deleted before merge.

The local scoring server: Azure ML's `/score` contract and an OpenAI-compatible API.

    launch(model_dir, key=..., log_path=...) -> ServerHandle   start a detached server, wait until ready
    stop(pid) -> bool                                          SIGTERM, then SIGKILL; idempotent
    is_alive(pid, port) -> bool                                process up *and* /health answering
    python -m amlft.backends.local.server --model-dir DIR      the server itself (key in $AMLFT_SERVER_KEY)

Routes: `POST /score` (Azure ML chat), `POST /v1/chat/completions` (OpenAI, `stream: true` as
SSE), `GET /v1/models`, `GET /health` (no auth, no secrets). Everything but /health needs
`Authorization: Bearer <key>`, like an Azure endpoint with `auth_mode: key`.

Why the standard library's ThreadingHTTPServer: the server runs one model in one worker
thread (see generation.py), so the HTTP layer only parses, authenticates, queues and waits;
a thread per connection is plenty, and it adds no dependency to the `local` extra.

Why the key travels in an environment variable: argv is world-readable through `ps`; the
environment of a process is readable only by its owner. The key is never logged: the access
log has method, path, status and latency only.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from amlft.backends.local import processes
from amlft.errors import DeploymentError
from amlft.serving import ContractError, parse_azureml_request, validate_messages

KEY_ENV = "AMLFT_SERVER_KEY"
MODULE = "amlft.backends.local.server_legacy"
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
           threads: int | None = None, on_started: Callable[[int], None] | None = None) -> ServerHandle:
    """Start a detached scoring server for a transformers model folder and wait until /health answers.

    The process outlives the caller (its own session), so `amlft deploy` can return and a later
    `amlft teardown` stops it by pid. Its stdout/stderr (model loading, access log) go to log_path.
    on_started(pid) runs right after the process starts, before the (possibly long) ready wait, so
    the caller can record it first and a teardown can find it even if this process is killed.
    """
    if not key:
        raise DeploymentError("Refusing to start a scoring server without a key.",
                              hint="Pass the endpoint key (amlft generates one at deploy).")
    model_dir, log_path = Path(model_dir), Path(log_path)
    if not (model_dir / "config.json").is_file():
        raise DeploymentError(f"{model_dir} is not a transformers model folder (no config.json).",
                              hint="Deploy the registered model's folder (outputs.register.model_dir); "
                                   "run `amlft register` first.")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    ready_file = log_path.with_name(log_path.name + ".ready.json")
    ready_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", MODULE, "--model-dir", str(model_dir), "--host", host, "--port", str(port),
           "--max-concurrency", str(max_concurrency), "--max-queue", str(max_queue),
           "--request-timeout-s", str(request_timeout_s), "--max-request-bytes", str(max_request_bytes),
           "--ready-file", str(ready_file)]
    if model_name:
        cmd += ["--model-name", model_name]
    if threads:
        cmd += ["--threads", str(threads)]
    env = dict(os.environ)
    env[KEY_ENV] = key
    src = str(Path(__file__).resolve().parents[3])  # so `-m amlft...` works from a source checkout too
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
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
                info = json.loads(ready_file.read_text())
                if _health(_connect_host(host), int(info["port"])) is not None:
                    h, p = _connect_host(host), int(info["port"])
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


def _health(host: str, port: int, timeout: float = 2.0) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=timeout) as resp:
            return json.loads(resp.read()) if resp.status == 200 else None
    except (OSError, ValueError):
        return None


def stop(pid: int, *, timeout_s: float = 10) -> bool:
    """Stop a server: SIGTERM (it drains in-flight requests), SIGKILL after timeout_s.
    Returns whether it was running. Safe to call again, or for a pid that is long gone."""
    return processes.terminate(pid, module=MODULE, timeout_s=timeout_s)


def is_alive(pid: int, port: int, *, host: str = "127.0.0.1") -> bool:
    """True when the process runs and answers /health on port (a hung or foreign process does not count)."""
    return processes.is_running(pid, module=MODULE) and _health(_connect_host(host), port) is not None


# ======================================================================================
# The server process
# ======================================================================================
class HTTPError(Exception):
    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


# OpenAI fields honoured, and fields accepted only at their no-op value (anything else is refused
# with a 400 naming it, rather than silently ignored).
_OPENAI_FIELDS = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
                  "stream", "stream_options", "repetition_penalty", "ignore_eos", "user", "metadata"}
_OPENAI_NOOP = {"n": 1, "stop": None, "frequency_penalty": 0, "presence_penalty": 0, "logprobs": False,
                "store": False}


class App:
    """Shared state of the handlers: the engine, the key, limits, and the in-flight count."""

    def __init__(self, engine: Any, key: str, *, request_timeout_s: float, max_request_bytes: int) -> None:
        self.engine = engine
        self._key = key.encode()
        self.request_timeout_s = request_timeout_s
        self.max_request_bytes = max_request_bytes
        self.draining = False
        self.active = 0
        self._active_lock = threading.Lock()
        self.created = int(time.time())

    def authorized(self, header: str | None) -> bool:
        scheme, _, token = (header or "").partition(" ")
        # compare_digest on equal-type bytes: the time taken does not reveal how much of the key matched
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self._key)

    def enter(self) -> None:
        with self._active_lock:
            self.active += 1

    def leave(self) -> None:
        with self._active_lock:
            self.active -= 1


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: benchmark clients reuse connections
    server_version = "amlft-local"
    sys_version = ""
    timeout = 60  # an idle keep-alive connection gives its thread back after this
    # Headers and body go out in separate writes; with Nagle on, the body waits for the client's
    # delayed ACK (~40 ms on Linux) on every keep-alive response.
    disable_nagle_algorithm = True
    app: App  # set on the subclass made by serve()

    # ---- plumbing ----------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:
        pass  # the one access-log line per request is written in _handle (never headers)

    def send_response(self, code: int, message: str | None = None) -> None:
        self._status = code
        super().send_response(code, message)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        start, self._status = time.perf_counter(), 0
        path = self.path.split("?", 1)[0]
        self.app.enter()
        try:
            self._route(method, path)
        except HTTPError as err:
            self._error(err)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:
            log.exception("unhandled error on %s %s", method, path)
            with contextlib.suppress(OSError):
                self._error(HTTPError(500, f"internal error: {type(exc).__name__}", kind="server_error"))
        finally:
            self.app.leave()
            access_log.info('%s "%s %s" %d %.1fms', self.client_address[0], method, path, self._status,
                            (time.perf_counter() - start) * 1000)

    def _json(self, status: int, payload: Any, *, close: bool = False, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _error(self, err: HTTPError) -> None:
        headers = {"WWW-Authenticate": 'Bearer realm="amlft"'} if err.status == 401 else None
        if err.status in (503,):
            headers = {"Retry-After": "1"}
        # The body may be unread (401, 413): close rather than misread it as the next request.
        self._json(err.status, {"error": {"message": err.message, "type": err.kind, "code": err.status}},
                   close=not self._body_read, headers=headers)

    def _read_json(self) -> Any:
        if self.headers.get("Transfer-Encoding"):
            raise HTTPError(411, "chunked request bodies are not supported; send Content-Length")
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            raise HTTPError(411, "Content-Length header required")
        try:
            length = int(length_header)
        except ValueError:
            raise HTTPError(400, "Content-Length must be an integer") from None
        if length > self.app.max_request_bytes:
            raise HTTPError(413, f"request body is {length} bytes; this server accepts at most "
                                 f"{self.app.max_request_bytes}")
        raw = self.rfile.read(length)
        self._body_read = True
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise HTTPError(400, f"body is not valid JSON: {exc}") from None

    # ---- routes ------------------------------------------------------------------------
    def _route(self, method: str, path: str) -> None:
        self._body_read = method == "GET"
        routes = {"/health": ("GET", False), "/v1/models": ("GET", True), "/score": ("POST", True),
                  "/v1/chat/completions": ("POST", True)}
        if path not in routes:
            raise HTTPError(404, f"no route {path}; try POST /score or POST /v1/chat/completions",
                            kind="not_found")
        want, needs_key = routes[path]
        if method != want:
            raise HTTPError(405, f"{path} accepts {want} only")
        if needs_key and not self.app.authorized(self.headers.get("Authorization")):
            raise HTTPError(401, "missing or wrong key: send 'Authorization: Bearer <key>' "
                                 "(`amlft endpoint credentials` prints it)", kind="authentication_error")
        if path == "/health":
            self._json(200, {"status": "draining" if self.app.draining else "ok",
                             "model": self.app.engine.model_name, **self.app.engine.load(),
                             "stats": dict(self.app.engine.stats)})
        elif path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": self.app.engine.model_name, "object": "model",
                                                         "created": self.app.created, "owned_by": "amlft"}]})
        elif path == "/score":
            self._score()
        else:
            self._chat_completions()

    def _score(self) -> None:
        from amlft.backends.local.generation_legacy import AZUREML_PARAMETERS, make_params

        body = self._read_json()
        try:
            messages, raw = parse_azureml_request(body)
            unknown = sorted(set(raw) - set(AZUREML_PARAMETERS))
            if unknown:
                raise ContractError(f"input_data.parameters.{unknown[0]} is not supported "
                                    f"(supported: {', '.join(AZUREML_PARAMETERS)})")
            params = make_params(where="input_data.parameters.", limit=self.app.engine.max_new_tokens_limit, **raw)
            prompt = self.app.engine.encode(messages)
        except ContractError as exc:
            raise HTTPError(400, str(exc)) from None
        req = self._generate(prompt, params, stream=False)
        self._json(200, {"output": req.text})

    def _chat_completions(self) -> None:
        from amlft.backends.local.generation_legacy import make_params

        body = self._read_json()
        try:
            if not isinstance(body, dict):
                raise ContractError('body must be a JSON object {"messages": [...], ...}')
            for name in body:
                if name not in _OPENAI_FIELDS and name not in _OPENAI_NOOP:
                    raise ContractError(f"{name} is not supported by this server")
                if name in _OPENAI_NOOP and body[name] not in (_OPENAI_NOOP[name], None):
                    raise ContractError(f"{name}={body[name]!r} is not supported (only {_OPENAI_NOOP[name]!r})")
            messages = validate_messages(body.get("messages"), "messages")
            if body.get("model") is not None and not isinstance(body["model"], str):
                raise ContractError("model must be a string")
            stream = body.get("stream") or False
            if not isinstance(stream, bool):
                raise ContractError("stream must be true or false")
            opts = body.get("stream_options") or {}
            if not isinstance(opts, dict):
                raise ContractError("stream_options must be an object")
            max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
            params = make_params(where="", limit=self.app.engine.max_new_tokens_limit, max_new_tokens=max_tokens,
                                 temperature=body.get("temperature"), top_p=body.get("top_p"),
                                 top_k=body.get("top_k"), repetition_penalty=body.get("repetition_penalty"),
                                 ignore_eos=body.get("ignore_eos"))
            prompt = self.app.engine.encode(messages)
        except ContractError as exc:
            raise HTTPError(400, str(exc)) from None
        model = body.get("model") or self.app.engine.model_name
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if not stream:
            req = self._generate(prompt, params, stream=False)
            self._json(200, {
                "id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": req.text},
                             "finish_reason": req.finish_reason}],
                "usage": {"prompt_tokens": req.prompt_tokens, "completion_tokens": req.completion_tokens,
                          "total_tokens": req.prompt_tokens + req.completion_tokens}})
            return
        self._stream(prompt, params, cid=cid, created=created, model=model,
                     include_usage=bool(opts.get("include_usage")))

    # ---- generation --------------------------------------------------------------------
    def _submit(self, prompt: list[int], params: Any, *, stream: bool) -> Any:
        from amlft.backends.local.generation_legacy import GenRequest, Overloaded, ShuttingDown

        if self.app.draining:
            raise HTTPError(503, "server is shutting down", kind="server_error")
        req = GenRequest(prompt_ids=prompt, params=params, deadline=time.monotonic() + self.app.request_timeout_s,
                         stream=queue.Queue() if stream else None)
        try:
            self.app.engine.submit(req)
        except Overloaded:
            raise HTTPError(503, "server is at capacity (all generation slots and queue places taken); "
                                 "retry shortly", kind="server_error") from None
        except ShuttingDown:
            raise HTTPError(503, "server is shutting down", kind="server_error") from None
        return req

    def _check(self, req: Any) -> None:
        if req.error is None:
            return
        if req.error == "timeout":
            raise HTTPError(504, f"generation did not finish within {self.app.request_timeout_s:g}s "
                                 "(request timeout); ask for fewer tokens or retry", kind="timeout")
        if req.error == "shutdown":
            raise HTTPError(503, "server is shutting down", kind="server_error")
        raise HTTPError(500, req.error, kind="server_error")

    def _generate(self, prompt: list[int], params: Any, *, stream: bool) -> Any:
        req = self._submit(prompt, params, stream=stream)
        if not req.done.wait(max(0.0, req.deadline - time.monotonic())):
            self.app.engine.cancel(req, "timeout")
        self._check(req)
        return req

    def _stream(self, prompt: list[int], params: Any, *, cid: str, created: int, model: str,
                include_usage: bool) -> None:
        req = self._submit(prompt, params, stream=True)
        try:
            first = req.stream.get(timeout=max(0.0, req.deadline - time.monotonic()))
        except queue.Empty:
            self.app.engine.cancel(req, "timeout")
            first = None
        if first is None:
            req.done.wait(1.0)
            self._check(req)  # nothing streamed yet: a proper status code is still possible
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")  # the end of the stream is the end of the connection
        self.close_connection = True
        self.end_headers()

        def event(payload: Any) -> None:
            self.wfile.write(b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n")
            self.wfile.flush()

        def chunk(delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
            return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        try:
            event(chunk({"role": "assistant", "content": ""}))
            piece = first
            while piece is not None:
                event(chunk({"content": piece}))
                try:
                    piece = req.stream.get(timeout=max(0.0, req.deadline - time.monotonic()) + 5)
                except queue.Empty:
                    self.app.engine.cancel(req, "timeout")
                    break
            req.done.wait(5)
            if req.error is not None:
                status = 504 if req.error == "timeout" else 503 if req.error == "shutdown" else 500
                event({"error": {"message": f"generation stopped: {req.error}", "code": status}})
            else:
                event(chunk({}, req.finish_reason))
                if include_usage:
                    event({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                           "choices": [], "usage": {"prompt_tokens": req.prompt_tokens,
                                                    "completion_tokens": req.completion_tokens,
                                                    "total_tokens": req.prompt_tokens + req.completion_tokens}})
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.app.engine.cancel(req, "cancelled")  # the client left: stop spending cores on it
            raise


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


def serve(app: App, host: str, port: int) -> ThreadingHTTPServer:
    """Bind (port 0 = any free port) and serve from a background thread; returns the server."""
    handler = type("BoundHandler", (Handler,), {"app": app})
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_cls = type("AmlftServer", (_Server,), {"address_family": family})
    httpd = server_cls((host, port), handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="amlft-http",
                     daemon=True).start()
    return httpd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}",
                                     description=f"Serve a transformers chat model (key in ${KEY_ENV}).")
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--model-name", help="the id /v1/models reports (default: the folder's name)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-concurrency", type=int, default=1, help="requests generated at once (batch size)")
    parser.add_argument("--max-queue", type=int, default=16, help="requests waiting beyond that get 503")
    parser.add_argument("--request-timeout-s", type=float, default=120.0)
    parser.add_argument("--max-request-bytes", type=int, default=1_000_000)
    parser.add_argument("--max-new-tokens-limit", type=int, default=4096)
    parser.add_argument("--batch-wait-ms", type=float, default=50.0,
                        help="after a batch, how long to wait for its callers' next requests to batch them again")
    parser.add_argument("--drain-s", type=float, default=5.0, help="on SIGTERM, time given to running requests")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: 1 for small models, else torch's)")
    parser.add_argument("--ready-file", type=Path, help="written (JSON: pid, host, port) once serving")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    key = os.environ.pop(KEY_ENV, "")
    if not key:
        log.error("no key: set %s (the server never runs without authentication)", KEY_ENV)
        return 2

    stop_event = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop_event.set())

    from amlft.backends.local.generation_legacy import Engine
    from amlft.errors import AmlftError

    log.info("loading %s", args.model_dir)
    try:
        engine = Engine(args.model_dir, max_concurrency=args.max_concurrency, max_queue=args.max_queue,
                        device=args.device, max_new_tokens_limit=args.max_new_tokens_limit,
                        threads=args.threads or "auto", batch_wait_s=args.batch_wait_ms / 1000)
    except AmlftError as exc:
        log.error("%s", exc)  # message and hint; launch() shows this tail of the log
        return 2
    if args.model_name:
        engine.model_name = args.model_name
    app = App(engine, key, request_timeout_s=args.request_timeout_s, max_request_bytes=args.max_request_bytes)
    try:
        httpd = serve(app, args.host, args.port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s (pick another port, or 0 for any free one)", args.host, args.port, exc)
        return 3
    port = httpd.server_address[1]
    log.info("serving %s on http://%s:%d (max_concurrency=%d, max_queue=%d, device=%s, threads=%d)",
             engine.model_name, args.host, port, args.max_concurrency, args.max_queue, engine.device, engine.threads)
    if args.ready_file:
        tmp = args.ready_file.with_name(args.ready_file.name + ".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "host": args.host, "port": port}))
        tmp.replace(args.ready_file)

    while not stop_event.wait(0.5):
        pass
    log.info("shutting down: draining for up to %.1fs", args.drain_s)
    app.draining = True
    engine.close(args.drain_s)
    deadline = time.monotonic() + 2.0  # let handlers write the responses the drain produced
    while app.active > 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    httpd.shutdown()
    httpd.server_close()
    if args.ready_file:
        args.ready_file.unlink(missing_ok=True)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
