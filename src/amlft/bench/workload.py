"""What a benchmark sends: a fixed list of conversations, so results compare across commits.

Either `--prompts FILE` or a seeded sample of a prepared `test_gen` split (the run's
invoke split, else the shipped sample). Request i always sends conversation i mod n,
and the workload's sha256 goes into every report: same hash, same requests.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amlft.errors import DataError
from amlft.serving import ContractError, validate_messages

DEFAULT_SAMPLE = 64
SAMPLE_SEED = 0


@dataclass
class Workload:
    conversations: list[list[dict[str, str]]]
    source: str

    @property
    def sha256(self) -> str:
        blob = json.dumps(self.conversations, sort_keys=True, ensure_ascii=False).encode("utf-8")
        return hashlib.sha256(blob).hexdigest()

    def messages(self, index: int) -> list[dict[str, str]]:
        return self.conversations[index % len(self.conversations)]

    def describe(self) -> dict[str, Any]:
        lengths = [sum(len(m["content"]) for m in c) for c in self.conversations]
        return {"source": self.source, "conversations": len(self.conversations), "sha256": self.sha256,
                "prompt_chars_mean": round(sum(lengths) / len(lengths), 1)}


def load_prompts(path_str: str) -> Workload:
    """A JSON list (or JSONL) of prompts: strings, message lists, {"messages": [...]} or {"prompt": "..."}."""
    path = Path(path_str)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"--prompts {path}: cannot read it ({exc.strerror or exc}).",
                        hint="Give a JSON file holding a list of prompts.") from exc
    stripped = text.strip()
    if not stripped:
        raise DataError(f"--prompts {path} is empty.", hint='e.g. ["What is LoRA?", "Write a haiku about GPUs."]')
    if path.suffix.lower() == ".jsonl":
        items = [(f"line {n}", _json_line(path, n, line)) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    else:
        try:
            raw = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise DataError(f"--prompts {path} is not valid JSON: {exc}",
                            hint="A JSON list of prompts, or use a .jsonl file with one per line.") from exc
        if isinstance(raw, dict) and isinstance(raw.get("prompts"), list):
            raw = raw["prompts"]
        if not isinstance(raw, list) or not raw:
            raise DataError(f"--prompts {path} must hold a non-empty JSON list.",
                            hint='e.g. ["What is LoRA?", {"messages": [{"role": "user", "content": "Hi"}]}]')
        items = [(f"item {i}", item) for i, item in enumerate(raw)]
    conversations = [to_conversation(item, f"--prompts {path}, {where}") for where, item in items]
    return Workload(conversations, f"prompts file {path.name}")


def sample_split(path: Path, *, n: int = DEFAULT_SAMPLE, seed: int = SAMPLE_SEED, source: str | None = None) -> Workload:
    """A seeded sample of a chat JSONL split (same file + seed = same workload)."""
    lines = [(i, line) for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
    if not lines:
        raise DataError(f"{path} holds no rows to sample prompts from.", hint="Pass --prompts FILE.")
    picked = sorted(random.Random(seed).sample(lines, min(n, len(lines))))
    conversations = [to_conversation(_json_line(path, i, line), f"{path}, line {i}") for i, line in picked]
    return Workload(conversations, source or f"{len(conversations)} rows sampled (seed {seed}) from {path.name}")


def default_workload(record: Any | None) -> Workload:
    """No --prompts: the run's prepared invoke (test_gen) split, else the shipped sample's test_gen."""
    if record is not None:
        data = record.output("data")
        for key in ("invoke_file", "test_file"):
            f = data.get(key)
            if f and Path(f).exists():
                return sample_split(Path(f), source=f"sample (seed {SAMPLE_SEED}) of run {record.run_id}'s {key}")
    from amlft.resources import sample_chat_dir

    shipped = sample_chat_dir() / "test_gen.jsonl"
    if shipped.exists():
        return sample_split(shipped, source=f"sample (seed {SAMPLE_SEED}) of the shipped test_gen split")
    raise DataError("No prompts to send: no --prompts file and no prepared test_gen split.",
                    hint="Pass --prompts prompts.json (a JSON list of prompts), or bench a run that ran `amlft data`.")


def to_conversation(item: Any, where: str) -> list[dict[str, str]]:
    """Normalise one prompt entry; a trailing assistant turn is dropped so the model has something to answer."""
    if isinstance(item, str):
        msgs: Any = [{"role": "user", "content": item}]
    elif isinstance(item, dict) and "messages" in item:
        msgs = item["messages"]
    elif isinstance(item, dict) and isinstance(item.get("prompt"), str):
        msgs = [{"role": "user", "content": item["prompt"]}]
    else:
        msgs = item
    if isinstance(msgs, list) and len(msgs) == 1 and isinstance(msgs[0], list):
        msgs = msgs[0]
    try:
        conv = validate_messages(msgs, "messages")
    except ContractError as exc:
        raise DataError(f"{where}: {exc}.",
                        hint='Each prompt is a string, a list of {"role", "content"} messages, '
                             'or {"messages": [...]}.') from exc
    while len(conv) > 1 and conv[-1]["role"] == "assistant":
        conv.pop()
    if conv[-1]["role"] == "assistant":
        raise DataError(f"{where}: the conversation holds only an assistant turn.",
                        hint="End each conversation with a user message.")
    return conv


def _json_line(path: Path, n: int, line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}, line {n}: not valid JSON ({exc.msg}).",
                        hint="One JSON object per line (JSONL).") from exc
