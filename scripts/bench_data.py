#!/usr/bin/env python
"""Benchmark: `amlft data prepare` (full validation) vs the reference flow, on one file.

The reference flow is what the original notebook does with ultrachat_200k: load the split
with `datasets` and write it back with `Dataset.to_json` - no validation at all. Both sides
read the same synthetic ultrachat-shaped JSONL (207,865 rows by default: the size of
ultrachat_200k's train_sft split, ~6.7 KB per row), each in its own fresh subprocess so
peak memory (max RSS) is measured per side. The reference gets a fresh, empty datasets
cache, so it pays for its Arrow conversion as a first-time user does.

    nice .venv/bin/python scripts/bench_data.py              # full size (~1.4 GB of JSONL)
    .venv/bin/python scripts/bench_data.py --rows 20000      # quick run

Targets (issue 3): ours >= 2x the reference's rows/s, with peak RSS < 1 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ULTRACHAT_TRAIN_SFT_ROWS = 207_865


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def side_reference(src: Path, out: Path) -> dict:
    import datasets

    datasets.disable_progress_bars()
    t0 = time.perf_counter()
    ds = datasets.load_dataset("json", data_files=str(src), split="train", cache_dir=str(out / "hf-cache"))
    ds.to_json(str(out / "train_sft.jsonl"))
    elapsed = time.perf_counter() - t0
    return {"rows": len(ds), "seconds": elapsed, "peak_rss_mb": _peak_rss_mb()}


def side_ours(src: Path, out: Path) -> dict:
    from amlft.data import PrepareOptions, prepare

    t0 = time.perf_counter()
    result = prepare(src, out / "prepared", PrepareOptions(on_error="fail"))
    elapsed = time.perf_counter() - t0
    counts = result.counts["train_sft"]
    return {"rows": counts["in"], "kept": counts["kept"], "rejected": counts["rejected"], "seconds": elapsed,
            "peak_rss_mb": _peak_rss_mb(), "report": str(result.report_path)}


def run_side(side: str, src: Path, workdir: Path) -> dict:
    out = workdir / side
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, __file__, "--side", side, "--file", str(src), "--out", str(out)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{side} side failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    shutil.rmtree(out, ignore_errors=True)  # free the disk before the other side runs
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=ULTRACHAT_TRAIN_SFT_ROWS, help="rows to generate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="where to put the data (default: a temp dir)")
    ap.add_argument("--json", dest="json_out", type=Path, default=None, help="also write the results here")
    ap.add_argument("--side", choices=["reference", "ours"], help=argparse.SUPPRESS)
    ap.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.side:  # child process: one side, result as the last stdout line
        fn = side_reference if args.side == "reference" else side_ours
        print(json.dumps(fn(args.file, args.out)))
        return

    from amlft.data.synthetic import write_jsonl

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="amlft-bench-data-"))
    workdir.mkdir(parents=True, exist_ok=True)
    src = workdir / "train_sft.jsonl"
    try:
        t0 = time.perf_counter()
        size = write_jsonl(src, args.rows, seed=args.seed)
        print(f"generated {args.rows:,} ultrachat-shaped rows, {size / 1e6:,.0f} MB "
              f"({size / args.rows / 1000:.2f} KB/row) in {time.perf_counter() - t0:.0f}s -> {src}", flush=True)
        results = {}
        for side in ("reference", "ours"):
            r = run_side(side, src, workdir)
            r["rows_per_s"] = r["rows"] / r["seconds"]
            r["mb_per_s"] = size / 1e6 / r["seconds"]
            results[side] = r
            print(f"{side:>9}: {r['rows']:,} rows in {r['seconds']:.1f}s = {r['rows_per_s']:,.0f} rows/s "
                  f"({r['mb_per_s']:.0f} MB/s), peak RSS {r['peak_rss_mb']:,.0f} MB", flush=True)
        ref, ours = results["reference"], results["ours"]
        if ours["rows"] != args.rows or ours["kept"] != args.rows or ref["rows"] != args.rows:
            raise SystemExit(f"row counts do not match: generated {args.rows}, reference {ref['rows']}, "
                             f"ours in={ours['rows']} kept={ours['kept']}")
        ratio = ours["rows_per_s"] / ref["rows_per_s"]
        summary = {
            "rows": args.rows, "file_mb": round(size / 1e6, 1), "cpus": os.cpu_count(),
            "reference": "datasets.load_dataset('json') + Dataset.to_json (no validation)",
            "ours": "amlft.data.prepare (convert + full validation + duplicates + report)",
            "reference_rows_per_s": round(ref["rows_per_s"]), "ours_rows_per_s": round(ours["rows_per_s"]),
            "speedup": round(ratio, 2),
            "reference_peak_rss_mb": round(ref["peak_rss_mb"]), "ours_peak_rss_mb": round(ours["peak_rss_mb"]),
            "target_met": ratio >= 2 and ours["peak_rss_mb"] < 1024,
        }
        print(f"speedup: {ratio:.2f}x (target >= 2x); ours peak RSS {ours['peak_rss_mb']:,.0f} MB "
              f"(target < 1024 MB) -> {'MET' if summary['target_met'] else 'NOT MET'}")
        if args.json_out:
            args.json_out.write_text(json.dumps(summary, indent=2) + "\n")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
