"""Summary numbers from raw request timings, plus output-token counting.

Percentiles come from `amlft.percentiles` (the one definition shared with the data report
and the benchmark scripts: linear interpolation, monotone in q, so p50 <= p95 <= p99 <= max).
Throughput is counted over the level's wall time (first request sent to last answer in);
the headline rate is successful requests per second - failures are their own column.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

from amlft.percentiles import percentile

CHARS_PER_TOKEN = 4.0
ESTIMATE_NOTE = f"estimated at {CHARS_PER_TOKEN:g} characters per token (no usage in the answers, no --tokenizer)"


__all__ = ["TokenCounter", "percentile", "summarize"]


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(rows: Sequence[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    """One concurrency level's numbers from its request rows (see runner.RequestRow)."""
    ok = [r for r in rows if r["ok"]]
    errors = Counter(r["error_kind"] for r in rows if not r["ok"])
    lat = [r["latency_s"] for r in ok]
    ttft = [r["ttft_s"] for r in ok if r.get("ttft_s") is not None]
    tpot = [r["tpot_s"] for r in ok if r.get("tpot_s") is not None]
    out_tokens = sum(int(r["output_tokens"] or 0) for r in ok)
    sources = Counter(r["tokens_source"] for r in ok if r.get("tokens_source"))
    wall = max(wall_s, 1e-9)
    return {
        "requests": len(rows),
        "successes": len(ok),
        "errors": len(rows) - len(ok),
        "errors_by_kind": dict(sorted(errors.items())),
        "wall_s": wall_s,
        "requests_per_s": len(rows) / wall,
        "successes_per_s": len(ok) / wall,
        "errors_per_s": (len(rows) - len(ok)) / wall,
        "output_tokens": out_tokens,
        "output_tokens_per_s": out_tokens / wall,
        "tokens_source": token_source_label(sources),
        "latency_mean_s": mean(lat),
        "latency_p50_s": percentile(lat, 50),
        "latency_p95_s": percentile(lat, 95),
        "latency_p99_s": percentile(lat, 99),
        "latency_min_s": min(lat) if lat else None,
        "latency_max_s": max(lat) if lat else None,
        "ttft_mean_s": mean(ttft),
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p95_s": percentile(ttft, 95),
        "tpot_mean_s": mean(tpot),
        "tpot_p50_s": percentile(tpot, 50),
        "tpot_p95_s": percentile(tpot, 95),
        "streamed": len(ttft),
    }


def token_source_label(sources: Counter[str]) -> str | None:
    """'usage', 'tokenizer', 'estimate', or 'mixed: ...' when answers differed."""
    if not sources:
        return None
    if len(sources) == 1:
        return next(iter(sources))
    return "mixed: " + ", ".join(f"{k} {v}" for k, v in sorted(sources.items()))


def is_estimated(label: str | None) -> bool:
    return bool(label) and "estimate" in str(label)


class TokenCounter:
    """Output tokens of an answer: the server's `usage`, else --tokenizer, else an estimate."""

    def __init__(self, tokenizer: str | None = None) -> None:
        self._tok: Any = None
        self._lock = threading.Lock()  # fast tokenizers are not safe to share across threads
        self.tokenizer = tokenizer
        if tokenizer:
            self._tok = load_tokenizer(tokenizer)

    def count(self, text: str, usage: dict[str, Any] | None) -> tuple[int, str]:
        if usage and isinstance(usage.get("completion_tokens"), int):
            return int(usage["completion_tokens"]), "usage"
        if self._tok is not None:
            with self._lock:
                return len(self._tok.encode(text, add_special_tokens=False)), "tokenizer"
        return max(1, round(len(text) / CHARS_PER_TOKEN)) if text else 0, "estimate"


def load_tokenizer(name_or_path: str) -> Any:
    """A transformers tokenizer from a local folder (or a cached hub id; never downloads)."""
    from amlft.errors import ConfigError
    from amlft.extras import require

    transformers = require("transformers", extra="local", purpose="--tokenizer")
    try:
        return transformers.AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--tokenizer {name_or_path}: cannot load it ({exc}).",
                          hint="Give a local model folder holding tokenizer files, or leave --tokenizer out "
                               "(token counts are then taken from the answers' usage, or estimated).") from exc
