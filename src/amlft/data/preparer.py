"""Stream a source into validated chat JSONL splits, a report and a file of rejects.

One pass per split, constant memory: rows are read, checked and written one at a time
(only 8-byte fingerprints are kept, for duplicate and leakage detection). A JSON Lines
row that is already in the target schema and valid is written back byte for byte, so
the common case costs one `json.loads` per row and nothing else - that, not a faster
parser, is why this beats loading into Arrow and writing back out.

Nothing is lost silently: every row read is either kept or rejected (with its file,
line and reasons), per split, and the report asserts in == kept + rejected.
`on_error="fail"` writes into a temporary folder that is only moved into place when
no row was rejected.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import tempfile
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from amlft.data.formats import FORMATS, apply_columns, detect_from_rows, strip_null_message_keys, to_chat
from amlft.data.rules import REASONS, RowProblem, check_messages
from amlft.data.sources import (
    SAMPLE_SOURCES,
    SplitSource,
    first_pc,
    hub_offline_mode,
    hub_reachable,
    hub_splits,
    is_hub_id,
    local_splits,
)
from amlft.errors import ConfigError, DataError
from amlft.hashing import file_sha256

BOM = b"\xef\xbb\xbf"
POLICY_REASONS = frozenset(("duplicate", "leakage"))  # rejected only because the user asked to drop them
ROLE_ALIASES = {
    "train": ("train", "train_sft"),
    "test": ("test", "test_sft"),
    "validation": ("validation", "valid", "dev"),
    "invoke": ("test_gen",),
}
_loads = json.loads
_scan_once = json.JSONDecoder().scan_once
# Fingerprints for duplicate/leakage detection are Python's own 64-bit str/tuple hashes:
# computed in C with no copy, and only ever compared within this process.


@dataclass
class PrepareOptions:
    """How to read, check and split. Field names match the profile's `data:` section."""

    format: str = "auto"
    columns: dict[str, str] = field(default_factory=dict)
    split_pc: float | None = None
    splits: list[str] | None = None  # hub: which splits to load (None: all)
    train_split: str = "train_sft"
    test_split: str = "test_sft"
    validation_split: str | None = None
    invoke_split: str | None = "test_gen"
    test_fraction: float | None = None
    sample: int | None = None
    seed: int = 42
    on_error: str = "fail"
    max_seq_length: int | None = None
    tokenizer: str | None = None
    drop_duplicates: bool = False
    drop_leakage: bool = False
    max_examples: int = 20  # problems kept in full for printing (the rest are only counted)

    def __post_init__(self) -> None:
        if self.format != "auto" and self.format not in FORMATS:
            raise DataError(f"Unknown data format {self.format!r}.", hint=f"Use auto or one of {', '.join(FORMATS)}.")
        if self.on_error not in ("fail", "skip"):
            raise DataError(f"on_error must be fail or skip, not {self.on_error!r}.")
        if self.max_seq_length and not self.tokenizer:
            raise DataError("--max-seq-length needs --tokenizer to count tokens.",
                            hint="Add --tokenizer with the model's hub id or a local tokenizer folder.")
        if self.test_fraction is not None and not 0 < self.test_fraction < 1:
            raise DataError(f"test_fraction must be between 0 and 1, not {self.test_fraction}.")
        if self.split_pc is not None and not 0 < self.split_pc <= 100:
            raise DataError(f"split_pc must be in (0, 100], not {self.split_pc}.")

    @classmethod
    def from_config(cls, cfg: Any, **overrides: Any) -> PrepareOptions:
        """From a profile's DataConfig (or any object with the same attributes)."""
        names = [f for f in cls.__dataclass_fields__ if f not in ("splits", "max_examples")]
        values = {n: getattr(cfg, n) for n in names if hasattr(cfg, n)}
        values["columns"] = dict(values.get("columns") or {})
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


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
    src = str(source)
    if src in SAMPLE_SOURCES:
        from amlft.resources import sample_chat_dir

        src = str(sample_chat_dir())
    if is_hub_id(src):
        if not hub_offline_mode() and not hub_reachable():
            raise DataError(f"{src} looks like a Hugging Face dataset id, but the Hub cannot be reached.",
                            hint="Check your network (HF_ENDPOINT, proxies), or give a local file or folder "
                                 "(a path that exists).")
        return hub_splits(src, wanted=opts.splits, split_pc=opts.split_pc)
    return local_splits(src, single_name=single_name)


def prepare(source: str | Path, out_dir: str | Path, options: PrepareOptions | None = None, *,
            console: Any = None, label: str | None = None) -> PrepareResult:
    """Convert + validate + split `source` into `out_dir/<split>.jsonl`, `rejected.jsonl`, `report.json`.

    Raises DataError (and writes nothing) when rows are invalid and options.on_error is "fail".
    """
    opts = options or PrepareOptions()
    out = Path(out_dir)
    splits = resolve_splits(source, opts, single_name=opts.train_split)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        run = _Run(splits, opts, console=console, write_dir=tmp, source_label=label or str(source))
        report = run.execute()
        rule_rejects = sum(c for r, c in report["reasons"].items() if r not in POLICY_REASONS)
        if rule_rejects and opts.on_error == "fail":
            raise DataError(_failure_message(report, run.examples, source),
                            hint=f"Fix the rows listed, or run `amlft data validate {source}` to list every "
                                 "problem; --on-error skip (data.on_error: skip) writes the valid rows and "
                                 "the rejects to rejected.jsonl.")
        files = [*(f"{n}.jsonl" for n in report["splits"]), "rejected.jsonl"]
        _publish(tmp, out, files)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    split_files = {n: out / f"{n}.jsonl" for n in report["splits"]}
    return PrepareResult(out_dir=out, splits=split_files, roles=report["roles"], report=report,
                         report_path=out / "report.json", rejected_path=out / "rejected.jsonl",
                         data_hash=report["data_hash"], format=report["format"])


def validate_path(path: str | Path, options: PrepareOptions | None = None, *, console: Any = None) -> ValidationResult:
    """Check every row of a file, folder or hub dataset without writing anything."""
    opts = options or PrepareOptions()
    splits = resolve_splits(path, opts, single_name=None)
    run = _Run(splits, opts, console=console, write_dir=None, source_label=str(path))
    report = run.execute()
    return ValidationResult(report=report, problems=run.examples)


# ====================================================================== the run
class _Out:
    """One output split: counters, fingerprints, distributions and (when writing) its file."""

    def __init__(self, name: str, origin: str, write_dir: Path | None, *, pos_key: str, leak_check: bool) -> None:
        self.name = name
        self.origin = origin
        self.pos_key = pos_key
        self.leak_check = leak_check  # an eval split: compare its conversations with train's
        self.path = write_dir / f"{name}.jsonl" if write_dir else None
        self.fh: IO[bytes] | None = open(self.path, "wb", buffering=1 << 20) if self.path else None  # noqa: SIM115
        self.n_in = self.kept = self.rejected = self.blank = 0
        self.reasons: Counter[str] = Counter()
        self.turns: Counter[int] = Counter()
        self.chars = array("q")
        self.tokens = array("q")
        self.ids: set[int] = set()
        self.contents: set[int] = set()
        self.duplicates = 0
        self.duplicate_examples: list[dict[str, Any]] = []
        self.eval_fingerprints: list[tuple[int, int, str, int]] = []  # (content fp, out index, file, pos)
        self.format = ""
        self.format_reason = ""
        self.source_rows: int | None = None  # rows in the source split, when they were counted

    def write(self, data: bytes) -> None:
        if self.fh is not None:
            self.fh.write(data)
            self.fh.write(b"\n")

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


def _parse(text: str) -> Any:
    """json.loads without its two Python-level wrappers (this runs once per row)."""
    try:
        obj, end = _scan_once(text, 0)
    except StopIteration as exc:
        raise json.JSONDecodeError("Expecting value", text, exc.value) from None
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return obj


def _content_text(messages: list[dict[str, Any]]) -> str:
    return "\x1f".join([m["role"] + "\x1e" + m["content"] for m in messages])


def _percentiles(values: array) -> dict[str, float] | None:
    if not values:
        return None
    s = sorted(values)
    n = len(s)

    def pct(p: float) -> int:
        return s[min(n - 1, int(p * (n - 1) + 0.5))]

    total = sum(s)
    return {"min": s[0], "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": s[-1],
            "mean": round(total / n, 1), "total": total}


class _Run:
    def __init__(self, splits: list[SplitSource], opts: PrepareOptions, *, console: Any,
                 write_dir: Path | None, source_label: str) -> None:
        self.splits = splits
        self.opts = opts
        self.console = console
        self.write_dir = write_dir
        self.source_label = source_label
        self.examples: list[dict[str, Any]] = []
        self.rejected_fh: IO[bytes] | None = (open(write_dir / "rejected.jsonl", "wb", buffering=1 << 20)  # noqa: SIM115
                                              if write_dir else None)
        self.outs: dict[str, _Out] = {}
        self.count_tokens = _token_counter(opts.tokenizer) if opts.tokenizer else None

    # ------------------------------------------------------------------ driving
    def execute(self) -> dict[str, Any]:
        opts = self.opts
        # the train split first: leakage is judged against it
        train_like = [s for s in self.splits if s.name in (opts.train_split, *ROLE_ALIASES["train"])]
        ordered = train_like[:1] + [s for s in self.splits if s not in train_like[:1]]
        carve = opts.test_fraction is not None and len(ordered) == 1
        if opts.test_fraction is not None and not carve and self.console is not None:
            self.console.warn(f"--test-fraction ignored: the source already has splits "
                              f"({', '.join(s.name for s in ordered)})")
        try:
            for split in ordered:
                self._process(split, carve=carve)
        finally:
            for o in self.outs.values():
                o.close()
        self._leakage()
        report = self._report(carve=carve)
        if self.rejected_fh is not None:
            self.rejected_fh.close()
        if self.write_dir is not None:
            _atomic_json(self.write_dir / "report.json", report)
        return report

    def _out(self, name: str, split: SplitSource) -> _Out:
        if name not in self.outs:
            train = self.opts.train_split
            several = len(self.splits) > 1 or self.opts.test_fraction is not None
            self.outs[name] = _Out(name, split.origin, self.write_dir, pos_key=split.position,
                                   leak_check=several and not (name == train or name.startswith("train")))
        return self.outs[name]

    def _process(self, split: SplitSource, *, carve: bool) -> None:
        opts = self.opts
        fmt, why = self._detect(split)
        primary = self._out(split.name, split)
        primary.format, primary.format_reason = fmt, why
        if self.console is not None:
            self.console.info(f"{split.origin}: format {fmt}: {why}")
        # which input rows take part: the first N%, then a seeded sample, then the test carve-out
        limit: int | None = None
        chosen: set[int] | None = None
        test_rows: set[int] | None = None
        total: int | None = None
        if (opts.split_pc and opts.split_pc < 100 and split.kind != "hub") or opts.sample or carve:
            total = split.count()
            limit = first_pc(total, opts.split_pc) if opts.split_pc and split.kind != "hub" else total
            picked = limit
            if opts.sample and opts.sample < limit:
                chosen = set(random.Random(opts.seed).sample(range(limit), opts.sample))
                picked = opts.sample
            if carve:
                n_test = max(1, round(picked * opts.test_fraction)) if picked > 1 else 0
                test_rows = set(random.Random(opts.seed + 1).sample(range(picked), n_test))
        test_out = None
        if carve:
            test_out = self._out(opts.test_split, split)
            test_out.format, test_out.format_reason = fmt, why
        primary.source_rows = total
        self._stream(split, fmt, primary, test_out, limit, chosen, test_rows)

    def _detect(self, split: SplitSource) -> tuple[str, str]:
        if self.opts.format != "auto":
            return self.opts.format, "given"
        sample: list[Any] = []
        for _, _, item in split.rows():
            if isinstance(item, bytes):
                try:
                    item = _loads(item.strip().removeprefix(BOM) or b"null")
                except ValueError:
                    continue
            if isinstance(item, dict) and self.opts.columns:
                item = apply_columns(item, self.opts.columns)
            if isinstance(item, dict):
                sample.append(item)
            if len(sample) >= 50:
                break
        if not sample:
            return "ultrachat", "no readable rows to detect from"
        try:
            return detect_from_rows(sample)
        except ValueError as exc:
            raise DataError(f"{split.origin}: {exc}.",
                            hint="Pass --format (ultrachat|openai|alpaca|sharegpt) and map your field names "
                                 "with --column, e.g. --column messages=dialog or --column instruction=question."
                            ) from exc

    # ------------------------------------------------------------------ the hot loop
    def _stream(self, split: SplitSource, fmt: str, primary: _Out, test_out: _Out | None,
                limit: int | None, chosen: set[int] | None, test_rows: set[int] | None) -> None:
        opts = self.opts
        columns = opts.columns
        passthrough_ok = fmt == "ultrachat" and not columns
        count_tokens = self.count_tokens
        max_len = opts.max_seq_length
        drop_dups = opts.drop_duplicates
        pos_key = split.position
        progress_cm = self._progress(split)
        progress = progress_cm.__enter__()
        bytes_read = 0
        idx = -1  # index among non-blank input rows
        picked = -1  # index among rows taking part
        try:
            for file, pos, item in split.rows():
                raw: bytes | None = None
                if isinstance(item, bytes):
                    bytes_read += len(item)
                    raw = item.strip()
                    if pos == 1 and raw.startswith(BOM):
                        raw = raw[3:].strip()
                    if not raw:
                        primary.blank += 1
                        continue
                idx += 1
                if limit is not None and idx >= limit:
                    break
                if chosen is not None and idx not in chosen:
                    continue
                picked += 1
                out = test_out if test_rows is not None and picked in test_rows else primary
                out.n_in += 1
                if not (picked & 4095) and progress is not None:
                    progress.update(bytes_read / 1e6 if raw is not None else picked)

                # ---- parse
                if raw is not None:
                    try:
                        text = raw.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        self._reject(out, file, pos_key, pos, raw, [RowProblem("invalid_utf8", "<line>", f"byte {exc.start}")])
                        continue
                    try:
                        obj = _parse(text)
                    except ValueError as exc:
                        self._reject(out, file, pos_key, pos, raw, [RowProblem("invalid_json", "<line>", str(exc)[:120])])
                        continue
                else:
                    obj = item
                if type(obj) is not dict:
                    self._reject(out, file, pos_key, pos, raw if raw is not None else obj,
                                 [RowProblem("not_object", "<row>", type(obj).__name__)])
                    continue

                # ---- convert
                passthrough = (passthrough_ok and raw is not None and type(obj.get("prompt_id")) is str
                               and obj["prompt_id"] and type(obj.get("prompt")) is str)
                if passthrough:
                    row = obj
                    problems = check_messages(obj.get("messages"))
                else:
                    if columns:
                        obj = apply_columns(obj, columns)
                    if raw is None and "messages" in obj:
                        obj["messages"] = strip_null_message_keys(obj["messages"])
                    if raw is None and "conversations" in obj:
                        obj["conversations"] = strip_null_message_keys(obj["conversations"])
                    row, problems = to_chat(obj, fmt)
                    if row is not None and not problems:
                        problems = check_messages(row["messages"])
                messages = row["messages"] if row is not None and not problems else None
                n_tokens = -1
                if messages is not None and count_tokens is not None:
                    n_tokens = count_tokens(messages)
                    if max_len and n_tokens > max_len:
                        problems = [RowProblem("too_many_tokens", "messages", f"{n_tokens} > {max_len}")]
                if problems:
                    self._reject(out, file, pos_key, pos, raw if raw is not None else obj, problems)
                    continue

                # ---- duplicates and fingerprints
                assert row is not None and messages is not None
                pairs = tuple([(m["role"], m["content"]) for m in messages])
                cfp = hash(pairs)
                if not passthrough and row.get("prompt_id") is None:
                    row["prompt_id"] = hashlib.sha256(_content_text(messages).encode("utf-8", "surrogatepass")).hexdigest()
                pid = row["prompt_id"] if type(row.get("prompt_id")) is str else None
                ifp = hash(pid) if pid else None
                dup = cfp in out.contents or (ifp is not None and ifp in out.ids)
                if dup:
                    out.duplicates += 1
                    if len(out.duplicate_examples) < 5:
                        out.duplicate_examples.append({"file": file, pos_key: pos,
                                                       "by": "content" if cfp in out.contents else "prompt_id"})
                    if drop_dups:
                        self._reject(out, file, pos_key, pos, raw if raw is not None else obj,
                                     [RowProblem("duplicate", "messages" if cfp in out.contents else "prompt_id")])
                        continue
                out.contents.add(cfp)
                if ifp is not None:
                    out.ids.add(ifp)
                if out.leak_check:
                    out.eval_fingerprints.append((cfp, out.kept, file, pos))

                # ---- keep
                out.kept += 1
                out.turns[len(messages)] += 1
                out.chars.append(sum([len(c) for _, c in pairs]))
                if n_tokens >= 0:
                    out.tokens.append(n_tokens)
                if out.fh is not None:
                    if passthrough and len(item) == len(raw) + 1:  # the line as read, newline and all
                        out.fh.write(item)
                    else:
                        out.write(raw if passthrough else _dumps(row))
        finally:
            progress_cm.__exit__(None, None, None)

    def _progress(self, split: SplitSource) -> contextlib.AbstractContextManager[Any]:
        if self.console is None or (split.kind != "hub" and split.size_bytes < 20_000_000):
            return contextlib.nullcontext(None)  # seconds of work: a bar would only be noise
        if split.kind == "jsonl":
            return self.console.progress(f"{split.name}", total=round(split.size_bytes / 1e6, 1), unit="MB")
        return self.console.progress(f"{split.name}", total=None, unit="rows")

    def _reject(self, out: _Out, file: str, pos_key: str, pos: int, item: Any, problems: list[RowProblem]) -> None:
        out.rejected += 1
        for code in {p.code for p in problems}:
            out.reasons[code] += 1
        entry = {"split": out.name, "file": file, pos_key: pos, "reasons": [p.to_dict() for p in problems]}
        if len(self.examples) < self.opts.max_examples and not all(p.code in POLICY_REASONS for p in problems):
            self.examples.append(entry)
        if self.rejected_fh is not None:
            if isinstance(item, bytes):
                full = dict(entry, raw=item.decode("utf-8", "backslashreplace"))
            else:
                full = dict(entry, row=item)
            self.rejected_fh.write(json.dumps(full, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass"))
            self.rejected_fh.write(b"\n")

    # ------------------------------------------------------------------ after the pass
    def _leakage(self) -> None:
        """Rows of eval splits whose conversation is also in train: report, optionally drop."""
        opts = self.opts
        train = self.outs.get(opts.train_split)
        if train is None:
            train = next((o for n, o in self.outs.items() if n in ROLE_ALIASES["train"]), None)
        self.leakage: dict[str, int] = {}
        if train is None:
            return
        for out in self.outs.values():
            if out is train or not out.eval_fingerprints:
                continue
            leaked = [(fp, i, f, p) for fp, i, f, p in out.eval_fingerprints if fp in train.contents]
            out.eval_fingerprints = []
            if not leaked:
                continue
            self.leakage[out.name] = len(leaked)
            if not opts.drop_leakage:
                continue
            drop = {i: (f, p) for _, i, f, p in leaked}
            dropped = _remove_lines(out.path, drop) if out.path is not None else dict.fromkeys(drop)
            for i, (f, p) in drop.items():
                self._reject(out, f, out.pos_key, p, dropped.get(i), [RowProblem("leakage", "messages")])
            out.kept -= len(drop)

    def _report(self, *, carve: bool) -> dict[str, Any]:
        opts = self.opts
        splits: dict[str, Any] = {}
        reasons: Counter[str] = Counter()
        hashes = []
        for name, o in self.outs.items():
            digest = file_sha256(o.path) if o.path else None
            if digest:
                hashes.append(f"{name}:{digest}")
            reasons.update(o.reasons)
            if o.n_in != o.kept + o.rejected:  # the promise the report makes: nothing lost
                raise AssertionError(f"row accounting broken for split {name}: "
                                     f"{o.n_in} in != {o.kept} kept + {o.rejected} rejected")
            splits[name] = {
                "origin": o.origin,
                "file": f"{name}.jsonl",
                "format": o.format,
                "format_reason": o.format_reason,
                "source_rows": o.source_rows,
                "in": o.n_in,
                "kept": o.kept,
                "rejected": o.rejected,
                "blank_lines": o.blank,
                "reasons": dict(o.reasons.most_common()),
                "duplicates": o.duplicates,
                "duplicate_examples": o.duplicate_examples,
                "leakage": self.leakage.get(name, 0),
                "turns": {str(k): v for k, v in sorted(o.turns.items())},
                "chars": _percentiles(o.chars),
                "tokens": _percentiles(o.tokens),
                "sha256": digest,
            }
        names = list(splits)
        roles = {role: _role(names, preferred, ROLE_ALIASES[role])
                 for role, preferred in (("train", opts.train_split), ("test", opts.test_split),
                                         ("validation", opts.validation_split), ("invoke", opts.invoke_split))}
        if roles["train"] is None and len(names) == 1:
            roles["train"] = names[0]
        if roles["invoke"] is None:
            roles["invoke"] = roles["test"]
        formats = {s["format"] for s in splits.values()}
        totals = {k: sum(s[k] for s in splits.values()) for k in ("in", "kept", "rejected")}
        return {
            "source": self.source_label,
            "format": formats.pop() if len(formats) == 1 else "mixed",
            "options": opts.to_dict(),
            "splits": splits,
            "roles": roles,
            "totals": totals,
            "reasons": dict(reasons.most_common()),
            "reason_help": {r: REASONS[r] for r in reasons},
            "reconciled": totals["in"] == totals["kept"] + totals["rejected"],
            "test_carved": carve,
            "data_hash": hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest() if hashes else None,
        }


def _role(names: list[str], preferred: str | None, aliases: tuple[str, ...]) -> str | None:
    for cand in (preferred, *aliases):
        if cand and cand in names:
            return cand
    return None


def _remove_lines(path: Path, drop: dict[int, Any]) -> dict[int, bytes]:
    """Rewrite a (small, eval) split without the given 0-based lines; returns the removed lines."""
    removed: dict[int, bytes] = {}
    tmp = path.with_suffix(".tmp")
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        for i, line in enumerate(src):
            if i in drop:
                removed[i] = line.rstrip(b"\n")
            else:
                dst.write(line)
    os.replace(tmp, path)
    return removed


def _dumps(row: dict[str, Any]) -> bytes:
    try:
        return json.dumps(row, ensure_ascii=False, default=str).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a "\ud800" escape: keep it escaped
        return json.dumps(row, default=str).encode("ascii")


def _atomic_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _publish(tmp: Path, out: Path, files: list[str]) -> None:
    """Move the finished files into `out`; report.json last, so its presence means complete."""
    out.mkdir(parents=True, exist_ok=True)
    old_report = out / "report.json"
    stale: set[str] = set()
    if old_report.exists():
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stale = {s.get("file") for s in json.loads(old_report.read_text(encoding="utf-8"))["splits"].values()}
        old_report.unlink()
    for name in files:
        os.replace(tmp / name, out / name)
    for name in stale - set(files):
        if name:
            with contextlib.suppress(FileNotFoundError):
                (out / name).unlink()
    os.replace(tmp / "report.json", out / "report.json")


def _failure_message(report: dict[str, Any], examples: list[dict[str, Any]], source: Any) -> str:
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


def iter_rows(path: str | Path) -> Iterator[dict[str, Any]]:
    """Rows of a prepared JSONL file (for callers that read what prepare wrote)."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def _token_counter(tokenizer_id: str) -> Callable[[list[dict[str, Any]]], int]:
    """Tokens in one conversation as the model will see it: its chat template when it has one."""
    from amlft.errors import require
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
