"""`benchmark()`: targets + workload -> measured results -> reports -> run records.

The CLI is a thin shell over this, so the same call works from a notebook or a test.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

from amlft.bench import metrics, report
from amlft.bench.runner import Settings, TargetResult, run_benchmark
from amlft.bench.targets import TargetSpec
from amlft.bench.workload import Workload, default_workload, load_prompts
from amlft.console import Console
from amlft.errors import AmlftError, ServiceError

SCHEMA = 1


def benchmark(specs: list[TargetSpec], settings: Settings, *, console: Console, prompts: str | None = None,
              out_dir: str | None = None, tokenizer: str | None = None) -> dict[str, Any]:
    """Run the benchmark and write its reports. Raises ServiceError only when every target failed."""
    first_run = _first_run_record(specs)
    workload = load_prompts(prompts) if prompts else default_workload(first_run)
    counter = metrics.TokenCounter(tokenizer)
    started = _dt.datetime.now(_dt.timezone.utc)
    out = Path(out_dir) if out_dir else _default_out(specs, first_run, started)
    console.info(f"workload: {workload.source} ({len(workload.conversations)} conversations, "
                 f"sha256 {workload.sha256[:12]})")
    results = run_benchmark(specs, workload, settings, console=console, counter=counter)
    if len(results) == 1 and results[0].error is not None:
        raise results[0].error  # one target that cannot even be resolved: its own error and hint say it best
    finished = _dt.datetime.now(_dt.timezone.utc)
    targets = [r.to_dict() for r in results]
    doc = {"schema": SCHEMA, "started_at": started.isoformat(timespec="seconds"),
           "finished_at": finished.isoformat(timespec="seconds"), "environment": report.environment(),
           "workload": workload.describe(), "settings": dict(settings.describe(), tokenizer=tokenizer),
           "highlights": report.highlights(targets), "targets": targets}
    files = report.write_reports(out, doc)
    summary = [target_summary(t) for t in targets]
    _record_runs(results, out)
    show_summary(console, targets, out)
    console.result(bench={"report_dir": str(out), "files": files, "workload": workload.describe(), "targets": summary})
    if any(r.status == "interrupted" for r in results):
        console.warn(f"interrupted: the report in {out} covers the requests that finished")
        raise KeyboardInterrupt
    if results and all(r.status == "failed" for r in results):
        reasons = "; ".join(f"{r.target['name']}: {r.reason}" for r in results)
        raise ServiceError(f"Every target failed ({reasons}).",
                           hint=f"The report in {out} has the details; check the URL, key and that the endpoint is up.")
    return doc


def target_summary(t: dict[str, Any]) -> dict[str, Any]:
    """Per-level numbers without the raw requests: what the run record and --json carry."""
    keep = ("requests", "successes", "errors", "errors_by_kind", "wall_s", "successes_per_s", "errors_per_s",
            "requests_per_s", "output_tokens_per_s",
            "tokens_source", "latency_mean_s", "latency_p50_s", "latency_p95_s", "latency_p99_s", "ttft_p50_s",
            "tpot_p50_s")
    return {"name": t["target"]["name"], "status": t["status"], "reason": t["reason"],
            "levels": [{"concurrency": lv["concurrency"], **{k: lv["summary"][k] for k in keep}} for lv in t["levels"]]}


def show_summary(console: Console, targets: list[dict[str, Any]], out: Path) -> None:
    rows = []
    for t in targets:
        if not t["levels"]:
            rows.append({"target": t["target"]["name"], "c": "-", "status": t["status"]})
        for lv in t["levels"]:
            m = lv["summary"]
            est = "~" if metrics.is_estimated(m["tokens_source"]) else ""
            rows.append({"target": t["target"]["name"], "c": lv["concurrency"], "status": t["status"],
                         "ok": m["successes"], "errors": _errors_cell(m), "ok/s": round(m["successes_per_s"], 2),
                         "tok/s": f"{est}{m['output_tokens_per_s']:.1f}", "p50 ms": _ms(m["latency_p50_s"]),
                         "p95 ms": _ms(m["latency_p95_s"]), "p99 ms": _ms(m["latency_p99_s"]),
                         "TTFT p50 ms": _ms(m["ttft_p50_s"])})
    cols = ["target", "c", "status", "ok", "errors", "ok/s", "tok/s", "p50 ms", "p95 ms", "p99 ms", "TTFT p50 ms"]
    console.table(rows, title="Benchmark summary", columns=cols)
    if any(metrics.is_estimated(lv["summary"]["tokens_source"]) for t in targets for lv in t["levels"]):
        console.info(f"~ tokens {metrics.ESTIMATE_NOTE}; pass --tokenizer MODEL_DIR to count them")
    console.info(f"report: {out / 'report.md'}")


def _errors_cell(m: dict[str, Any]) -> str:
    """`0`, or `175 (http_503 175)`: failures by kind, never folded into the rate."""
    if not m["errors"]:
        return "0"
    return f"{m['errors']} (" + ", ".join(f"{k} {v}" for k, v in m["errors_by_kind"].items()) + ")"


def _ms(v: float | None) -> int | None:
    return None if v is None else round(v * 1000)


def _first_run_record(specs: list[TargetSpec]) -> Any:
    """The record of the first run target, for the default workload and output folder (None if unreadable)."""
    from amlft.records import RunRecord

    for spec in specs:
        if spec.run is not None:
            try:
                return RunRecord.load(spec.run or None)
            except AmlftError:
                return None
    return None


def _default_out(specs: list[TargetSpec], record: Any, started: _dt.datetime) -> Path:
    stamp = started.strftime("%Y%m%d-%H%M%S")
    if record is not None and len(specs) == 1:
        return record.run_dir / "bench" / stamp
    return Path.cwd() / "bench-results" / stamp


def _record_runs(results: list[TargetResult], out: Path) -> None:
    """outputs.bench of each benchmarked run: where the report is, and its targets' headline numbers."""
    by_run: dict[str, list[TargetResult]] = {}
    for r in results:
        if r.record is not None:
            by_run.setdefault(r.record.run_id, []).append(r)
    for group in by_run.values():
        record = group[0].record
        record.reload()  # the backend may have written to it while we measured
        summaries = [target_summary(r.to_dict()) for r in group]
        record.set_output("bench", report_dir=str(out),
                          summary={"headline": "; ".join(headline(s) for s in summaries), "targets": summaries})
        record.event("bench", report_dir=str(out), status=",".join(r.status for r in group))


def headline(summary: dict[str, Any]) -> str:
    """One line per target, e.g. `run-1: c=1 2.1 ok/s p50 410 ms p95 520 ms; c=4 ...` (ok/s: successes)."""
    levels = [f"c={lv['concurrency']} {lv['successes_per_s']:.2f} ok/s p50 {_ms(lv['latency_p50_s'])} ms "
              f"p95 {_ms(lv['latency_p95_s'])} ms" + (f" {lv['errors']} errors" if lv["errors"] else "")
              for lv in summary["levels"]]
    return f"{summary['name']}: " + (", ".join(levels) if levels else f"{summary['status']} ({summary['reason']})")

__all__ = ["Settings", "Workload", "benchmark"]
