"""Terminal output with one switch for CI: in --json mode, stdout carries exactly one JSON
document (the command's result) and all human chatter goes to stderr.

`rich` is imported lazily (it costs ~100 ms) so `amlft --help` stays instant.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = ["Console"]


class Console:
    def __init__(self, *, json_mode: bool = False, quiet: bool = False) -> None:
        self.json_mode = json_mode
        self.quiet = quiet
        self._result: dict[str, Any] = {}

    # chatter -----------------------------------------------------------------
    @property
    def _stream(self) -> Any:
        return sys.stderr if self.json_mode else sys.stdout

    def info(self, message: str) -> None:
        if not self.quiet:
            print(message, file=self._stream, flush=True)

    def step(self, message: str) -> None:
        """A lifecycle step heading."""
        self.info(f"==> {message}")

    def warn(self, message: str) -> None:
        print(f"warning: {message}", file=sys.stderr, flush=True)

    def error(self, message: str) -> None:
        print(f"error: {message}", file=sys.stderr, flush=True)

    def table(self, rows: Sequence[dict[str, Any]], *, title: str | None = None,
              columns: Sequence[str] | None = None) -> None:
        """A plain aligned table (works in CI logs and without a TTY)."""
        if self.quiet or not rows:
            return
        cols = list(columns or rows[0].keys())
        cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
        out = self._stream
        if title:
            print(title, file=out)
        print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)), file=out)
        print("  ".join("-" * w for w in widths), file=out)
        for row in cells:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)), file=out)
        out.flush()

    @contextmanager
    def progress(self, description: str, *, total: float | None = None, unit: str = "") -> Iterator[Any]:
        """A live progress bar on a TTY; periodic plain lines otherwise (CI logs stay readable)."""
        if self.quiet:
            yield _NullProgress()
            return
        from rich.console import Console as RichConsole
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        rc = RichConsole(file=self._stream)
        # MofNCompleteColumn copes with total=None (shows "?"): waits often don't know their length yet.
        cols = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
                TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}")]
        with Progress(*cols, console=rc, transient=False, disable=not rc.is_terminal) as prog:
            task = prog.add_task(description, total=total, status="")
            handle = _Progress(prog, task, self if not rc.is_terminal else None, description)
            yield handle

    # result ------------------------------------------------------------------
    def result(self, **values: Any) -> None:
        """Accumulate the command's machine-readable result (printed once at exit in --json mode)."""
        self._result.update(values)

    def emit_result(self) -> None:
        if self.json_mode:
            json.dump(self._result, sys.stdout, indent=2, default=str, ensure_ascii=False)
            sys.stdout.write("\n")
            sys.stdout.flush()


class _NullProgress:
    def update(self, completed: float | None = None, *, advance: float | None = None, status: str = "",
               total: float | None = None) -> None:
        pass


class _Progress:
    """Wraps a rich task; without a TTY prints a line at most every 10% / status change."""

    def __init__(self, prog: Any, task: Any, plain: Console | None, description: str) -> None:
        self._prog, self._task, self._plain, self._desc = prog, task, plain, description
        self._last_line = ""
        self._last_decile = -1

    def update(self, completed: float | None = None, *, advance: float | None = None, status: str = "",
               total: float | None = None) -> None:
        kw: dict[str, Any] = {"status": status}
        if completed is not None:
            kw["completed"] = completed
        if advance is not None:
            kw["advance"] = advance
        if total is not None:
            kw["total"] = total
        self._prog.update(self._task, **kw)
        if self._plain is not None:
            t = self._prog.tasks[0]
            decile = int(10 * t.completed / t.total) if t.total else -1
            line = f"{self._desc}: {t.completed:.0f}/{t.total or '?'} {status}".rstrip()
            if decile != self._last_decile or (status and status not in self._last_line):
                self._plain.info(line)
                self._last_line, self._last_decile = line, decile


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
