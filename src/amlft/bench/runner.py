"""Drive the benchmark: per target, warmup then one measured pass per concurrency level.

Concurrency N means N users, each with exactly one request in flight (closed loop):
a user sends its next request only when its previous answer is in. A level stops when
--requests have been sent or --duration has passed, whichever comes first; requests in
flight at the deadline finish (each bounded by --timeout) and are counted.
"""

from __future__ import annotations

import datetime as _dt
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from amlft.bench import client, metrics
from amlft.bench.targets import Target, TargetSpec, describe_spec, resolve
from amlft.bench.workload import Workload
from amlft.console import Console
from amlft.errors import AmlftError


@dataclass
class Settings:
    concurrency: list[int]
    requests: int | None = 20
    duration_s: float | None = None
    warmup: int = 2
    timeout_s: float = 120.0
    max_new_tokens: int = 128
    temperature: float = 0.0
    stream: bool = True
    ignore_eos: bool = False  # --ignore-eos: every answer runs to max_new_tokens

    def describe(self) -> dict[str, Any]:
        return {"concurrency": self.concurrency, "requests_per_level": self.requests, "duration_s": self.duration_s,
                "warmup": self.warmup, "timeout_s": self.timeout_s, "max_new_tokens": self.max_new_tokens,
                "temperature": self.temperature, "stream": self.stream, "ignore_eos": self.ignore_eos}


@dataclass
class TargetResult:
    target: dict[str, Any]
    status: str = "ok"  # ok | errors | failed | interrupted
    reason: str | None = None
    warmup: list[dict[str, Any]] = field(default_factory=list)
    levels: list[dict[str, Any]] = field(default_factory=list)  # {"concurrency", "summary", "requests": [...]}
    record: Any = None  # the run record of a --run target (not serialised)
    error: AmlftError | None = None  # why the target could not be resolved (not serialised)

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "status": self.status, "reason": self.reason, "warmup": self.warmup,
                "levels": self.levels}


def run_benchmark(specs: Sequence[TargetSpec], workload: Workload, settings: Settings, *, console: Console,
                  counter: metrics.TokenCounter | None = None) -> list[TargetResult]:
    """Benchmark every target in turn; one target failing never stops the others."""
    counter = counter or metrics.TokenCounter()
    stop = threading.Event()
    results: list[TargetResult] = []
    for spec in specs:
        if stop.is_set():
            break
        try:
            target, record = resolve(spec, console)
        except AmlftError as exc:
            console.warn(f"target {spec.label()}: {exc.message}")
            results.append(TargetResult(describe_spec(spec), status="failed", reason=exc.message, error=exc))
            continue
        console.step(f"bench {target.name} ({target.contract}, {target.describe()['url']})")
        results.append(bench_target(target, workload, settings, console=console, counter=counter, record=record,
                                    stop=stop))
    return results


def bench_target(target: Target, workload: Workload, settings: Settings, *, console: Console,
                 counter: metrics.TokenCounter, record: Any = None,
                 stop: threading.Event | None = None) -> TargetResult:
    """Warmup, then each concurrency level. Ctrl-C (sets `stop`) keeps what was measured so far."""
    stop = stop or threading.Event()
    result = TargetResult(target.describe(), record=record)
    params = client.generation_parameters(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                                          ignore_eos=settings.ignore_eos)
    if settings.ignore_eos:
        refused = _probe_length_fields(target, workload, settings, params, console=console)
        if refused:
            result.status, result.reason = "failed", refused
            console.warn(f"target {target.name}: {refused}")
            return result
    if settings.warmup:
        result.warmup, _ = _run_level(target, workload, settings, params, concurrency=1, limit=settings.warmup,
                                      deadline_s=None, counter=counter, on_done=None, stop=stop)
        if stop.is_set():
            result.status, result.reason = "interrupted", "interrupted during warmup"
            return result
        if not any(r["ok"] for r in result.warmup):
            first = result.warmup[0]
            result.status, result.reason = "failed", f"every warmup request failed ({first['error_kind']}: {first['error']})"
            console.warn(f"target {target.name}: {result.reason}; skipping its measured runs")
            return result
    # Progress counts requests, or seconds when only --duration bounds the levels.
    by_time = settings.requests is None
    total = ((settings.duration_s or 0) if by_time else (settings.requests or 0)) * len(settings.concurrency)
    with console.progress(f"{target.name}", total=total, unit="s" if by_time else "requests") as bar:
        lock = threading.Lock()
        done = {"n": 0, "errors": 0, "levels_done": 0, "level_t0": time.perf_counter()}

        def on_done(row: dict[str, Any]) -> None:
            with lock:
                done["n"] += 1
                done["errors"] += 0 if row["ok"] else 1
                if by_time:
                    elapsed = min(time.perf_counter() - done["level_t0"], settings.duration_s or 0)
                    completed = done["levels_done"] * (settings.duration_s or 0) + elapsed
                else:
                    completed = done["n"]
                bar.update(completed, status=f"c={row['concurrency']} sent={done['n']} errors={done['errors']}")

        for level in settings.concurrency:
            rows, wall = _run_level(target, workload, settings, params, concurrency=level, limit=settings.requests,
                                    deadline_s=settings.duration_s, counter=counter, on_done=on_done, stop=stop)
            with lock:
                done["levels_done"] += 1
                done["level_t0"] = time.perf_counter()
            if rows:
                result.levels.append({"concurrency": level, "summary": metrics.summarize(rows, wall),
                                      "requests": rows})
            if stop.is_set():
                result.status = "interrupted"
                result.reason = f"interrupted at concurrency {level}; the numbers cover what finished before"
                return result
    if settings.ignore_eos:
        _warn_short_outputs(target, result, settings, console)
    ok = sum(lv["summary"]["successes"] for lv in result.levels)
    errs = sum(lv["summary"]["errors"] for lv in result.levels)
    if ok == 0:
        kinds = sorted({k for lv in result.levels for k in lv["summary"]["errors_by_kind"]})
        result.status, result.reason = "failed", f"no request succeeded ({', '.join(kinds) or 'nothing sent'})"
    elif errs:
        result.status, result.reason = "errors", f"{errs} of {ok + errs} requests failed"
    return result


def _probe_length_fields(target: Target, workload: Workload, settings: Settings, params: dict[str, Any], *,
                         console: Console) -> str | None:
    """--ignore-eos: one request to learn which length fields the target accepts.

    Servers that refuse unknown fields (amlft's own, strict OpenAI proxies) answer 400 naming
    the field: `min_tokens` is then dropped for this target (`ignore_eos` alone still fixes the
    length); a refused `ignore_eos` fails the target, since its lengths would not be comparable.
    Returns why the target cannot honour --ignore-eos, or None."""
    import requests

    with requests.Session() as session:
        out = client.send(session, target, workload.messages(0), params, timeout=settings.timeout_s,
                          stream=settings.stream)
    if out.ok or out.status != 400:
        return None  # accepted, or an error the warmup/levels will count and report
    message = out.error or ""
    if "min_tokens" in message:
        params["min_tokens"] = False
        console.info(f"target {target.name}: does not accept min_tokens; sending ignore_eos only")
        return None
    if "ignore_eos" in message:
        return f"--ignore-eos: the target refuses ignore_eos ({message})"
    return None


def _warn_short_outputs(target: Target, result: TargetResult, settings: Settings, console: Console) -> None:
    """With --ignore-eos every counted answer should be max_new_tokens long; say so when not."""
    rows = [r for lv in result.levels for r in lv["requests"] if r["ok"] and r["tokens_source"] != "estimate"]
    short = [r for r in rows if (r["output_tokens"] or 0) < settings.max_new_tokens]
    if short:
        console.warn(f"target {target.name}: {len(short)} of {len(rows)} answers are shorter than "
                     f"--max-new-tokens {settings.max_new_tokens} despite --ignore-eos: it may not honour it")


def _run_level(target: Target, workload: Workload, settings: Settings, params: dict[str, Any], *, concurrency: int,
               limit: int | None, deadline_s: float | None, counter: metrics.TokenCounter,
               on_done: Callable[[dict[str, Any]], None] | None,
               stop: threading.Event) -> tuple[list[dict[str, Any]], float]:
    """N closed-loop users until `limit` requests are claimed or `deadline_s` passes. Returns (rows, wall_s).

    On Ctrl-C no new request is sent; those in flight finish (bounded by the timeout) and count.
    """
    import requests

    lock = threading.Lock()
    next_index = [0]
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    started_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")
    deadline = t_start + deadline_s if deadline_s else None

    def claim() -> int | None:
        with lock:
            if stop.is_set():
                return None
            if limit is not None and next_index[0] >= limit:
                return None
            if deadline is not None and time.perf_counter() >= deadline:
                return None
            next_index[0] += 1
            return next_index[0] - 1

    alive = [concurrency]
    finished = threading.Event()

    def user(user_id: int) -> None:
        try:
            with requests.Session() as session:
                while (index := claim()) is not None:
                    messages = workload.messages(index)
                    sent = time.perf_counter()
                    out = client.send(session, target, messages, params, timeout=settings.timeout_s,
                                      stream=settings.stream)
                    row = _row(out, index=index, user=user_id, concurrency=concurrency,
                               start_s=sent - t_start, prompt=index % len(workload.conversations), counter=counter)
                    with lock:
                        rows.append(row)
                    if on_done is not None:
                        on_done(row)
        finally:
            with lock:
                alive[0] -= 1
                if alive[0] == 0:
                    finished.set()

    for u in range(concurrency):
        threading.Thread(target=user, args=(u,), name=f"bench-user-{u}", daemon=True).start()
    # Wait on an Event, not Thread.join: a Ctrl-C landing inside join() can mark a still-running
    # thread as finished (CPython bpo-45274), and its in-flight request would go uncounted.
    try:
        while not finished.wait(0.2):
            pass
    except KeyboardInterrupt:
        stop.set()
        finished.wait(settings.timeout_s + 1)  # in-flight requests finish; a second Ctrl-C abandons them
    wall = time.perf_counter() - t_start
    with lock:
        done = sorted(rows, key=lambda r: r["index"])
    for r in done:
        r["level_started_at"] = started_at
    return done, wall


def _row(out: client.Outcome, *, index: int, user: int, concurrency: int, start_s: float, prompt: int,
         counter: metrics.TokenCounter) -> dict[str, Any]:
    tokens, source = counter.count(out.text, out.usage) if out.ok else (None, None)
    tpot = None
    if out.ok and out.ttft_s is not None and tokens and tokens > 1:
        tpot = (out.latency_s - out.ttft_s) / (tokens - 1)
    prompt_tokens = out.usage.get("prompt_tokens") if out.usage else None
    return {"index": index, "user": user, "concurrency": concurrency, "prompt": prompt, "start_s": start_s,
            "ok": out.ok, "status": out.status, "latency_s": out.latency_s, "ttft_s": out.ttft_s, "tpot_s": tpot,
            "streamed": out.streamed, "output_tokens": tokens, "prompt_tokens": prompt_tokens,
            "tokens_source": source, "output_chars": len(out.text) if out.ok else None,
            "error_kind": out.error_kind, "error": out.error}
