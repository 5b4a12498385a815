"""How big a dataset is, in the units a fine-tune costs: rows, turns, characters, tokens.

Tokens are exact with a tokenizer (the model's chat template when it has one) and
estimated as characters / 4 without one - the estimate is labelled as such.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from amlft.data.preparer import PrepareOptions, validate_path

CHARS_PER_TOKEN = 4.0  # rough English average; only used when no tokenizer is given


def dataset_stats(path: str | Path, options: PrepareOptions | None = None, *, epochs: float = 1.0,
                  console: Any = None) -> dict[str, Any]:
    """Per-split and total statistics of the valid rows, plus estimated training tokens."""
    result = validate_path(path, options, console=console)
    report = result.report
    splits: dict[str, Any] = {}
    total_tokens = 0.0
    exact = True
    for name, s in report["splits"].items():
        turns = s["turns"]
        rows = s["kept"]
        n_turns = sum(int(k) * v for k, v in turns.items())
        chars = s["chars"] or {}
        tokens = s["tokens"]
        if tokens:
            tok_total: float = tokens["total"]
        else:
            exact = False
            tok_total = chars.get("total", 0) / CHARS_PER_TOKEN
        total_tokens += tok_total
        splits[name] = {
            "rows": rows,
            "invalid_rows": s["rejected"],
            "turns_mean": round(n_turns / rows, 2) if rows else 0,
            "turns_max": max((int(k) for k in turns), default=0),
            "chars_mean": chars.get("mean"),
            "chars_p90": chars.get("p90"),
            "chars_max": chars.get("max"),
            "tokens_mean": tokens["mean"] if tokens else round(chars.get("mean", 0) / CHARS_PER_TOKEN, 1),
            "tokens_max": tokens["max"] if tokens else None,
            "tokens_total": round(tok_total),
            "duplicates": s["duplicates"],
        }
    train = report["roles"].get("train")
    train_tokens = splits[train]["tokens_total"] if train in splits else round(total_tokens)
    return {
        "source": str(path),
        "format": report["format"],
        "splits": splits,
        "tokens_exact": exact,
        "epochs": epochs,
        "train_split": train,
        "estimated_training_tokens": round(train_tokens * epochs),
        "invalid_rows": report["totals"]["rejected"],
        "reasons": report["reasons"],
    }
