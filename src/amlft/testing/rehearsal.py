"""`--rehearse`: the in-process fake that the Azure backend talks to instead of Azure.

The fake keeps its world in `<state_dir>/rehearsal/fake-state.json`, so `submit` in one
process and `wait` in the next see the same job, as two GitHub Actions jobs would. It
stays active for the whole process (not per step) because `invoke` posts to the
scoring URI from shared code outside the backend; it stops at exit, or via `stop_all()`.

The backend never imports this module (backends may not depend on testing): the CLI,
or a library user, calls `install()`, which plugs `ensure_fake` into the backend's
seam `amlft.backends.azure.rehearsal`.
"""

from __future__ import annotations

import atexit
from pathlib import Path
from typing import Any

from amlft.records import state_dir

_ACTIVE: dict[str, Any] = {}


def fake_state_path(root: Path | None = None) -> Path:
    return (root or state_dir()) / "rehearsal" / "fake-state.json"


def ensure_fake(faults: list[str] | tuple[str, ...] = (), *, root: Path | None = None) -> Any:
    """The started fake for this state directory, with exactly `faults` active."""
    from amlft.errors import ConfigError
    from amlft.testing.fake_azure import FAULTS, FakeAzureML

    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        raise ConfigError(f"Unknown fault(s): {', '.join(unknown)}.", hint=f"Choose from: {', '.join(FAULTS)}.")
    path = fake_state_path(root)
    key = str(path.resolve()) if path.exists() else str(path.absolute())
    fake = _ACTIVE.get(key)
    if fake is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fake = FakeAzureML(path)
        fake.start()
        _ACTIVE[key] = fake
    current = set(fake.faults)
    for name in current - set(faults):
        fake.remove_fault(name)
    for name in faults:
        if name not in current:
            fake.add_fault(name)
    return fake


def stop_all() -> None:
    """Stop every fake this process started (tests call this between cases)."""
    while _ACTIVE:
        _, fake = _ACTIVE.popitem()
        fake.stop()


def install() -> None:
    """Let `--rehearse` runs of the Azure backend use this process's fake."""
    from amlft.backends.azure import rehearsal

    rehearsal.install_provider(ensure_fake, state_path=fake_state_path)


atexit.register(stop_all)
