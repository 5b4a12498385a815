"""The fake's world: one JSON document, persisted atomically under a file lock.

Why a file: `amlft submit --rehearse` and `amlft wait --rehearse` run in different
processes (as two jobs of a GitHub workflow would), and both must see the same job,
the same virtual clock and the same injected faults.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:  # POSIX advisory lock; on Windows the in-process lock is all we get.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class FakeState:
    """The state document plus how to load, lock and save it.

    `transaction()` reloads from disk under the lock (another process may have changed
    it), yields the dict to the caller, and writes it back atomically if it changed.
    """

    def __init__(self, path: Path | None, seed: dict[str, Any]) -> None:
        self.path = Path(path) if path is not None else None
        self._seed = seed
        self._mutex = threading.RLock()
        self.data: dict[str, Any] = copy.deepcopy(seed)
        if self.path is not None and self.path.exists():
            self.data = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.path is not None
        text = self.path.read_text(encoding="utf-8")
        return json.loads(text) if text.strip() else copy.deepcopy(self._seed)

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        if self.path is None or fcntl is None:
            yield
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[str, Any]]:
        with self._mutex, self._file_lock():
            if self.path is not None and self.path.exists():
                self.data = self._read()
            before = json.dumps(self.data, sort_keys=True)
            yield self.data
            if json.dumps(self.data, sort_keys=True) != before:
                self._write()

    def save(self) -> None:
        with self._mutex, self._file_lock():
            self._write()

    def _write(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self.data, handle, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
