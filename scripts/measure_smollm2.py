"""Measure `amlft run --profile jobs/local-smollm2.yml`: wall time, CPU time, and the evaluation rows.

The issue's bar: the whole lifecycle (GGUF conversion on first use, LoRA fine-tune of
SmolLM2-135M-Instruct, register, serve, invoke, evaluation before/after, teardown) in at most
3 minutes on 2 idle cores, with held-out exact match well above the base model's and the
general questions still answered. Timings on a shared machine are noisy, so the load average
is printed before and after, with CPU seconds (which load inflates far less than wall time).

    python scripts/measure_smollm2.py                 # cold: fresh state dir, conversion included
    python scripts/measure_smollm2.py --warm          # conversion cached by a first, untimed step
    python scripts/measure_smollm2.py --set local.threads=2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=str(REPO / "jobs" / "local-smollm2.yml"))
    ap.add_argument("--warm", action="store_true", help="convert the GGUF first (untimed), then time the run")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", type=Path, help="also write the measurement as JSON here")
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="amlft-measure-"))
    env = dict(os.environ, AMLFT_HOME=str(home), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    amlft = [sys.executable, "-m", "amlft.cli.main"]
    sets = [x for kv in args.overrides for x in ("--set", kv)]
    if args.warm:
        from amlft.backends.local.model_sources import convert_gguf, locate_shipped

        convert_gguf(locate_shipped("amlft:smollm2-135m-instruct"), home)
    load_before = loadavg()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([*amlft, "run", "--profile", args.profile, *sets], env=env, cwd=REPO)
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    records = sorted((home / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime)
    record = json.loads(records[-1].read_text()) if records else {}
    ev = (record.get("outputs") or {}).get("eval") or {}
    train = (record.get("outputs") or {}).get("train") or {}
    result = {"exit_code": proc.returncode, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
              "loadavg_before": load_before, "loadavg_after": loadavg(), "cores": os.cpu_count(),
              "warm": args.warm, "overrides": args.overrides, "run_id": record.get("run_id"),
              "steps": (train.get("metrics") or {}).get("steps"),
              "train_runtime_s": (train.get("metrics") or {}).get("train_runtime_s"),
              "rows": ev.get("rows"), "examples": ev.get("examples")}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
