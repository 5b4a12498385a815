"""The streaming pass: read each split once, check every row, keep or reject it.

One pass per split, constant memory: rows are read, checked and written one at a time
(only 8-byte fingerprints are kept, for duplicate and leakage detection). A JSON Lines
row that is already in the target schema and valid is written back byte for byte, so
the common case costs one JSON parse per row (orjson, with the standard library deciding
whatever orjson refuses: `io.parse_fast`) and no re-serialisation; each split's SHA-256 is
computed on a worker thread as it is written (`io.HashingFile`), not by reading it again.

Nothing is lost silently: every row read is either kept or rejected (with its file,
line and reasons), and the report (amlft.data.report) checks in == kept + rejected.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from amlft.data.formats import apply_columns, detect_from_rows, strip_null_message_keys, to_chat
from amlft.data.io import (
    BOM,
    UNPARSED,
    dumps_record,
    dumps_row,
    open_output,
    parse_fast,
    parse_line,
    remove_lines,
    written_sha256,
)
from amlft.data.options import PrepareOptions
from amlft.data.report import POLICY_REASONS, ROLE_ALIASES, SplitTally, build_report
from amlft.data.rules import RowProblem, check_messages
from amlft.data.sources import SplitSource, first_pc
from amlft.errors import DataError
from amlft.records import atomic_write_json

__all__ = ["Run"]

TokenCounter = Callable[[list[dict[str, Any]]], int]
# Fingerprints for duplicate/leakage detection are Python's own 64-bit str/tuple hashes:
# computed in C with no copy, and only ever compared within this process.


@dataclass
class SplitOutput(SplitTally):
    """An output split: its tally plus what the pass needs (file, fingerprints)."""

    leak_check: bool = False  # an eval split: compare its conversations with train's
    fh: IO[bytes] | None = None
    ids: set[int] = field(default_factory=set)
    contents: set[int] = field(default_factory=set)
    eval_fingerprints: list[tuple[int, int, str, int]] = field(default_factory=list)  # (content fp, index, file, pos)

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.sha256 = written_sha256(self.fh)
            self.fh = None


@dataclass
class Selection:
    """Which input rows of a split take part: the first N%, a seeded sample, the test carve-out."""

    limit: int | None = None
    chosen: set[int] | None = None
    test_rows: set[int] | None = None
    total: int | None = None


@dataclass
class Item:
    """One input row on its way through the pass."""

    file: str
    pos: int
    raw: bytes | None  # the stripped line (text sources); None for object rows (hub, parquet, csv)
    line: Any  # the line as read, newline included (text sources), or the object row
    out: SplitOutput
    parsed_fast: bool = False  # parsed by orjson (exact for the schema's strings; see _convert)

    def original(self) -> Any:
        return self.raw if self.raw is not None else self.line


class Run:
    """One pass over every split of a source; `execute()` returns the report."""

    def __init__(self, splits: list[SplitSource], opts: PrepareOptions, *, console: Any,
                 write_dir: Path | None, source_label: str, count_tokens: TokenCounter | None = None) -> None:
        self.splits = splits
        self.opts = opts
        self.console = console
        self.write_dir = write_dir
        self.source_label = source_label
        self.examples: list[dict[str, Any]] = []
        self.rejected_fh: IO[bytes] | None = open_output(write_dir / "rejected.jsonl") if write_dir else None
        self.outs: dict[str, SplitOutput] = {}
        self.count_tokens = count_tokens
        self.leakage: dict[str, int] = {}

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
        report = build_report(dict(self.outs), leakage=self.leakage, options=opts.to_dict(),
                              source_label=self.source_label, carve=carve)
        if self.rejected_fh is not None:
            self.rejected_fh.close()
        if self.write_dir is not None:
            atomic_write_json(self.write_dir / "report.json", report)
        return report

    def _out(self, name: str, split: SplitSource) -> SplitOutput:
        if name not in self.outs:
            several = len(self.splits) > 1 or self.opts.test_fraction is not None
            path = self.write_dir / f"{name}.jsonl" if self.write_dir else None
            self.outs[name] = SplitOutput(
                name=name, origin=split.origin, pos_key=split.position, path=path,
                fh=open_output(path, hashed=True) if path else None,
                leak_check=several and not (name == self.opts.train_split or name.startswith("train")))
        return self.outs[name]

    def _process(self, split: SplitSource, *, carve: bool) -> None:
        fmt, why = self._detect(split)
        primary = self._out(split.name, split)
        primary.format, primary.format_reason = fmt, why
        if self.console is not None:
            self.console.info(f"{split.origin}: format {fmt}: {why}")
        sel = self._selection(split, carve=carve)
        test_out = None
        if carve:
            test_out = self._out(self.opts.test_split, split)
            test_out.format, test_out.format_reason = fmt, why
        primary.source_rows = sel.total
        _SplitPass(self, split, fmt, primary, test_out).run(sel)

    def _selection(self, split: SplitSource, *, carve: bool) -> Selection:
        opts = self.opts
        partial = bool(opts.split_pc and opts.split_pc < 100 and split.kind != "hub")
        if not (partial or opts.sample or carve):
            return Selection()
        total = split.count()
        limit = first_pc(total, opts.split_pc) if opts.split_pc and split.kind != "hub" else total
        sel = Selection(limit=limit, total=total)
        picked = limit
        if opts.sample and opts.sample < limit:
            sel.chosen = set(random.Random(opts.seed).sample(range(limit), opts.sample))
            picked = opts.sample
        if carve and opts.test_fraction is not None:
            n_test = max(1, round(picked * opts.test_fraction)) if picked > 1 else 0
            sel.test_rows = set(random.Random(opts.seed + 1).sample(range(picked), n_test))
        return sel

    def _detect(self, split: SplitSource) -> tuple[str, str]:
        if self.opts.format != "auto":
            return self.opts.format, "given"
        sample: list[Any] = []
        for _, _, item in split.rows():
            if isinstance(item, bytes):
                try:
                    item = json.loads(item.strip().removeprefix(BOM) or b"null")
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

    def progress(self, split: SplitSource) -> contextlib.AbstractContextManager[Any]:
        if self.console is None or (split.kind != "hub" and split.size_bytes < 20_000_000):
            return contextlib.nullcontext(None)  # seconds of work: a bar would only be noise
        if split.kind == "jsonl":
            return self.console.progress(f"{split.name}", total=round(split.size_bytes / 1e6, 1), unit="MB")
        return self.console.progress(f"{split.name}", total=None, unit="rows")

    def reject(self, out: SplitTally, file: str, pos: int, item: Any, problems: list[RowProblem]) -> None:
        """Count a rejected row; keep it in full among the examples and in rejected.jsonl."""
        out.rejected += 1
        for code in {p.code for p in problems}:
            out.reasons[code] += 1
        entry = {"split": out.name, "file": file, out.pos_key: pos, "reasons": [p.to_dict() for p in problems]}
        if len(self.examples) < self.opts.max_examples and not all(p.code in POLICY_REASONS for p in problems):
            self.examples.append(entry)
        if self.rejected_fh is not None:
            if isinstance(item, bytes):  # text, numbers and lists only: orjson writes it as json would, faster
                self.rejected_fh.write(dumps_record(dict(entry, raw=item.decode("utf-8", "backslashreplace"))))
            else:  # an object row may hold NaN or huge integers, which only json writes back unchanged
                full = dict(entry, row=item)
                self.rejected_fh.write(json.dumps(full, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass"))
            self.rejected_fh.write(b"\n")

    # ------------------------------------------------------------------ after the pass
    def _leakage(self) -> None:
        """Rows of eval splits whose conversation is also in train: report, optionally drop."""
        train = self.outs.get(self.opts.train_split)
        if train is None:
            train = next((o for n, o in self.outs.items() if n in ROLE_ALIASES["train"]), None)
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
            if not self.opts.drop_leakage:
                continue
            drop = {i: (f, p) for _, i, f, p in leaked}
            dropped: dict[int, Any] = remove_lines(out.path, drop) if out.path is not None else dict.fromkeys(drop)
            out.sha256 = None  # rewritten: the report hashes the file as it now is
            for i, (f, p) in drop.items():
                self.reject(out, f, p, dropped.get(i), [RowProblem("leakage", "messages")])
            out.kept -= len(drop)


class _SplitPass:
    """The hot loop for one split: select, parse, convert, check, dedupe, keep."""

    def __init__(self, run: Run, split: SplitSource, fmt: str, primary: SplitOutput,
                 test_out: SplitOutput | None) -> None:
        self.run_ = run
        self.split = split
        self.fmt = fmt
        self.primary = primary
        self.test_out = test_out
        self.columns = run.opts.columns
        self.passthrough_ok = fmt == "ultrachat" and not self.columns
        self.count_tokens = run.count_tokens
        self.max_len = run.opts.max_seq_length
        self.drop_dups = run.opts.drop_duplicates

    def run(self, sel: Selection) -> None:
        with self.run_.progress(self.split) as progress:
            for item in self._items(sel, progress):
                self._row(item)

    def _items(self, sel: Selection, progress: Any) -> Iterator[Item]:
        """The rows taking part, each routed to its output split (blank lines counted, skipped)."""
        idx = -1  # index among non-blank input rows
        picked = -1  # index among rows taking part
        bytes_read = 0
        for file, pos, line in self.split.rows():
            raw: bytes | None = None
            if isinstance(line, bytes):
                bytes_read += len(line)
                raw = line.strip()
                if pos == 1 and raw.startswith(BOM):
                    raw = raw[3:].strip()
                if not raw:
                    self.primary.blank += 1
                    continue
            idx += 1
            if sel.limit is not None and idx >= sel.limit:
                break
            if sel.chosen is not None and idx not in sel.chosen:
                continue
            picked += 1
            out = self.test_out if self.test_out is not None and sel.test_rows and picked in sel.test_rows \
                else self.primary
            out.n_in += 1
            if not (picked & 4095) and progress is not None:
                progress.update(bytes_read / 1e6 if raw is not None else picked)
            yield Item(file, pos, raw, line, out)

    def _reject(self, item: Item, problems: list[RowProblem]) -> None:
        self.run_.reject(item.out, item.file, item.pos, item.original(), problems)

    def _row(self, item: Item) -> None:
        obj = self._parse(item)
        if obj is None:
            return
        row, problems, passthrough = self._convert(item, obj)
        messages: list[dict[str, Any]] | None = row["messages"] if row is not None and not problems else None
        n_tokens = -1
        if messages is not None and self.count_tokens is not None:
            n_tokens = self.count_tokens(messages)
            if self.max_len and n_tokens > self.max_len:
                problems = [RowProblem("too_many_tokens", "messages", f"{n_tokens} > {self.max_len}")]
        if problems or row is None or messages is None:
            self._reject(item, problems)
            return
        pairs = tuple([(m["role"], m["content"]) for m in messages])
        if self._duplicate(item, row, pairs, passthrough):
            return
        self._keep(item, row, pairs, n_tokens, passthrough)

    def _parse(self, item: Item) -> dict[str, Any] | None:
        """The row as an object, or None once rejected (bad UTF-8, bad JSON, not an object)."""
        if item.raw is None:
            obj = item.line
        else:  # orjson where a row may be written back as read; rows rebuilt from objects: json (exact)
            obj = parse_fast(item.raw) if self.passthrough_ok else UNPARSED
            item.parsed_fast = obj is not UNPARSED
            if obj is UNPARSED:
                try:
                    text = item.raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    self._reject(item, [RowProblem("invalid_utf8", "<line>", f"byte {exc.start}")])
                    return None
                try:
                    obj = parse_line(text)
                except ValueError as exc:
                    self._reject(item, [RowProblem("invalid_json", "<line>", str(exc)[:120])])
                    return None
        if type(obj) is not dict:
            self._reject(item, [RowProblem("not_object", "<row>", type(obj).__name__)])
            return None
        return obj

    def _convert(self, item: Item, obj: dict[str, Any]) -> tuple[dict[str, Any] | None, list[RowProblem], bool]:
        """(row in the target schema, problems, passthrough?). Passthrough: already in the schema
        with an id, so the line can be written back as read."""
        if (self.passthrough_ok and item.raw is not None and type(obj.get("prompt_id")) is str
                and obj["prompt_id"] and type(obj.get("prompt")) is str):
            return obj, check_messages(obj.get("messages")), True
        if item.raw is not None and item.parsed_fast:
            # converted rows are written back from the object: re-read with the standard library,
            # which keeps integers past 64 bits exact (orjson turns them into floats)
            obj = parse_line(item.raw.decode("utf-8"))
        if self.columns:
            obj = apply_columns(obj, self.columns)
        if item.raw is None:
            for key in ("messages", "conversations"):
                if key in obj:
                    obj[key] = strip_null_message_keys(obj[key])
        row, problems = to_chat(obj, self.fmt)
        if row is not None and not problems:
            problems = check_messages(row["messages"])
        return row, problems, False

    def _duplicate(self, item: Item, row: dict[str, Any], pairs: tuple[tuple[str, str], ...],
                   passthrough: bool) -> bool:
        """Fingerprint the row; True when it was rejected as a duplicate (drop_duplicates)."""
        out = item.out
        cfp = hash(pairs)
        if not passthrough and row.get("prompt_id") is None:
            text = "\x1f".join([role + "\x1e" + content for role, content in pairs])
            row["prompt_id"] = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        pid = row["prompt_id"] if type(row.get("prompt_id")) is str else None
        ifp = hash(pid) if pid else None
        by_content = cfp in out.contents
        if by_content or (ifp is not None and ifp in out.ids):
            out.duplicates += 1
            if len(out.duplicate_examples) < 5:
                out.duplicate_examples.append({"file": item.file, out.pos_key: item.pos,
                                               "by": "content" if by_content else "prompt_id"})
            if self.drop_dups:
                self._reject(item, [RowProblem("duplicate", "messages" if by_content else "prompt_id")])
                return True
        out.contents.add(cfp)
        if ifp is not None:
            out.ids.add(ifp)
        if out.leak_check:
            out.eval_fingerprints.append((cfp, out.kept, item.file, item.pos))
        return False

    def _keep(self, item: Item, row: dict[str, Any], pairs: tuple[tuple[str, str], ...], n_tokens: int,
              passthrough: bool) -> None:
        out = item.out
        out.kept += 1
        out.turns[len(pairs)] += 1
        out.chars.append(sum([len(c) for _, c in pairs]))
        if n_tokens >= 0:
            out.tokens.append(n_tokens)
        if out.fh is None:
            return
        if passthrough and item.raw is not None:
            if len(item.line) == len(item.raw) + 1:  # the line as read, newline and all
                out.fh.write(item.line)
                return
            out.fh.write(item.raw)
        else:
            out.fh.write(dumps_row(row))
        out.fh.write(b"\n")
