"""How `prepare`/`validate` read, check and split: the options, named as in the profile's `data:`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from amlft.data.formats import FORMATS
from amlft.errors import DataError

__all__ = ["PrepareOptions"]


@dataclass
class PrepareOptions:
    """How to read, check and split. Field names match the profile's `data:` section."""

    format: str = "auto"
    columns: dict[str, str] = field(default_factory=dict)
    split_pc: float | None = None
    splits: list[str] | None = None  # hub: which splits to load (None: all)
    train_split: str = "train_sft"
    test_split: str = "test_sft"
    validation_split: str | None = None
    invoke_split: str | None = "test_gen"
    test_fraction: float | None = None
    sample: int | None = None
    seed: int = 42
    on_error: str = "fail"
    max_seq_length: int | None = None
    tokenizer: str | None = None
    drop_duplicates: bool = False
    drop_leakage: bool = False
    max_examples: int = 20  # problems kept in full for printing (the rest are only counted)

    def __post_init__(self) -> None:
        if self.format != "auto" and self.format not in FORMATS:
            raise DataError(f"Unknown data format {self.format!r}.", hint=f"Use auto or one of {', '.join(FORMATS)}.")
        if self.on_error not in ("fail", "skip"):
            raise DataError(f"on_error must be fail or skip, not {self.on_error!r}.")
        if self.max_seq_length and not self.tokenizer:
            raise DataError("--max-seq-length needs --tokenizer to count tokens.",
                            hint="Add --tokenizer with the model's hub id or a local tokenizer folder.")
        if self.test_fraction is not None and not 0 < self.test_fraction < 1:
            raise DataError(f"test_fraction must be between 0 and 1, not {self.test_fraction}.")
        if self.split_pc is not None and not 0 < self.split_pc <= 100:
            raise DataError(f"split_pc must be in (0, 100], not {self.split_pc}.")

    @classmethod
    def from_config(cls, cfg: Any, **overrides: Any) -> PrepareOptions:
        """From a profile's DataConfig (or any object with the same attributes)."""
        names = [f for f in cls.__dataclass_fields__ if f not in ("splits", "max_examples")]
        values = {n: getattr(cfg, n) for n in names if hasattr(cfg, n)}
        values["columns"] = dict(values.get("columns") or {})
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}
