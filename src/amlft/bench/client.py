"""One timed chat request against a target, streaming where the contract allows it.

Errors are returned as a kind (`timeout`, `connection`, `http_500`, `bad_response`,
`truncated_stream`, ...) rather than raised: a benchmark counts failures, it does not stop
at the first one. A stream that ends before `data: [DONE]` or before any choice carried a
`finish_reason` is `truncated_stream`: the answer may be cut short, so it is not a success.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from amlft.bench.targets import Target
from amlft.serving import ContractError, build_azureml_request, openai_chat_request, parse_azureml_response


@dataclass
class Outcome:
    """What one request did. Times are seconds from the moment the request was sent."""

    ok: bool
    latency_s: float
    ttft_s: float | None = None
    text: str = ""
    streamed: bool = False
    status: int | None = None
    usage: dict[str, Any] | None = None
    error_kind: str | None = None
    error: str | None = None


class _Failure(Exception):
    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind, self.message, self.status = kind, message, status


def http_error_kind(status: int) -> str:
    """The error kind an HTTP error status is counted under (a plain string: `http_503`).

    Kinds are strings so reports and `errors_by_kind` stay JSON; this is the one place that
    names them for HTTP statuses (the Azure ML scoring table: `throttled`, `model_error`, ...)."""
    from amlft.scoring_errors import kind_of

    return kind_of(status)


def generation_parameters(*, max_new_tokens: int, temperature: float, ignore_eos: bool = False) -> dict[str, Any]:
    """Azure ML / transformers parameters. Temperature 0 means greedy: HF rejects
    do_sample with temperature 0, so sampling knobs are left out entirely.

    `ignore_eos` (--ignore-eos) asks for exactly max_new_tokens tokens, so runs across engines
    and commits compare like for like; `build_request` turns it into each contract's fields."""
    params: dict[str, Any] = {"do_sample": False, "max_new_tokens": max_new_tokens}
    if temperature > 0:
        params = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "max_new_tokens": max_new_tokens}
    if ignore_eos:
        params["ignore_eos"] = True
    return params


def openai_url(base_url: str) -> str:
    base = base_url.rstrip("/")
    return base if base.endswith("/chat/completions") else base + "/chat/completions"


def build_request(target: Target, messages: list[dict[str, Any]], params: dict[str, Any],
                  *, stream: bool) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(url, headers, body) for one request. The key goes only into the Authorization header."""
    headers = {"Content-Type": "application/json"}
    if target.key:
        headers["Authorization"] = f"Bearer {target.key}"
    if target.deployment:
        headers["azureml-model-deployment"] = target.deployment
    if target.contract == "openai":
        oa_params = {"temperature": params.get("temperature", 0.0), "top_p": params.get("top_p", 1.0),
                     "do_sample": params.get("do_sample", False), "max_new_tokens": params["max_new_tokens"]}
        body = openai_chat_request(messages, oa_params, model=target.model, stream=stream)
        if params.get("ignore_eos"):
            # vLLM/SGLang/amlft take ignore_eos; min_tokens (vLLM) is sent unless the target refused it
            body["ignore_eos"] = True
            if params.get("min_tokens", True):
                body["min_tokens"] = params["max_new_tokens"]
        if stream:
            # Ask for a final usage chunk so token counts are measured, not estimated.
            body["stream_options"] = {"include_usage": True}
            headers["Accept"] = "text/event-stream"
        return openai_url(target.url), headers, body
    az_params = {k: v for k, v in params.items() if k != "min_tokens"}
    return target.url, headers, build_azureml_request(messages, az_params, nested=True)


def send(session: Any, target: Target, messages: list[dict[str, Any]], params: dict[str, Any],
         *, timeout: float, stream: bool) -> Outcome:
    """Send one request and time it end to end (until the last byte of the answer)."""
    out = _send(session, target, messages, params, timeout=timeout, stream=stream)
    if out.error and target.key and target.key in out.error:
        out.error = out.error.replace(target.key, "***")  # a server may echo the header back
    return out


def _send(session: Any, target: Target, messages: list[dict[str, Any]], params: dict[str, Any],
          *, timeout: float, stream: bool) -> Outcome:
    import requests
    import urllib3

    stream = stream and target.contract == "openai"  # Azure ML /score has no streaming mode
    url, headers, body = build_request(target, messages, params, stream=stream)
    t0 = time.perf_counter()
    status: int | None = None
    try:
        resp = session.post(url, json=body, headers=headers, timeout=(min(timeout, 10.0), timeout), stream=True)
        status = resp.status_code
        try:
            if status >= 400:
                from amlft.scoring_errors import explain

                raise _Failure(http_error_kind(status), f"{_error_message(resp)} - {explain(status, resp.headers)}", status)
            ctype = resp.headers.get("Content-Type", "")
            if stream and "text/event-stream" in ctype:
                text, ttft, usage = _read_sse(resp, t0, timeout)
                return Outcome(True, time.perf_counter() - t0, ttft, text, True, status, usage)
            payload_bytes = resp.content
            latency = time.perf_counter() - t0
            text, usage = _parse_json_reply(target.contract, payload_bytes)
            return Outcome(True, latency, None, text, False, status, usage)
        finally:
            resp.close()
    except _Failure as exc:
        return Outcome(False, time.perf_counter() - t0, status=exc.status or status, error_kind=exc.kind,
                       error=exc.message)
    except requests.Timeout as exc:
        return Outcome(False, time.perf_counter() - t0, status=status, error_kind="timeout",
                       error=f"no answer within {timeout:g}s ({type(exc).__name__})")
    except requests.ConnectionError as exc:
        kind = "timeout" if "timed out" in str(exc).lower() else "connection"
        return Outcome(False, time.perf_counter() - t0, status=status, error_kind=kind,
                       error=f"{type(exc).__name__}: {_short(str(exc))}")
    except requests.RequestException as exc:
        return Outcome(False, time.perf_counter() - t0, status=status, error_kind="request",
                       error=f"{type(exc).__name__}: {_short(str(exc))}")
    except (urllib3.exceptions.ReadTimeoutError, TimeoutError) as exc:
        # raw.read1 bypasses requests' wrapping, so socket-level errors arrive as themselves
        return Outcome(False, time.perf_counter() - t0, status=status, error_kind="timeout",
                       error=f"no data for {timeout:g}s while reading the answer ({type(exc).__name__})")
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        return Outcome(False, time.perf_counter() - t0, status=status, error_kind="connection",
                       error=f"{type(exc).__name__}: {_short(str(exc))}")


def _read_sse(resp: Any, t0: float, timeout: float) -> tuple[str, float | None, dict[str, Any] | None]:
    """Read an OpenAI-style server-sent-event stream as bytes arrive.

    `raw.read1` returns whatever the socket has (chunked or not), so time-to-first-token
    is not skewed by a read buffer waiting to fill up.
    """
    parts: list[str] = []
    ttft: float | None = None
    usage: dict[str, Any] | None = None
    buf = b""
    done = False
    finished = False  # some choice carried a finish_reason
    while not done:
        if time.perf_counter() - t0 > timeout:
            raise _Failure("timeout", f"stream still running after {timeout:g}s")
        data = resp.raw.read1(65536, decode_content=True)
        if not data:
            break
        buf += data
        while b"\n" in buf:
            raw_line, buf = buf.split(b"\n", 1)
            event = parse_sse_line(raw_line)
            if event is None:
                continue
            if event == "[DONE]":
                done = True
                break
            if isinstance(event, dict) and event.get("error"):
                raise _Failure("stream_error", _short(json.dumps(event["error"])))
            finished = finished or stream_finish_reason(event) is not None
            delta = stream_delta_text(event)
            if delta:
                if ttft is None:
                    ttft = time.perf_counter() - t0
                parts.append(delta)
            if isinstance(event, dict) and isinstance(event.get("usage"), dict):
                usage = event["usage"]
    if not done and not parts:
        raise _Failure("truncated_stream", "event stream ended without any content or [DONE]")
    if not done:
        raise _Failure("truncated_stream", f"event stream cut off before [DONE] after {len(parts)} chunk(s)")
    if not finished:
        raise _Failure("truncated_stream", "event stream ended ([DONE]) without a finish_reason")
    return "".join(parts), ttft, usage


def parse_sse_line(line: bytes | str) -> Any:
    """One SSE line -> the decoded `data:` payload, "[DONE]", or None (comments, blank, other fields)."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    line = line.rstrip("\r")
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if not data:
        return None
    if data == "[DONE]":
        return "[DONE]"
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise _Failure("bad_response", f"malformed event: {_short(data)}") from exc


def stream_delta_text(event: Any) -> str:
    if not isinstance(event, dict):
        return ""
    choices = event.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return ""
    delta = choices[0].get("delta") or {}
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) else ""


def stream_finish_reason(event: Any) -> str | None:
    """The finish_reason of a chunk's first choice ("stop", "length", ...), or None."""
    if not isinstance(event, dict):
        return None
    choices = event.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return None
    reason = choices[0].get("finish_reason")
    return reason if isinstance(reason, str) and reason else None


def _parse_json_reply(contract: str, payload_bytes: bytes) -> tuple[str, dict[str, Any] | None]:
    try:
        payload = json.loads(payload_bytes)
    except ValueError as exc:
        raise _Failure("bad_response", f"answer is not JSON: {_short(payload_bytes.decode('utf-8', 'replace'))}") from exc
    if contract == "openai":
        try:
            text = payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise _Failure("bad_response", f"no choices[0].message.content in {_short(json.dumps(payload))}") from exc
        usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else None
        return str(text or ""), usage
    try:
        text = parse_azureml_response(payload)
    except ContractError as exc:
        raise _Failure("bad_response", str(exc)) from exc
    usage = payload.get("usage") if isinstance(payload, dict) and isinstance(payload.get("usage"), dict) else None
    return text, usage


def _error_message(resp: Any) -> str:
    try:
        body = resp.content.decode("utf-8", errors="replace")
    except Exception:  # the body of an error is best effort
        body = ""
    return f"HTTP {resp.status_code}: {_short(body) or resp.reason}"


def _short(text: str, n: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."
