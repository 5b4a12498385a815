"""Chat fine-tuning data: load, convert, validate, split and write chat JSONL.

    from amlft.data import prepare, validate_path, PrepareOptions
    result = prepare("HuggingFaceH4/ultrachat_200k", "out/", PrepareOptions(split_pc=5))
    result.file("train"), result.report["totals"], result.data_hash

Light to import (no datasets/pyarrow/transformers until a source needs them).
"""

from __future__ import annotations

from amlft.data.preparer import (
    PrepareOptions,
    PrepareResult,
    ValidationResult,
    format_problems,
    iter_rows,
    prepare,
    validate_path,
)
from amlft.data.rules import REASONS, check_messages

__all__ = [
    "REASONS",
    "PrepareOptions",
    "PrepareResult",
    "ValidationResult",
    "check_messages",
    "format_problems",
    "iter_rows",
    "prepare",
    "validate_path",
]
