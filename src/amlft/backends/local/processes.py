"""The local backend's detached processes (training, scoring server): are they alive, and stop them.

Both outlive the command that started them, like an Azure job or endpoint, so they are
found again by pid from the run record. Two traps this module exists to avoid:
- a child that exited but was not reaped is a zombie, which still answers kill(pid, 0);
- a recorded pid may have been reused by an unrelated process, which must never be signalled
  (where /proc tells, we check the process really runs our module).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

# Children this process started: polling them reaps them once they exit.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def track(proc: subprocess.Popen[bytes]) -> None:
    """Remember a child so it is reaped (not left a zombie) when it exits."""
    _CHILDREN[proc.pid] = proc


def runs_module(pid: int, module: str) -> bool:
    """Whether pid runs `python -m module` (True where there is no procfs, e.g. macOS: trust the record)."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.parent.exists():
        return True
    try:
        return module.encode() in cmdline.read_bytes()
    except OSError:
        return False


def is_running(pid: int | None, *, module: str | None = None) -> bool:
    """True if pid is alive, not a zombie, and (with module) really runs that module."""
    if not pid:
        return False
    proc = _CHILDREN.get(pid)
    if proc is not None and proc.poll() is not None:
        del _CHILDREN[pid]
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return module is None or runs_module(pid, module)


def terminate(pid: int, *, module: str, timeout_s: float = 10.0) -> bool:
    """SIGTERM (our processes drain or checkpoint on it), SIGKILL after timeout_s.

    Returns whether it was running. Safe to repeat, and for a pid that is long gone.
    """
    if not is_running(pid, module=module):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not is_running(pid):
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        if not is_running(pid):
            break
        time.sleep(0.05)
    return True
