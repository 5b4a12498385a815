"""Request/response plumbing shared by the route modules.

Routes see a small `FakeRequest` (method, host, path, query, headers, body) and return
a `(status, headers, body)` tuple — what `responses` callbacks return — so the route
code never touches `requests` internals.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

Reply = tuple[int, dict[str, str], bytes | str]

# LRO responses carry a millisecond delay: azure-core's poller treats `Retry-After: 0` as
# "absent" and would fall back to its 30 s default, so "1 ms" is how we say "poll now".
FAST_POLL = {"x-ms-retry-after-ms": "1"}


@dataclass
class FakeRequest:
    method: str
    url: str
    host: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    @classmethod
    def from_prepared(cls, prepared: Any) -> FakeRequest:
        parts = urlsplit(prepared.url)
        body = prepared.body
        if body is None:
            data = b""
        elif isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data = body.encode("utf-8")
        elif hasattr(body, "read"):
            chunk = body.read()
            data = chunk.encode("utf-8") if isinstance(chunk, str) else bytes(chunk)
        else:  # an iterable of chunks (azure-storage-blob streams uploads this way)
            data = b"".join(c.encode("utf-8") if isinstance(c, str) else bytes(c) for c in body)
        headers = {k.lower(): v for k, v in prepared.headers.items()}
        return cls(
            method=prepared.method.upper(),
            url=prepared.url,
            host=(parts.hostname or "").lower(),
            path=unquote(parts.path),
            query=parse_qs(parts.query, keep_blank_values=True),
            headers=headers,
            body=data,
        )

    def json(self) -> Any:
        if not self.body:
            return {}
        return json.loads(self.body.decode("utf-8"))

    def arg(self, name: str, default: str | None = None) -> str | None:
        for key, values in self.query.items():
            if key.lower() == name.lower() and values:
                return values[0]
        return default


def reply_json(status: int, payload: Any, headers: dict[str, str] | None = None) -> Reply:
    merged = {"Content-Type": "application/json; charset=utf-8", "x-ms-request-id": "fake-request"}
    merged.update(headers or {})
    return status, merged, json.dumps(payload)


def reply_error(status: int, code: str, message: str, headers: dict[str, str] | None = None,
                details: list[dict[str, Any]] | None = None) -> Reply:
    """An ARM-shaped error body, which azure-core turns into HttpResponseError.message."""
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return reply_json(status, {"error": error}, headers)


def reply_empty(status: int, headers: dict[str, str] | None = None) -> Reply:
    return status, dict(headers or {}), b""


Handler = Callable[..., Reply]


@dataclass
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    host: str | None = None  # regex on the host; None = any


@dataclass
class Router:
    routes: list[Route] = field(default_factory=list)

    def add(self, method: str, path_regex: str, handler: Handler, *, host: str | None = None) -> None:
        self.routes.append(Route(method.upper(), re.compile(path_regex + r"/?$", re.IGNORECASE), handler, host))

    def find(self, req: FakeRequest) -> tuple[Handler, dict[str, str]] | None:
        for route in self.routes:
            if route.method != req.method:
                continue
            if route.host is not None and not re.search(route.host, req.host, re.IGNORECASE):
                continue
            match = route.pattern.match(req.path)
            if match:
                return route.handler, match.groupdict()
        return None
