"""Shared by every scripts/bench_*.py: the machine conditions and the one JSON summary line.

Each benchmark script prints, as its LAST line, one JSON object:

    {"benchmark": "training", "amlft": 1234.5, "peers": {"trl_sft": 900.1, ...},
     "ratio_vs_best_peer": 1.37, "unit": "tokens/s",
     "conditions": {"cores": 2, "load_average": [1.2, 0.9, 0.8], "model": "...", "steps": 60, ...}}

so the README's performance table can be regenerated from fresh runs by reading last lines.
`ratio_vs_best_peer` is amlft / best peer when higher is better, best peer / amlft when lower
is better (`higher_is_better=False`, e.g. seconds): above 1 always means amlft wins.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def conditions(*, model: str | None, steps: int | None, **extra: Any) -> dict[str, Any]:
    """Cores, load average (1/5/15 min, sampled now), model and steps, plus anything else that matters."""
    return {"cores": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
            "model": model, "steps": steps, "python": sys.version.split()[0], **extra}


def load_average() -> str:
    """The 1/5/15-minute load average as text, to print beside a number."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def summary(benchmark: str, *, amlft: float, peers: Mapping[str, float], unit: str, model: str | None,
            steps: int | None, higher_is_better: bool = True, **extra_conditions: Any) -> dict[str, Any]:
    """The one summary object (see module docstring)."""
    values = [v for v in peers.values() if v and v > 0]
    ratio: float | None = None
    if values and amlft > 0:
        best = max(values) if higher_is_better else min(values)
        ratio = round(amlft / best if higher_is_better else best / amlft, 3)
    return {"benchmark": benchmark, "amlft": _round(amlft), "peers": {k: _round(v) for k, v in peers.items()},
            "ratio_vs_best_peer": ratio, "unit": unit,
            "conditions": conditions(model=model, steps=steps, **extra_conditions)}


def emit(obj: dict[str, Any]) -> None:
    """Print the summary as the script's last stdout line (one line of JSON)."""
    sys.stdout.flush()
    print(json.dumps(obj, ensure_ascii=False, default=str), flush=True)


def _round(v: float) -> float:
    return round(float(v), 4 if abs(v) < 10 else 1)
