"""Write a run record as a Markdown job summary (GitHub Actions `$GITHUB_STEP_SUMMARY`).

    python scripts/gha_summary.py [--run ID] [--bench DIR] >> "$GITHUB_STEP_SUMMARY"

Standard library only, and it never fails the job: the summary step runs after failures,
possibly before amlft could even be installed, and must still say what happened.
The run record holds no secrets (RunRecord.save refuses them), so everything shown is safe.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

STEP_ORDER = ["auth", "check", "data", "submit", "wait", "train", "register", "deploy", "invoke", "bench",
              "eval", "publish", "teardown"]
ICONS = {"succeeded": "✅", "failed": "❌", "running": "⏳", "interrupted": "⏹️", "skipped": "⏭️"}


def find_record(state: Path, run_id: str | None) -> Path | None:
    runs = state / "runs"
    if run_id:
        path = runs / f"{run_id}.json"
        return path if path.exists() else None
    candidates = sorted(runs.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    return candidates[0] if candidates else None


def _duration(entry: dict[str, Any]) -> str:
    try:
        start = datetime.fromisoformat(str(entry["started_at"]))
        end = datetime.fromisoformat(str(entry["ended_at"]))
    except (KeyError, TypeError, ValueError):
        return ""
    return _hms((end - start).total_seconds())


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _cell(value: Any, limit: int = 300) -> str:
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render(record: dict[str, Any], bench_dir: Path | None = None) -> str:
    outputs = record.get("outputs") or {}
    steps = record.get("steps") or {}
    lines = [f"## amlft run `{record.get('run_id')}`", ""]
    mode = " (rehearsal against the Azure ML fake)" if record.get("rehearse") else ""
    lines.append(f"**Backend:** {record.get('backend')}{mode} · **profile:** `{record.get('profile_path')}` · "
                 f"**status:** `{record.get('status')}`")
    lines += ["", "| step | status | time | error |", "|---|---|---|---|"]
    ordered = [s for s in STEP_ORDER if s in steps] + [s for s in steps if s not in STEP_ORDER]
    for name in ordered:
        entry = steps[name] or {}
        status = str(entry.get("status"))
        lines.append(f"| {name} | {ICONS.get(status, '')} {status} | {_duration(entry)} | "
                     f"{_cell(entry.get('error') or '')} |")

    facts: list[tuple[str, Any]] = []
    submit, wait = outputs.get("submit") or {}, outputs.get("wait") or {}
    if submit.get("job_name"):
        job = f"[`{submit['job_name']}`]({submit['studio_url']})" if submit.get("studio_url") else f"`{submit['job_name']}`"
        facts.append(("fine-tune job", job))
    if wait.get("status"):
        facts.append(("training", f"{wait['status']} after {_hms(float(wait.get('duration_s') or 0))}"))
    register = outputs.get("register") or {}
    if register.get("name"):
        facts.append(("model", f"`{register['name']}:{register.get('version')}`"))
    deploy = outputs.get("deploy") or {}
    if deploy.get("endpoint_name"):
        facts.append(("endpoint", f"`{deploy['endpoint_name']}` / `{deploy.get('deployment_name')}`"))
    cost = (outputs.get("check") or {}).get("cost") or {}
    if cost.get("summary"):
        facts.append(("cost", cost["summary"]))
    counts = (outputs.get("data") or {}).get("counts")
    if counts:
        facts.append(("data", ", ".join(f"{split}: {c.get('kept')}/{c.get('in')} kept" for split, c in counts.items()
                                        if isinstance(c, dict))))
    bench = outputs.get("bench") or {}
    headline = bench.get("summary")
    if isinstance(headline, dict):
        headline = headline.get("headline")
    if headline:
        facts.append(("benchmark", headline))
    if facts:
        lines += ["", "| | |", "|---|---|",
                  *[f"| {k} | {v if k == 'fine-tune job' else _cell(v)} |" for k, v in facts]]

    findings = (outputs.get("check") or {}).get("findings") or []
    problems = [f for f in findings if f.get("severity") in ("error", "warning")]
    if problems:
        lines += ["", "### Preflight findings", ""]
        lines += [f"- **{f.get('severity')}** ({f.get('check')}): {f.get('message')}"
                  + (f" — fix: {f['fix']}" if f.get("fix") else "") for f in problems]

    if bench_dir is not None and (bench_dir / "report.md").is_file():
        lines += ["", "<details><summary>Benchmark report</summary>", "",
                  (bench_dir / "report.md").read_text(encoding="utf-8"), "", "</details>"]

    live = [r for r in record.get("resources") or []
            if r.get("state") != "deleted" and r.get("billable", True)]
    lines += ["", "**Left running:** " + (", ".join(f"`{r['kind']}:{r['name']}`" for r in live) or "none")]
    if live:
        lines.append(f"\nTear down with `amlft teardown --run {record.get('run_id')}` "
                     "(or wait for the scheduled sweep).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="", help="run id (default: the newest run record)")
    parser.add_argument("--bench", default="", help="folder with the bench report.md to include")
    parser.add_argument("--state", default=os.environ.get("AMLFT_HOME") or ".amlft", help="amlft state folder")
    args = parser.parse_args(argv)
    path = find_record(Path(args.state), args.run or None)
    if path is None:
        print("## amlft\n\nNo run record was written: the job failed before `amlft check` started a run. "
              "See the step logs.")
        return 0
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"## amlft\n\nThe run record {path} could not be read ({exc}).")
        return 0
    print(render(record, Path(args.bench) if args.bench else None), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
