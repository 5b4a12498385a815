"""What a pass over the data found, as the report.json `prepare` writes and `validate` prints.

The report is the promise the data step makes: every row read is either kept or rejected
(in == kept + rejected, per split, checked here), with counts per reason, duplicates,
leakage between splits, turn/character/token distributions and a content hash of what was
written. Percentiles come from `amlft.percentiles`, the definition `amlft bench` and the
benchmark scripts use too.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amlft.data.rules import REASONS
from amlft.errors import DataError
from amlft.hashing import file_sha256
from amlft.percentiles import percentiles

__all__ = ["ROLE_ALIASES", "SplitTally", "build_report", "distribution", "format_problems", "require_rows"]

ROLE_ALIASES = {
    "train": ("train", "train_sft"),
    "test": ("test", "test_sft"),
    "validation": ("validation", "valid", "dev"),
    "invoke": ("test_gen",),
}
POLICY_REASONS = frozenset(("duplicate", "leakage"))  # rejected only because the user asked to drop them


@dataclass
class SplitTally:
    """The counters of one output split, filled in by the engine as rows go by."""

    name: str
    origin: str
    pos_key: str = "line"  # what positions count: "line" (text files) or "row"
    path: Path | None = None  # the written file (None when only validating)
    format: str = ""
    format_reason: str = ""
    source_rows: int | None = None  # rows in the source split, when they were counted
    n_in: int = 0
    kept: int = 0
    rejected: int = 0
    blank: int = 0
    duplicates: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    turns: Counter[int] = field(default_factory=Counter)
    chars: array = field(default_factory=lambda: array("q"))
    tokens: array = field(default_factory=lambda: array("q"))
    duplicate_examples: list[dict[str, Any]] = field(default_factory=list)
    sha256: str | None = None  # of the written file, computed while writing (None: hash the file)

    def entry(self, leakage: int) -> dict[str, Any]:
        """This split's section of report.json (checks the accounting first)."""
        if self.n_in != self.kept + self.rejected:  # the promise the report makes: nothing lost
            raise AssertionError(f"row accounting broken for split {self.name}: "
                                 f"{self.n_in} in != {self.kept} kept + {self.rejected} rejected")
        return {
            "origin": self.origin, "file": f"{self.name}.jsonl", "format": self.format,
            "format_reason": self.format_reason, "source_rows": self.source_rows,
            "in": self.n_in, "kept": self.kept, "rejected": self.rejected, "blank_lines": self.blank,
            "reasons": dict(self.reasons.most_common()), "duplicates": self.duplicates,
            "duplicate_examples": self.duplicate_examples, "leakage": leakage,
            "turns": {str(k): v for k, v in sorted(self.turns.items())},
            "chars": distribution(self.chars), "tokens": distribution(self.tokens),
            "sha256": self.sha256 or (file_sha256(self.path) if self.path else None),
        }


def distribution(values: array) -> dict[str, float] | None:
    """min/p50/p90/p99/max/mean/total of per-row sizes (None when there are none)."""
    if not values:
        return None
    p50, p90, p99 = percentiles(values, (50, 90, 99)) or (0.0, 0.0, 0.0)
    total = sum(values)
    return {"min": min(values), "p50": round(p50, 1), "p90": round(p90, 1), "p99": round(p99, 1),
            "max": max(values), "mean": round(total / len(values), 1), "total": total}


def build_report(tallies: dict[str, SplitTally], *, leakage: dict[str, int], options: dict[str, Any],
                 source_label: str, carve: bool) -> dict[str, Any]:
    """The whole report.json from the per-split tallies and the options used."""
    splits = {name: t.entry(leakage.get(name, 0)) for name, t in tallies.items()}
    reasons: Counter[str] = Counter()
    for t in tallies.values():
        reasons.update(t.reasons)
    hashes = [f"{name}:{s['sha256']}" for name, s in splits.items() if s["sha256"]]
    formats = {s["format"] for s in splits.values()}
    totals = {k: sum(s[k] for s in splits.values()) for k in ("in", "kept", "rejected")}
    return {
        "source": source_label,
        "format": formats.pop() if len(formats) == 1 else "mixed",
        "options": options,
        "splits": splits,
        "roles": resolve_roles(list(splits), options),
        "totals": totals,
        "reasons": dict(reasons.most_common()),
        "reason_help": {r: REASONS[r] for r in reasons},
        "reconciled": totals["in"] == totals["kept"] + totals["rejected"],
        "test_carved": carve,
        "data_hash": hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest() if hashes else None,
    }


def resolve_roles(names: list[str], options: dict[str, Any]) -> dict[str, str | None]:
    """Which split plays train/test/validation/invoke: the configured name, else a usual alias."""
    preferred = {"train": options.get("train_split"), "test": options.get("test_split"),
                 "validation": options.get("validation_split"), "invoke": options.get("invoke_split")}
    roles = {role: _role(names, preferred[role], ROLE_ALIASES[role]) for role in preferred}
    if roles["train"] is None and len(names) == 1:
        roles["train"] = names[0]
    if roles["invoke"] is None:
        roles["invoke"] = roles["test"]
    return roles


def _role(names: list[str], preferred: str | None, aliases: tuple[str, ...]) -> str | None:
    for cand in (preferred, *aliases):
        if cand and cand in names:
            return cand
    return None


def require_rows(report: dict[str, Any], *, training: bool) -> None:
    """Empty input is an error now, not a 0-row training split that fails later.

    Any split whose file holds no rows at all fails, naming the file; with `training`
    (prepare, the lifecycle's data step) so does a train split left with no valid row.
    (Validation reports rows that are all invalid itself, listing each problem.)"""
    for s in report["splits"].values():
        if s["in"] == 0:
            raise DataError(f"{s['origin']} has no rows (the file is empty or only blank lines).",
                            hint="Point at a file with chat rows (one JSON object per line for .jsonl), "
                                 "or remove the empty file from the folder.")
    train = report["roles"].get("train")
    if training and train in report["splits"]:
        s = report["splits"][train]
        if s["kept"] == 0:
            why = ", ".join(f"{k}={v}" for k, v in s["reasons"].items())
            raise DataError(f"{s['origin']} has no trainable rows: all {s['in']} row(s) were rejected ({why}).",
                            hint=f"Fix the rows (`amlft data validate {s['origin']}` lists each problem), "
                                 "or point at the right file.")


def failure_message(report: dict[str, Any], examples: list[dict[str, Any]], source: Any) -> str:
    """`prepare --on-error fail`: how many rows are invalid, then the problems."""
    t = report["totals"]
    lines = [f"{t['rejected']} of {t['in']} rows in {source} are invalid; nothing was written."]
    lines += format_problems(examples, report)
    return "\n".join(lines)


def format_problems(examples: list[dict[str, Any]], report: dict[str, Any], *, limit: int | None = None) -> list[str]:
    """Human lines: each example problem with file:line and field, then counts per reason."""
    lines = []
    for ex in examples[:limit]:
        where = f"{ex['file']}:{ex['line']}" if "line" in ex else f"{ex['file']} row {ex.get('row')}"
        for r in ex["reasons"]:
            lines.append(f"  {where}: [{r['code']}] {r['message']}")
    shown = len(examples[:limit])
    if report["totals"]["rejected"] > shown:
        lines.append(f"  ... and {report['totals']['rejected'] - shown} more rejected row(s)")
    if report["reasons"]:
        lines.append("  rejected rows per reason: " + ", ".join(f"{k}={v}" for k, v in report["reasons"].items()))
    return lines
