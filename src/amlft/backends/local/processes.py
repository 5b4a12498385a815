"""The local backend's detached processes (training, scoring server): are they alive, and stop them.

Both outlive the command that started them, like an Azure job or endpoint, so they are
found again by pid from the run record. Two traps this module exists to avoid:
- a child that exited but was not reaped is a zombie, which still "exists" to kill(pid, 0);
- a recorded pid may have been reused by an unrelated process, which must never be signalled
  (we check, with psutil, that the process really runs our module).
"""

from __future__ import annotations

import subprocess
import time

import psutil

__all__ = ["is_running", "runs_module", "terminate", "track"]

# Children this process started: polling them reaps them once they exit.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def track(proc: subprocess.Popen[bytes]) -> None:
    """Remember a child so it is reaped (not left a zombie) when it exits."""
    _CHILDREN[proc.pid] = proc


def runs_module(pid: int, module: str) -> bool:
    """Whether pid runs `python -m module` (True when the OS will not tell us: trust the record)."""
    try:
        return module in psutil.Process(pid).cmdline()
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def is_running(pid: int | None, *, module: str | None = None) -> bool:
    """True if pid is alive, not a zombie, and (with module) really runs that module."""
    if not pid:
        return False
    proc = _CHILDREN.get(pid)
    if proc is not None and proc.poll() is not None:
        del _CHILDREN[pid]
        return False
    try:
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return False
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
    return module is None or runs_module(pid, module)


def terminate(pid: int, *, module: str, timeout_s: float = 10.0) -> bool:
    """SIGTERM (our processes drain or checkpoint on it), SIGKILL after timeout_s.

    Returns whether it was running. Safe to repeat, and for a pid that is long gone.
    """
    if not is_running(pid, module=module):
        return False
    try:
        proc = psutil.Process(pid)
        proc.terminate()
    except psutil.NoSuchProcess:
        return True
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not is_running(pid):
            return True
        time.sleep(0.05)
    try:
        proc.kill()
    except psutil.NoSuchProcess:
        return True
    for _ in range(100):
        if not is_running(pid):
            break
        time.sleep(0.05)
    return True
