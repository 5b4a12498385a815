"""Where rows come from: a Hugging Face dataset id, or local files (one file or a folder).

Every source is turned into named splits, each an iterator of (position, item):
- JSON Lines files yield the raw line bytes, so `prepare` can stream them with the
  plain `json` module and pass already-valid rows through untouched (the fast path);
- everything else (JSON arrays, parquet, CSV, hub datasets) yields parsed objects.

A folder's files are splits named after them (`train_sft.jsonl` -> train_sft; the hub's
`data/train_sft-00000-of-00001.parquet` layout works too). A single file is one split.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amlft.errors import DataError
from amlft.extras import require

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SHARD = re.compile(r"^(?P<split>.+?)-\d{5}-of-\d{5}$")
SAMPLE_SOURCES = ("amlft:sample_chat", "amlft:sample", "sample")  # profile aliases for the shipped dataset


@dataclass
class SplitSource:
    """One split of a source. `rows()` yields (position, bytes-line or object)."""

    name: str
    origin: str  # a file path, or "hub-id[split]", shown in every message about a row
    kind: str  # jsonl | json | parquet | csv | hub
    paths: list[Path] = field(default_factory=list)
    loader: Callable[[], Any] | None = None  # hub: returns a datasets.Dataset
    position: str = "line"  # what the position counts: "line" (text files) or "row"

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.paths)

    def rows(self) -> Iterator[tuple[str, int, Any]]:
        """(file, position, item) for every row, in file order."""
        if self.kind == "hub":
            yield from _hub_rows(self)
            return
        for path in self.paths:
            if self.kind == "jsonl":
                yield from _jsonl_rows(path)
            elif self.kind == "json":
                yield from _json_rows(path)
            elif self.kind == "parquet":
                yield from _parquet_rows(path)
            elif self.kind == "csv":
                yield from _csv_rows(path)

    def count(self) -> int:
        """Rows in the split (blank lines excluded) - needed for --split-pc and sampling."""
        if self.kind == "hub":
            return len(self.loader())  # type: ignore[misc]
        if self.kind == "parquet":
            pq = require("pyarrow.parquet", extra="data", purpose="Reading parquet files")
            return sum(pq.ParquetFile(p).metadata.num_rows for p in self.paths)
        if self.kind == "jsonl":
            n = 0
            for p in self.paths:
                with open(p, "rb", buffering=1 << 20) as fh:
                    n += sum(1 for line in fh if line.strip() and line.strip() != b"\xef\xbb\xbf")
            return n
        return sum(1 for _ in self.rows())


# ------------------------------------------------------------------ readers
def _jsonl_rows(path: Path) -> Iterator[tuple[str, int, Any]]:
    name = str(path)
    with open(path, "rb", buffering=1 << 20) as fh:
        for lineno, line in enumerate(fh, 1):
            yield name, lineno, line


def _is_json_array(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")


def _json_rows(path: Path) -> Iterator[tuple[str, int, Any]]:
    """A .json file holding one array (loaded whole: JSON arrays cannot be streamed with `json`)."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: not a valid JSON document ({exc}).",
                        hint="Use JSON Lines (one object per line) to get per-row errors.") from exc
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of rows, got {type(data).__name__}.",
                        hint="Write one object per line (.jsonl) or an array of objects.")
    for i, row in enumerate(data, 1):
        yield str(path), i, row


def _parquet_rows(path: Path) -> Iterator[tuple[str, int, Any]]:
    pq = require("pyarrow.parquet", extra="data", purpose="Reading parquet files")
    i = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            i += 1
            yield str(path), i, row


def _csv_rows(path: Path) -> Iterator[tuple[str, int, Any]]:
    """CSV cells are strings; a cell holding a JSON list (messages, conversations) is parsed."""
    csv.field_size_limit(1 << 30)
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        start = reader.line_num + 1
        for row in reader:
            out: dict[str, Any] = {}
            for k, v in row.items():
                if isinstance(v, str) and v[:1] in "[{" and k is not None:
                    with contextlib.suppress(ValueError):
                        v = json.loads(v)
                out[k] = v
            yield str(path), start if start > 1 else reader.line_num, out
            start = reader.line_num + 1


def _hub_rows(split: SplitSource) -> Iterator[tuple[str, int, Any]]:
    ds = split.loader()  # type: ignore[misc]
    i = 0
    for batch in ds.with_format("arrow").iter(batch_size=1024):
        for row in batch.to_pylist():
            i += 1
            yield split.origin, i, row


# ------------------------------------------------------------------ resolving a source
def is_hub_id(source: str) -> bool:
    return not Path(source).exists() and bool(_HUB_ID.match(source)) and Path(source).suffix not in LOCAL_SUFFIXES


def hub_offline_mode() -> bool:
    """The user told the HF libraries to work from their cache only."""
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_reachable(timeout: float = 3.0) -> bool:
    """Can this process reach the Hugging Face Hub? (offline mode says no without asking.)"""
    if hub_offline_mode():
        return False
    from urllib.parse import urlsplit

    url = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout).close()
    except OSError:
        return False
    return True


def _kind_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".json":
        return "json" if _is_json_array(path) else "jsonl"
    return suffix.lstrip(".")


def local_splits(source: str | Path, *, single_name: str | None = None) -> list[SplitSource]:
    """Splits of a local file or folder. A single file is one split named `single_name`
    (default: the file's stem)."""
    root = Path(source)
    if not root.exists():
        raise DataError(f"Data source {root} does not exist.",
                        hint="Give a .jsonl/.json/.parquet/.csv file, a folder of them, or a Hugging Face "
                             "dataset id such as HuggingFaceH4/ultrachat_200k.")
    if root.is_file():
        if root.suffix.lower() not in LOCAL_SUFFIXES:
            raise DataError(f"{root}: unsupported file type {root.suffix or '(none)'}.",
                            hint=f"Use one of {', '.join(LOCAL_SUFFIXES)}.")
        kind = _kind_of(root)
        return [SplitSource(name=single_name or root.stem, origin=str(root), kind=kind, paths=[root],
                            position="line" if kind in ("jsonl", "csv") else "row")]
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in LOCAL_SUFFIXES
                   and not p.name.startswith(".") and p.name not in ("report.json", "rejected.jsonl"))
    if not files:
        raise DataError(f"{root} holds no {', '.join(LOCAL_SUFFIXES)} files.",
                        hint="Point at the data file itself, or a folder of split files such as train_sft.jsonl.")
    groups: dict[str, list[Path]] = {}
    for p in files:
        m = _SHARD.match(p.stem)
        groups.setdefault(m.group("split") if m else p.stem, []).append(p)
    splits = []
    for name, paths in groups.items():
        kinds = {_kind_of(p) for p in paths}
        if len(kinds) > 1:
            raise DataError(f"{root}: split {name!r} mixes file types ({', '.join(sorted(kinds))}).",
                            hint="Keep one file type per split.")
        kind = kinds.pop()
        splits.append(SplitSource(name=name, origin=str(paths[0] if len(paths) == 1 else root / name), kind=kind,
                                  paths=paths, position="line" if kind in ("jsonl", "csv") else "row"))
    return splits


def hub_split_names(dataset_id: str) -> list[str]:
    datasets = require("datasets", extra="data", purpose="Loading a Hugging Face dataset")
    try:
        return list(datasets.get_dataset_split_names(dataset_id))
    except Exception as exc:
        raise DataError(f"Could not list the splits of {dataset_id} on the Hugging Face Hub: {exc}",
                        hint="Check the dataset id and your network (and HF_TOKEN for gated datasets), "
                             "or use a local file.") from exc


def load_hub_split(dataset_id: str, split: str, split_pc: float | None) -> Any:
    """A hub split, cut to its first N% exactly as the reference helper does
    (`load_dataset(id, split=f"{split}[:{N}%]")`, datasets' 'closest' rounding)."""
    datasets = require("datasets", extra="data", purpose="Loading a Hugging Face dataset")
    if split_pc is None or split_pc >= 100:
        spec = split
    elif float(split_pc).is_integer():
        spec = f"{split}[:{int(split_pc)}%]"
    else:  # datasets' slice syntax takes whole percents only; same rounding, by hand
        spec = split
    try:
        ds = datasets.load_dataset(dataset_id, split=spec)
    except Exception as exc:
        raise DataError(f"Could not load {dataset_id} split {spec!r}: {exc}",
                        hint="Check the dataset id, split names and your network, or use a local file.") from exc
    if spec == split and split_pc is not None and split_pc < 100:
        ds = ds.select(range(first_pc(len(ds), split_pc)))
    return ds


def first_pc(n: int, pc: float) -> int:
    """How many rows `[:pc%]` keeps: datasets' `_pct_to_abs_closest`."""
    return round(pc * n / 100.0)


def hub_splits(dataset_id: str, *, wanted: list[str] | None, split_pc: float | None) -> list[SplitSource]:
    available = hub_split_names(dataset_id)
    missing = [s for s in (wanted or []) if s not in available]
    if missing:  # a typo in a split name must not silently train on less data
        raise DataError(f"{dataset_id} has no split(s) {', '.join(missing)} (it has {', '.join(available)}).",
                        hint="Set data.train_split/test_split/validation_split (or --split) to existing split names.")
    names = list(wanted or available)
    out = []
    for name in names:
        cache: dict[str, Any] = {}

        def loader(name: str = name, cache: dict[str, Any] = cache) -> Any:
            if "ds" not in cache:
                cache["ds"] = load_hub_split(dataset_id, name, split_pc)
            return cache["ds"]

        origin = f"{dataset_id}[{name}]" if not split_pc or split_pc >= 100 else f"{dataset_id}[{name}][:{split_pc:g}%]"
        out.append(SplitSource(name=name, origin=origin, kind="hub", loader=loader, position="row"))
    return out
