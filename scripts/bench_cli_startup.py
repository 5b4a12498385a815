#!/usr/bin/env python
"""Benchmark: `amlft --help` wall time against `python -c "import azure.ai.ml"`, same run.

The CLI must start instantly even though the Azure backend drives azure-ai-ml: heavy
imports live inside the functions that need them. Target: median `amlft --help`
<= 0.3 s and <= 1/3 of importing azure.ai.ml on the same machine.

    python scripts/bench_cli_startup.py [--repeat 7]

The last stdout line is the JSON summary (scripts/_benchlib.py): seconds (lower is better),
the peer being `import azure.ai.ml`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from _benchlib import emit, summary
from amlft.percentiles import percentile


def median(values: list[float]) -> float:
    return percentile(values, 50) or 0.0


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    py = sys.executable
    cli = [py, "-m", "amlft.cli.main", "--help"]
    sdk = [py, "-c", "import azure.ai.ml"]
    bare = [py, "-c", "pass"]
    for cmd in (cli, sdk, bare):  # warm the page cache and .pyc files once
        timed(cmd)
    cli_t, sdk_t, bare_t = [], [], []
    for _ in range(args.repeat):  # interleaved, so machine load hits all alike
        cli_t.append(timed(cli))
        sdk_t.append(timed(sdk))
        bare_t.append(timed(bare))
    c, s = median(cli_t), median(sdk_t)
    print(f"python -c pass          median {median(bare_t):.3f} s  (interpreter start, for context)")
    print(f"amlft --help            median {c:.3f} s  (min {min(cli_t):.3f}, n={args.repeat})")
    print(f"import azure.ai.ml      median {s:.3f} s  (min {min(sdk_t):.3f}, n={args.repeat})")
    ratio = c / s
    ok = c <= 0.3 and ratio <= 1 / 3
    print(f"ratio {ratio:.2f} (target <= 0.33); absolute target <= 0.300 s: {'PASS' if ok else 'FAIL'}")
    emit(summary("cli_startup", amlft=c, peers={"import azure.ai.ml": s}, unit="seconds (median)", model=None,
                 steps=None, higher_is_better=False, repeat=args.repeat, python_pass_s=round(median(bare_t), 3),
                 target_met=ok))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
