"""Bytes in and out of the data step: parsing one JSONL line, writing rows, and publishing.

Kept apart from the engine (which decides what a row is worth) so the hot loop reads as
decisions, and every file this package writes goes through here. The one JSON document it
writes (report.json) goes through `amlft.records.atomic_write_json`, the project's single
atomic writer; split files are staged in a temporary folder and moved into place by
`publish`, report.json last, so its presence means the folder is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["BOM", "dumps_row", "iter_rows", "open_output", "parse_line", "publish", "remove_lines"]

BOM = b"\xef\xbb\xbf"
_scan_once = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # set in __init__, not in the stubs


def parse_line(text: str) -> Any:
    """json.loads without its two Python-level wrappers (this runs once per row)."""
    try:
        obj, end = _scan_once(text, 0)
    except StopIteration as exc:
        raise json.JSONDecodeError("Expecting value", text, exc.value) from None
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return obj


def dumps_row(row: dict[str, Any]) -> bytes:
    """One row as UTF-8 JSON (non-ASCII unescaped, as the reference data is written)."""
    try:
        return json.dumps(row, ensure_ascii=False, default=str).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a "\ud800" escape: keep it escaped
        return json.dumps(row, default=str).encode("ascii")


def open_output(path: Path) -> IO[bytes]:
    """A buffered binary file for one output split (closed by its owner)."""
    return open(path, "wb", buffering=1 << 20)


def remove_lines(path: Path, drop: dict[int, Any]) -> dict[int, bytes]:
    """Rewrite a (small, eval) split without the given 0-based lines; returns the removed lines.

    Only ever called on files in the staging folder, which `publish` moves into place."""
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


def publish(tmp: Path, out: Path, files: list[str]) -> None:
    """Move the finished files into `out`; report.json last, so its presence means complete.

    Split files a previous prepare left in `out` that this one did not write are removed."""
    out.mkdir(parents=True, exist_ok=True)
    old_report = out / "report.json"
    stale: set[str] = set()
    if old_report.exists():
        with contextlib.suppress(OSError, ValueError, AttributeError, KeyError, TypeError):
            splits = json.loads(old_report.read_text(encoding="utf-8"))["splits"].values()
            stale = {str(s.get("file")) for s in splits if s.get("file")}
        old_report.unlink()
    for name in files:
        os.replace(tmp / name, out / name)
    for name in stale - set(files):
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()
    os.replace(tmp / "report.json", out / "report.json")


def iter_rows(path: str | Path) -> Iterator[dict[str, Any]]:
    """Rows of a prepared JSONL file (for callers that read what prepare wrote)."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)
