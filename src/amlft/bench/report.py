"""Everything a benchmark leaves in --out: report.md to paste into a pull request,
results.csv (one row per target and concurrency), results.json (every request's raw
timings) and two PNG charts. Token figures that were estimated carry a `~` and a note.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from amlft.bench.metrics import ESTIMATE_NOTE, is_estimated
from amlft.extras import needs_extra

CSV_COLUMNS = ["target", "status", "contract", "model", "concurrency", "requests", "successes", "errors",
               "errors_by_kind", "wall_s", "successes_per_s", "errors_per_s", "requests_per_s", "output_tokens",
               "output_tokens_per_s", "tokens_source", "latency_mean_s", "latency_p50_s", "latency_p95_s",
               "latency_p99_s", "latency_max_s", "ttft_p50_s", "ttft_p95_s", "tpot_p50_s", "reason"]
LATENCY_PNG = "latency.png"
THROUGHPUT_PNG = "throughput.png"


def environment() -> dict[str, Any]:
    import requests
    import urllib3

    from amlft.version import __version__

    return {"amlft": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
            "machine": platform.machine(), "cpus": os.cpu_count(), "requests": requests.__version__,
            "urllib3": urllib3.__version__}


def highlights(targets: Sequence[dict[str, Any]]) -> list[str]:
    """A few sentences a reviewer reads first."""
    out: list[str] = []
    measured = [(t, lv) for t in targets for lv in t["levels"] if lv["summary"]["successes"]]
    if measured:
        t, lv = max(measured, key=lambda p: p[1]["summary"]["successes_per_s"])
        s = lv["summary"]
        tok = _tok(s["output_tokens_per_s"], s["tokens_source"])
        out.append(f"Highest throughput: **{t['target']['name']}** at concurrency {lv['concurrency']}: "
                   f"{s['successes_per_s']:.2f} successful requests/s, {tok} output tokens/s.")
        lowest = min(lv_["concurrency"] for _, lv_ in measured)
        at_low = [(t_, lv_) for t_, lv_ in measured if lv_["concurrency"] == lowest]
        t, lv = min(at_low, key=lambda p: p[1]["summary"]["latency_p50_s"])
        out.append(f"Lowest median latency at concurrency {lowest}: **{t['target']['name']}**, "
                   f"p50 {_ms(lv['summary']['latency_p50_s'])} ms, p95 {_ms(lv['summary']['latency_p95_s'])} ms.")
    for t in targets:
        lv_ok = [lv for lv in t["levels"] if lv["summary"]["successes"]]
        if len(lv_ok) >= 2:
            a, b = lv_ok[0], lv_ok[-1]
            ratio = b["summary"]["latency_p95_s"] / a["summary"]["latency_p95_s"]
            gain = b["summary"]["successes_per_s"] / max(a["summary"]["successes_per_s"], 1e-9)
            out.append(f"{t['target']['name']}: from concurrency {a['concurrency']} to {b['concurrency']}, "
                       f"throughput x{gain:.2f} and p95 latency x{ratio:.2f}.")
        if t["status"] != "ok":
            out.append(f"{t['target']['name']}: **{t['status']}** - {t['reason']}.")
    if any(is_estimated(lv["summary"]["tokens_source"]) for t in targets for lv in t["levels"]):
        out.append(f"Token counts marked ~ are {ESTIMATE_NOTE}.")
    return out


def write_reports(out_dir: Path, doc: dict[str, Any]) -> dict[str, str]:
    """Write every output; returns {kind: path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "csv": out_dir / "results.csv", "markdown": out_dir / "report.md"}
    paths["json"].write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    write_csv(paths["csv"], doc["targets"])
    charts = write_charts(out_dir, doc["targets"])
    paths["markdown"].write_text(render_markdown(doc, charts), encoding="utf-8")
    return {k: str(v) for k, v in {**paths, **{c: out_dir / c for c in charts}}.items()}


def csv_rows(targets: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for t in targets:
        base = {"target": t["target"]["name"], "status": t["status"], "contract": t["target"].get("contract"),
                "model": t["target"].get("model"), "reason": t.get("reason") or ""}
        if not t["levels"]:
            rows.append(base)
        for lv in t["levels"]:
            s = lv["summary"]
            row = dict(base, concurrency=lv["concurrency"])
            row.update({k: s.get(k) for k in CSV_COLUMNS if k in s})
            row["errors_by_kind"] = ";".join(f"{k}={v}" for k, v in s["errors_by_kind"].items())
            rows.append(row)
    return rows


def write_csv(path: Path, targets: Sequence[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for row in csv_rows(targets):
            w.writerow({k: _csv_value(row.get(k)) for k in CSV_COLUMNS})


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


# ------------------------------------------------------------------------------ charts
def write_charts(out_dir: Path, targets: Sequence[dict[str, Any]]) -> list[str]:
    """latency.png (distribution per target and concurrency) and throughput.png; none if nothing succeeded."""
    measured = [t for t in targets if any(lv["summary"]["successes"] for lv in t["levels"])]
    if not measured:
        return []
    with needs_extra("bench", purpose="bench charts"):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

    colors = [f"C{i % 10}" for i in range(len(measured))]
    levels = sorted({lv["concurrency"] for t in measured for lv in t["levels"]})

    # A Figure with an explicit Agg canvas: no pyplot global state, safe without a display.
    fig = Figure(figsize=(max(6.0, 1.6 * len(levels) * max(1, len(measured)) ** 0.5 + 3), 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(measured)
    for k, t in enumerate(measured):
        by_level = {lv["concurrency"]: [r["latency_s"] * 1000 for r in lv["requests"] if r["ok"]] for lv in t["levels"]}
        pos, data = [], []
        for i, c in enumerate(levels):
            if by_level.get(c):
                pos.append(i + (k - (len(measured) - 1) / 2) * width)
                data.append(by_level[c])
        if not data:
            continue
        bp = ax.boxplot(data, positions=pos, widths=width * 0.85, patch_artist=True, showmeans=True,
                        meanprops={"marker": "^", "markerfacecolor": "white", "markeredgecolor": colors[k]},
                        manage_ticks=False, flierprops={"markersize": 3})
        for box in bp["boxes"]:
            box.set(facecolor=colors[k], alpha=0.45, edgecolor=colors[k])
        for part in ("medians", "whiskers", "caps"):
            for line in bp[part]:
                line.set(color=colors[k])
        ax.plot([], [], color=colors[k], linewidth=8, alpha=0.45, label=t["target"]["name"])
    ax.set_xticks(range(len(levels)), [str(c) for c in levels])
    ax.set_xlabel("concurrency (users, one request in flight each)")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_title("Latency distribution per target (box: p25-p75, line: median, triangle: mean)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / LATENCY_PNG)

    fig = Figure(figsize=(13, 4), dpi=110)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, 3, i) for i in (1, 2, 3)]
    estimated = False
    for k, t in enumerate(measured):
        lvs = [lv for lv in t["levels"] if lv["summary"]["successes"]]
        xs = [lv["concurrency"] for lv in lvs]
        name = t["target"]["name"]
        axes[0].plot(xs, [lv["summary"]["successes_per_s"] for lv in lvs], "o-", color=colors[k], label=name)
        axes[1].plot(xs, [lv["summary"]["output_tokens_per_s"] for lv in lvs], "o-", color=colors[k], label=name)
        axes[2].plot(xs, [lv["summary"]["latency_p50_s"] * 1000 for lv in lvs], "o-", color=colors[k],
                     label=f"{name} p50")
        axes[2].plot(xs, [lv["summary"]["latency_p95_s"] * 1000 for lv in lvs], "s--", color=colors[k],
                     label=f"{name} p95")
        estimated = estimated or any(is_estimated(lv["summary"]["tokens_source"]) for lv in lvs)
    axes[0].set_ylabel("successful requests / s")
    axes[1].set_ylabel("output tokens / s" + (" (estimated)" if estimated else ""))
    axes[2].set_ylabel("latency (ms)")
    for ax, title in zip(axes, ("Throughput", "Output tokens" + (" (estimated)" if estimated else ""),
                                "Latency p50 / p95"), strict=True):
        ax.set_xlabel("concurrency")
        ax.set_xticks(levels)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / THROUGHPUT_PNG)
    return [LATENCY_PNG, THROUGHPUT_PNG]


# ------------------------------------------------------------------------------ markdown
def render_markdown(doc: dict[str, Any], charts: Sequence[str]) -> str:
    s, w, targets = doc["settings"], doc["workload"], doc["targets"]
    lines = ["# amlft bench report", "",
             f"{doc['started_at']} · amlft {doc['environment']['amlft']} · {len(targets)} target(s) · "
             f"workload `{w['sha256'][:12]}`", ""]
    hl = doc.get("highlights") or []
    if hl:
        lines += ["## Highlights", "", *[f"- {h}" for h in hl], ""]
    lines += ["## Targets", "", "| target | contract | endpoint | model | status | note |", "|---|---|---|---|---|---|"]
    for t in targets:
        tg = t["target"]
        where = f"run `{tg['run_id']}`" if tg.get("run_id") else (f"`{tg['url']}`" if tg.get("url") else "-")
        if tg.get("run_id") and tg.get("url"):
            where += f" `{tg['url']}`"
        lines.append(f"| {_cell(tg['name'])} | {tg.get('contract') or '-'} | {where} | {_cell(tg.get('model') or '-')} "
                     f"| {t['status']} | {_cell(t.get('reason') or '')} |")
    bound = [f"{s['requests_per_level']} requests per level" if s["requests_per_level"] else None,
             f"at most {s['duration_s']:g} s per level" if s["duration_s"] else None]
    lines += ["", "## Workload", "",
              f"- prompts: {w['source']}, {w['conversations']} conversation(s), sha256 `{w['sha256']}`",
              f"- generation: max_new_tokens {s['max_new_tokens']}, temperature {s['temperature']:g}"
              + (" (greedy)" if s["temperature"] <= 0 else ""),
              f"- load: concurrency {', '.join(str(c) for c in s['concurrency'])} "
              f"(closed loop: each user has one request in flight); {' and '.join(b for b in bound if b)}; "
              f"{s['warmup']} warmup request(s) per target, not counted",
              f"- per-request timeout {s['timeout_s']:g} s; streaming {'requested (OpenAI contract)' if s['stream'] else 'off'}",
              f"- output tokens: {_token_sources(targets)}", ""]
    levels = sorted({lv["concurrency"] for t in targets for lv in t["levels"]})
    lines += ["## Results", "", "Latencies in milliseconds over successful requests; throughput (ok/s: successful "
              "requests per second, failures counted in their own column) over each level's "
              "wall time (first request sent to last answer received).", ""]
    for c in levels:
        lines += [f"### Concurrency {c}", "",
                  "| target | requests | ok | errors | ok/s | output tok/s | mean | p50 | p95 | p99 | max | TTFT p50 | TPOT p50 |",
                  "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for t in targets:
            for lv in t["levels"]:
                if lv["concurrency"] != c:
                    continue
                m = lv["summary"]
                errs = str(m["errors"]) + (" (" + ", ".join(f"{k} {v}" for k, v in m["errors_by_kind"].items()) + ")"
                                           if m["errors"] else "")
                lines.append(f"| {_cell(t['target']['name'])} | {m['requests']} | {m['successes']} | {errs} "
                             f"| {m['successes_per_s']:.2f} | {_tok(m['output_tokens_per_s'], m['tokens_source'])} "
                             f"| {_ms(m['latency_mean_s'])} | {_ms(m['latency_p50_s'])} | {_ms(m['latency_p95_s'])} "
                             f"| {_ms(m['latency_p99_s'])} | {_ms(m['latency_max_s'])} | {_ms(m['ttft_p50_s'])} "
                             f"| {_ms(m['tpot_p50_s'])} |")
        lines.append("")
    if any(is_estimated(lv["summary"]["tokens_source"]) for t in targets for lv in t["levels"]):
        lines += [f"~ {ESTIMATE_NOTE}.", ""]
    if charts:
        lines += ["## Charts", ""]
        if LATENCY_PNG in charts:
            lines += [f"![Latency distribution per target]({LATENCY_PNG})", ""]
        if THROUGHPUT_PNG in charts:
            lines += [f"![Throughput and latency vs concurrency]({THROUGHPUT_PNG})", ""]
    env = doc["environment"]
    lines += ["## Environment", "",
              f"- amlft {env['amlft']}, Python {env['python']}, requests {env['requests']}, urllib3 {env['urllib3']}",
              f"- client machine: {env['platform']} ({env['machine']}, {env['cpus']} CPUs)",
              f"- started {doc['started_at']}, finished {doc['finished_at']}",
              "- files: `results.csv` (one row per target and concurrency), `results.json` (every request's timings)",
              ""]
    return "\n".join(lines)


def _token_sources(targets: Sequence[dict[str, Any]]) -> str:
    labels = sorted({str(lv["summary"]["tokens_source"]) for t in targets for lv in t["levels"]
                     if lv["summary"]["tokens_source"]})
    if not labels:
        return "none measured"
    text = ", ".join(labels)
    return text + (f"; ~ marks {ESTIMATE_NOTE}" if any(is_estimated(x) for x in labels) else "")


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f}" if v >= 0.1 else f"{v * 1000:.1f}"


def _tok(v: float, source: str | None) -> str:
    return ("~" if is_estimated(source) else "") + f"{v:.1f}"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
