"""What one lifecycle step is given: the validated profile, the run's journal, where to talk.

It lives below the backends (core layer) so shared step code such as `amlft.data.step`
can take it without importing any backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from amlft.config import Profile
from amlft.console import Console
from amlft.records import RunRecord

__all__ = ["StepContext"]


@dataclass
class StepContext:
    """The profile, the run record and the console of one command, plus two explicit slots.

    - `options`: this command's flags that change how a step behaves (e.g. `keep_on_failure`
      for deploy). Read-only for backends; never a cache.
    - `session`: the backend's connection for this command (the Azure backend keeps its
      credential + MLClients here), opened on first use and shared by the steps of one
      command, so `amlft run` authenticates once.
    """

    profile: Profile
    record: RunRecord
    console: Console
    rehearse: bool = False
    faults: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    session: Any = None
