#!/usr/bin/env python
"""Benchmark: `amlft data prepare` against the two ways people validate chat JSONL themselves.

Every side does the SAME work on the same file: parse each row, check it with the same
rules (`amlft.data.rules.check_messages`), fill a missing `prompt_id` (sha256 of the
conversation), drop duplicates (same conversation or same prompt_id), and write the kept
rows out. The script aborts unless every side keeps exactly the same number of rows.

- amlft:          `amlft.data.prepare(..., on_error="skip", drop_duplicates=True)`
                  (+ rejected.jsonl with reasons, report.json with distributions and hashes)
- streaming_json: a plain loop - `json.loads` per line, the same checks, `json.dumps` per kept row
- datasets:       `datasets.load_dataset("json")` + `.filter(same checks)` + `.map(fill id)` +
                  `.to_json`, with a fresh cache, as a first-time user runs it

Two corpora of synthetic ultrachat-shaped rows (207,865 by default: the size of
ultrachat_200k's train_sft, ~6.7 KB per row): `clean` (every row valid) and `dirty` (10% of
rows invalid in ten different ways, 3% duplicates, 5% without prompt_id). Dirty rows stay
valid JSON with Arrow-compatible types: one malformed line and `load_dataset` refuses the
whole file, which would leave the datasets peer with no number at all.

amlft and the streaming loop run --rounds times per corpus (default 3, alternating order) and
the median counts; the datasets side runs once. Each side runs in its own fresh subprocess; the parent samples its memory with psutil
(USS = memory only it holds, PSS = its share of shared pages) every 50 ms and reports the
peaks - not ru_maxrss, which counts shared and memory-mapped file pages in full.

    nice .venv/bin/python scripts/bench_data.py              # full size (~1.4 GB of JSONL per corpus)
    .venv/bin/python scripts/bench_data.py --rows 20000      # quick run

Targets (issue 14): amlft >= 2x the best peer's rows/s on both corpora, and amlft's peak
PSS <= 1 GB on the full set. The last stdout line is the JSON summary (scripts/_benchlib.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _benchlib import emit, load_average, summary

ULTRACHAT_TRAIN_SFT_ROWS = 207_865
SIDES = ("amlft", "streaming_json", "datasets")
PEERS = SIDES[1:]
FAST = ["amlft", "streaming_json"]


# ------------------------------------------------------------------ the corpora
def _break(row: dict[str, Any], kind: int) -> dict[str, Any]:
    """One invalid row, ten ways; still JSON with the types Arrow infers for the clean rows."""
    msgs = [dict(m) for m in row["messages"]]
    if kind == 0:
        msgs[-1]["content"] = ""
    elif kind == 1:
        msgs[0]["content"] = "   \n "
    elif kind == 2:
        msgs = msgs[:-1]  # ends with the user
    elif kind == 3:
        msgs[0]["role"] = "assistant"
    elif kind == 4:
        msgs[-1]["role"] = "bot"
    elif kind == 5:
        msgs = []
    elif kind == 6:
        row = {k: v for k, v in row.items() if k != "messages"}
        return row
    elif kind == 7:
        msgs.insert(1, {"role": "system", "content": "late system prompt"})
    elif kind == 8:
        msgs = [msgs[0], msgs[0], *msgs[1:]]  # two user turns in a row
    else:
        msgs[-1]["role"] = None
    return dict(row, messages=msgs)


def write_dirty(clean: Path, dirty: Path, *, seed: int) -> dict[str, int]:
    """Copy `clean` with 10% invalid rows, 3% duplicates (of earlier rows), 5% without prompt_id."""
    rng = random.Random(seed)
    counts = {"invalid": 0, "duplicates": 0, "no_prompt_id": 0}
    earlier: list[str] = []
    with open(clean, encoding="utf-8") as src, open(dirty, "w", encoding="utf-8", buffering=1 << 20) as out:
        for line in src:
            r = rng.random()
            if r < 0.10:
                out.write(json.dumps(_break(json.loads(line), counts["invalid"] % 10), ensure_ascii=False) + "\n")
                counts["invalid"] += 1
                continue
            if r < 0.13 and earlier:
                out.write(rng.choice(earlier))
                counts["duplicates"] += 1
                continue
            if r < 0.18:
                row = json.loads(line)
                del row["prompt_id"]
                line = json.dumps(row, ensure_ascii=False) + "\n"
                counts["no_prompt_id"] += 1
            out.write(line)
            if len(earlier) < 5000:
                earlier.append(line)
            elif rng.random() < 0.01:
                earlier[rng.randrange(5000)] = line
    return counts


# ------------------------------------------------------------------ the same checks, for the peers
class SameChecks:
    """What amlft checks per row, for the peers: rules, prompt_id fill-in, duplicates."""

    def __init__(self) -> None:
        from amlft.data.rules import check_messages

        self.check = check_messages
        self.contents: set[int] = set()
        self.ids: set[int] = set()
        self.rejected = 0
        self.duplicates = 0

    def keep(self, row: Any) -> bool:
        if not isinstance(row, dict) or self.check(row.get("messages")):
            self.rejected += 1
            return False
        pairs = tuple((m["role"], m["content"]) for m in row["messages"])
        fill_prompt_id(row, pairs)
        cfp, ifp = hash(pairs), hash(row["prompt_id"])
        if cfp in self.contents or ifp in self.ids:
            self.duplicates += 1
            self.rejected += 1
            return False
        self.contents.add(cfp)
        self.ids.add(ifp)
        return True


def fill_prompt_id(row: dict[str, Any], pairs: tuple[tuple[str, str], ...] | None = None) -> dict[str, Any]:
    """A missing prompt_id becomes the sha256 of the conversation, as amlft fills it."""
    if not isinstance(row.get("prompt_id"), str) or not row["prompt_id"]:
        pairs = pairs or tuple((m["role"], m["content"]) for m in row["messages"])
        text = "\x1f".join(role + "\x1e" + content for role, content in pairs)
        row["prompt_id"] = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return row


# ------------------------------------------------------------------ the sides (each in a child process)
def side_amlft(src: Path, out: Path) -> dict[str, Any]:
    from amlft.data import PrepareOptions, prepare

    t0 = time.perf_counter()
    result = prepare(src, out / "prepared", PrepareOptions(on_error="skip", drop_duplicates=True))
    elapsed = time.perf_counter() - t0
    c = result.report["totals"]
    return {"rows": c["in"], "kept": c["kept"], "rejected": c["rejected"], "seconds": elapsed}


def side_streaming_json(src: Path, out: Path) -> dict[str, Any]:
    checks = SameChecks()
    t0 = time.perf_counter()
    rows = 0
    with open(src, encoding="utf-8") as fin, open(out / "train.jsonl", "w", encoding="utf-8") as fout:
        for line in fin:
            if not line.strip():
                continue
            rows += 1
            try:
                row = json.loads(line)
            except ValueError:
                checks.rejected += 1
                continue
            if checks.keep(row):
                fout.write(json.dumps(row, ensure_ascii=False) + "\n")
    elapsed = time.perf_counter() - t0
    return {"rows": rows, "kept": rows - checks.rejected, "rejected": checks.rejected, "seconds": elapsed}


def side_datasets(src: Path, out: Path) -> dict[str, Any]:
    import datasets

    datasets.disable_progress_bars()
    checks = SameChecks()
    t0 = time.perf_counter()
    ds = datasets.load_dataset("json", data_files=str(src), split="train", cache_dir=str(out / "hf-cache"))
    rows = len(ds)
    kept = ds.filter(checks.keep)  # filter hands out copies: the filled ids are filled again below
    kept = kept.map(fill_prompt_id)
    kept.to_json(str(out / "train.jsonl"), force_ascii=False)
    elapsed = time.perf_counter() - t0
    return {"rows": rows, "kept": len(kept), "rejected": rows - len(kept), "seconds": elapsed}


# ------------------------------------------------------------------ driving
def run_side(side: str, src: Path, workdir: Path) -> dict[str, Any]:
    """One side in a fresh interpreter; peak USS/PSS sampled from outside with psutil."""
    import psutil

    out = workdir / side
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    # Flush what the corpus generation and the previous side wrote, so the kernel is not writing
    # those gigabytes back while this side runs.
    os.sync()
    proc = psutil.Popen([sys.executable, __file__, "--side", side, "--file", str(src), "--out", str(out)],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"uss": 0, "pss": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                m = proc.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                return
            peak["uss"], peak["pss"] = max(peak["uss"], m.uss), max(peak["pss"], m.pss)
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    done.set()
    sampler.join()
    shutil.rmtree(out, ignore_errors=True)  # free the disk before the next side
    if proc.returncode != 0:
        raise SystemExit(f"{side} side failed:\n{stderr[-4000:]}")
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    result.update(peak_uss_mb=peak["uss"] / 2**20, peak_pss_mb=peak["pss"] / 2**20)
    return result


def bench_corpus(name: str, src: Path, workdir: Path, *, rounds: int) -> dict[str, dict[str, Any]]:
    size = src.stat().st_size
    results: dict[str, dict[str, Any]] = {}
    # amlft and the streaming loop take seconds each, and one run of either can lose a third of
    # its speed to the disk writing back an earlier side's output: they run `rounds` times,
    # alternating, and the median counts. The datasets side (minutes, far behind) runs once.
    order = [s for i in range(rounds) for s in (FAST if i % 2 == 0 else FAST[::-1])] + ["datasets"]
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SIDES}
    for side in order:
        r = run_side(side, src, workdir)
        r["rows_per_s"] = r["rows"] / r["seconds"]
        r["mb_per_s"] = size / 1e6 / r["seconds"]
        r["load_average"] = load_average()
        runs[side].append(r)
        print(f"{name:>5} {side:>14}: {r['rows']:,} rows ({r['kept']:,} kept) in {r['seconds']:.1f}s = "
              f"{r['rows_per_s']:,.0f} rows/s ({r['mb_per_s']:.0f} MB/s), peak USS {r['peak_uss_mb']:,.0f} MB, "
              f"PSS {r['peak_pss_mb']:,.0f} MB  [load {r['load_average']}]", flush=True)
    for side, rs in runs.items():
        median = statistics.median(x["seconds"] for x in rs)
        results[side] = dict(min(rs, key=lambda x: abs(x["seconds"] - median)), seconds=median,
                             rows_per_s=rs[0]["rows"] / median, mb_per_s=size / 1e6 / median,
                             peak_uss_mb=max(x["peak_uss_mb"] for x in rs),
                             peak_pss_mb=max(x["peak_pss_mb"] for x in rs), rounds=len(rs))
    kept = {s: r["kept"] for s, r in results.items()}
    if len(set(kept.values())) != 1 or len({r["rows"] for r in results.values()}) != 1:
        raise SystemExit(f"{name}: the sides disagree on what is valid (kept {kept}); the comparison is void")
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=ULTRACHAT_TRAIN_SFT_ROWS, help="rows to generate per corpus")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="where to put the data (default: a temp dir)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="runs of amlft and of the streaming loop per corpus, alternating; the median counts")
    ap.add_argument("--json", dest="json_out", type=Path, default=None, help="also write the summary here")
    ap.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    ap.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.side:  # child process: one side, result as the last stdout line
        fn = {"amlft": side_amlft, "streaming_json": side_streaming_json, "datasets": side_datasets}[args.side]
        print(json.dumps(fn(args.file, args.out)))
        return

    from synthetic_chat import write_jsonl

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="amlft-bench-data-"))
    workdir.mkdir(parents=True, exist_ok=True)
    clean, dirty = workdir / "clean.jsonl", workdir / "dirty.jsonl"
    try:
        t0 = time.perf_counter()
        size = write_jsonl(clean, args.rows, seed=args.seed)
        made = write_dirty(clean, dirty, seed=args.seed + 1)
        print(f"generated {args.rows:,} ultrachat-shaped rows per corpus, {size / 1e6:,.0f} MB "
              f"({size / args.rows / 1000:.2f} KB/row); dirty: {made} in {time.perf_counter() - t0:.0f}s",
              flush=True)
        results = {c: bench_corpus(c, path, workdir, rounds=args.rounds) for c, path in (("clean", clean), ("dirty", dirty))}
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    ratios = {c: r["amlft"]["rows_per_s"] / max(r[p]["rows_per_s"] for p in PEERS) for c, r in results.items()}
    peak_pss = max(r["amlft"]["peak_pss_mb"] for r in results.values())
    met = min(ratios.values()) >= 2 and (args.rows < ULTRACHAT_TRAIN_SFT_ROWS or peak_pss <= 1024)
    for c, ratio in ratios.items():
        print(f"{c}: amlft {ratio:.2f}x the best peer (target >= 2x)")
    print(f"amlft peak PSS {peak_pss:,.0f} MB (target <= 1024 MB on the full set); all targets "
          f"(both ratios >= 2x, that PSS): {'MET' if met else 'NOT MET'}")
    dirty_r = results["dirty"]
    doc = summary("data_prepare", amlft=dirty_r["amlft"]["rows_per_s"],
                  peers={p: dirty_r[p]["rows_per_s"] for p in PEERS}, unit="rows/s (dirty corpus)",
                  model=None, steps=None, rows=args.rows, file_mb=round(size / 1e6, 1), target_met=met,
                  corpora={c: {s: {"rows_per_s": round(v["rows_per_s"]), "seconds": round(v["seconds"], 2),
                                   "kept": v["kept"], "peak_uss_mb": round(v["peak_uss_mb"]),
                                   "peak_pss_mb": round(v["peak_pss_mb"]), "load_average": v["load_average"]}
                               for s, v in r.items()} | {"ratio_vs_best_peer": round(ratios[c], 2)}
                           for c, r in results.items()})
    if args.json_out:
        args.json_out.write_text(json.dumps(doc, indent=2) + "\n")
    emit(doc)


if __name__ == "__main__":
    main()
