"""The seam through which `--rehearse` swaps Azure for an in-process fake.

The backend may not depend on `amlft.testing` (dependencies flow cli -> lifecycle ->
backends -> core, and testing sits on top), so the fake is *installed* here from above:
`amlft.testing.rehearsal.install()`, which the CLI calls for a rehearsed run. A provider
is any callable `(faults, *, root) -> fake` whose fake has `credential`,
`subscription_id`, `resource_group` and `workspace_name`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

NOTICE = ("REHEARSAL: talking to amlft's in-process Azure ML fake (state {path}); "
          "nothing here touches Azure or costs money.")

_provider: Callable[..., Any] | None = None
_state_path: Callable[[Path | None], Path] | None = None


def install_provider(provider: Callable[..., Any], *, state_path: Callable[[Path | None], Path]) -> None:
    global _provider, _state_path
    _provider, _state_path = provider, state_path


def fake_for(faults: list[str] | tuple[str, ...], *, root: Path | None) -> tuple[Any, Path]:
    """The installed provider's fake for this state directory, and where it keeps its world."""
    from amlft.errors import ConfigError

    if _provider is None or _state_path is None:
        raise ConfigError(
            "--rehearse needs amlft's in-process Azure ML fake, and none is installed in this process.",
            hint="Install it with `pip install 'amlft[rehearse]'`; from Python, call "
                 "`amlft.testing.rehearsal.install()` before running a rehearsed step.")
    return _provider(faults, root=root), _state_path(root)
