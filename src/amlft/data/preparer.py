"""Chat data in, validated chat JSONL splits out: the public entry points of amlft.data.

`prepare` streams a source (local file/folder or hub dataset) into `<out>/<split>.jsonl`,
`rejected.jsonl` and `report.json`; `validate_path` checks the same rows writing nothing.
The pass itself lives in `amlft.data.engine`, the report in `amlft.data.report` and the
file handling in `amlft.data.io`; this module wires them together and owns the policy:
`on_error="fail"` writes into a temporary folder that is only moved into place when no row
was rejected, and input with no rows (or no trainable row) is an error naming the file.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amlft.data.engine import Run
from amlft.data.io import iter_rows, publish
from amlft.data.options import PrepareOptions
from amlft.data.report import POLICY_REASONS, failure_message, format_problems, require_rows
from amlft.data.sources import (
    SAMPLE_SOURCES,
    SplitSource,
    hub_offline_mode,
    hub_reachable,
    hub_splits,
    is_hub_id,
    local_splits,
)
from amlft.errors import ConfigError, DataError
from amlft.extras import require

__all__ = ["PrepareOptions", "PrepareResult", "ValidationResult", "format_problems", "iter_rows", "prepare",
           "resolve_splits", "validate_path"]


@dataclass
class PrepareResult:
    """What `prepare` wrote: one file per split, the report, the rejects and a content hash."""

    out_dir: Path
    splits: dict[str, Path]
    roles: dict[str, str | None]
    report: dict[str, Any]
    report_path: Path
    rejected_path: Path
    data_hash: str
    format: str

    def file(self, role: str) -> Path | None:
        """The file playing a role (train/test/validation/invoke), or None."""
        name = self.roles.get(role)
        return self.splits.get(name) if name else None

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        return {n: {k: s[k] for k in ("in", "kept", "rejected")} for n, s in self.report["splits"].items()}


@dataclass
class ValidationResult:
    """What `validate_path` found; `ok` is True when every row is valid."""

    report: dict[str, Any]
    problems: list[dict[str, Any]]  # the first max_examples rejected rows, in full

    @property
    def ok(self) -> bool:
        return self.report["totals"]["rejected"] == 0

    @property
    def reason_counts(self) -> dict[str, int]:
        return dict(self.report["reasons"])


# ====================================================================== public API
def resolve_splits(source: str | Path, opts: PrepareOptions, *, single_name: str | None) -> list[SplitSource]:
    """The splits of a source: the shipped sample, a hub dataset id, or a local file/folder."""
    src = str(source)
    if src in SAMPLE_SOURCES:
        from amlft.resources import sample_chat_dir

        src = str(sample_chat_dir())
    if is_hub_id(src):
        require("datasets", extra="data", purpose="Loading a Hugging Face dataset")  # say so before any network probe
        if not hub_offline_mode() and not hub_reachable():
            raise DataError(f"{src} looks like a Hugging Face dataset id, but the Hub cannot be reached.",
                            hint="Check your network (HF_ENDPOINT, proxies), or give a local file or folder "
                                 "(a path that exists).")
        return hub_splits(src, wanted=opts.splits, split_pc=opts.split_pc)
    return local_splits(src, single_name=single_name)


def _run(splits: list[SplitSource], opts: PrepareOptions, *, console: Any, write_dir: Path | None,
         label: str) -> Run:
    counter = _token_counter(opts.tokenizer) if opts.tokenizer else None
    return Run(splits, opts, console=console, write_dir=write_dir, source_label=label, count_tokens=counter)


def prepare(source: str | Path, out_dir: str | Path, options: PrepareOptions | None = None, *,
            console: Any = None, label: str | None = None) -> PrepareResult:
    """Convert + validate + split `source` into `out_dir/<split>.jsonl`, `rejected.jsonl`, `report.json`.

    Raises DataError (and writes nothing) when rows are invalid and options.on_error is "fail",
    and when a split holds no rows or the train split no valid row.
    """
    opts = options or PrepareOptions()
    out = Path(out_dir)
    splits = resolve_splits(source, opts, single_name=opts.train_split)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        run = _run(splits, opts, console=console, write_dir=tmp, label=label or str(source))
        report = run.execute()
        rule_rejects = sum(c for r, c in report["reasons"].items() if r not in POLICY_REASONS)
        if rule_rejects and opts.on_error == "fail":
            raise DataError(failure_message(report, run.examples, source),
                            hint=f"Fix the rows listed, or run `amlft data validate {source}` to list every "
                                 "problem; --on-error skip (data.on_error: skip) writes the valid rows and "
                                 "the rejects to rejected.jsonl.")
        require_rows(report, training=True)
        files = [*(f"{n}.jsonl" for n in report["splits"]), "rejected.jsonl"]
        publish(tmp, out, files)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    split_files = {n: out / f"{n}.jsonl" for n in report["splits"]}
    return PrepareResult(out_dir=out, splits=split_files, roles=report["roles"], report=report,
                         report_path=out / "report.json", rejected_path=out / "rejected.jsonl",
                         data_hash=report["data_hash"], format=report["format"])


def validate_path(path: str | Path, options: PrepareOptions | None = None, *, console: Any = None) -> ValidationResult:
    """Check every row of a file, folder or hub dataset without writing anything.

    Raises DataError when a split holds no rows at all (an empty file); invalid rows are
    reported in the result (`ok` False), not raised."""
    opts = options or PrepareOptions()
    splits = resolve_splits(path, opts, single_name=None)
    run = _run(splits, opts, console=console, write_dir=None, label=str(path))
    report = run.execute()
    require_rows(report, training=False)
    return ValidationResult(report=report, problems=run.examples)


def _token_counter(tokenizer_id: str) -> Callable[[list[dict[str, Any]]], int]:
    """Tokens in one conversation as the model will see it: its chat template when it has one."""
    from amlft.extras import require
    from amlft.model_refs import load_tokenizer

    require("transformers", extra="local", purpose="Counting tokens (--tokenizer)")
    try:
        tok = load_tokenizer(tokenizer_id, what="data.tokenizer")
    except ConfigError as exc:  # folder not found, offline and not cached, hub unreachable: already clear
        raise DataError(exc.message, hint=exc.hint) from exc
    except Exception as exc:
        raise DataError(f"Could not load tokenizer {tokenizer_id!r}: {exc}",
                        hint="Give a local tokenizer folder or a hub model id you can reach.") from exc
    if getattr(tok, "chat_template", None):
        def count(messages: list[dict[str, Any]]) -> int:
            ids = tok.apply_chat_template(messages, tokenize=True, return_dict=False)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return len(ids)
    else:
        def count(messages: list[dict[str, Any]]) -> int:
            text = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
            return len(tok(text, add_special_tokens=True)["input_ids"])
    return count
