"""Recognise and convert the chat data shapes people arrive with into one schema.

Target (what the Azure ML chat-completion components and the local trainer read):
    {"prompt": str, "prompt_id": str, "messages": [{"role": ..., "content": ..., <extra keys kept>}]}

Sources:
    ultrachat  {"prompt", "prompt_id", "messages"}       (HuggingFaceH4/ultrachat_200k)
    openai     {"messages": [...]}                       (OpenAI chat fine-tuning JSONL)
    alpaca     {"instruction", "input", "output"}        (instruction + input become the user turn)
    sharegpt   {"conversations": [{"from", "value"}]}    (human/gpt/system)
A column mapping (our field -> their field) renames fields first, so any of these
shapes with other field names is accepted too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from amlft.data.rules import RowProblem

FORMATS = ("ultrachat", "openai", "alpaca", "sharegpt")
MESSAGE_FIELDS = frozenset(("role", "content", "from", "value"))
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "system": "system"}


def detect_format(row: Any) -> str | None:
    """The format one row looks like, or None."""
    if not isinstance(row, dict):
        return None
    if "messages" in row:
        return "ultrachat" if ("prompt" in row or "prompt_id" in row) else "openai"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row and "output" in row:
        return "alpaca"
    return None


def detect_from_rows(rows: Iterable[Any]) -> tuple[str, str]:
    """(format, why) by majority over a few sample rows; raises ValueError with what it saw."""
    votes: dict[str, int] = {}
    seen_keys: set[str] = set()
    for row in rows:
        fmt = detect_format(row)
        if isinstance(row, dict):
            seen_keys.update(map(str, row))
        if fmt:
            votes[fmt] = votes.get(fmt, 0) + 1
    if not votes:
        keys = ", ".join(sorted(seen_keys)[:12]) or "no JSON objects"
        raise ValueError(f"could not recognise the data format (fields seen: {keys})")
    fmt = max(votes, key=lambda f: votes[f])
    why = {"ultrachat": "rows have messages + prompt/prompt_id",
           "openai": "rows have messages only",
           "sharegpt": "rows have conversations",
           "alpaca": "rows have instruction + output"}[fmt]
    return fmt, f"{why} ({votes[fmt]} of {sum(votes.values())} sampled rows)"


def parse_columns(items: Iterable[str]) -> dict[str, str]:
    """`our=theirs` flags -> {our: theirs}."""
    out: dict[str, str] = {}
    for item in items:
        our, sep, theirs = item.partition("=")
        if not sep or not our.strip() or not theirs.strip():
            raise ValueError(f"--column {item!r} must look like our_field=their_field, e.g. messages=dialog")
        out[our.strip()] = theirs.strip()
    return out


def apply_columns(row: dict[str, Any], columns: Mapping[str, str]) -> dict[str, Any]:
    """Rename their fields to ours, on the row and (for role/content/from/value) on each message."""
    top = {our: theirs for our, theirs in columns.items() if our not in MESSAGE_FIELDS}
    per_msg = {our: theirs for our, theirs in columns.items() if our in MESSAGE_FIELDS}
    if top:
        row = dict(row)
        for our, theirs in top.items():
            if theirs in row and our != theirs:
                row[our] = row.pop(theirs)
    if per_msg:
        for list_key in ("messages", "conversations"):
            msgs = row.get(list_key)
            if isinstance(msgs, list):
                new = []
                for m in msgs:
                    if isinstance(m, dict):
                        m = dict(m)
                        for our, theirs in per_msg.items():
                            if theirs in m and our != theirs:
                                m[our] = m.pop(theirs)
                    new.append(m)
                row = dict(row)
                row[list_key] = new
    return row


def _first_user(messages: Any) -> str | None:
    if isinstance(messages, list):
        for m in messages:
            if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str):
                return m["content"]
    return None


def to_chat(row: dict[str, Any], fmt: str) -> tuple[dict[str, Any] | None, list[RowProblem]]:
    """Convert one object row to the target schema.

    Returns (row, problems). Problems here are the ones that stop conversion (a field the
    format needs is missing); the conversation rules are checked afterwards on the result.
    """
    if fmt in ("ultrachat", "openai"):
        if "messages" not in row:
            return None, [RowProblem("messages_missing", "messages")]
        out: dict[str, Any] | None = dict(row)
        problems: list[RowProblem] = []
    elif fmt == "alpaca":
        out, problems = _from_alpaca(row)
    elif fmt == "sharegpt":
        out, problems = _from_sharegpt(row)
    else:  # pragma: no cover - guarded by the CLI choices
        raise ValueError(f"unknown format {fmt!r}")
    if out is None:
        return None, problems
    return _ordered(out), []


def _from_alpaca(row: dict[str, Any]) -> tuple[dict[str, Any] | None, list[RowProblem]]:
    """instruction (+ input) -> user, output -> assistant, optional system first."""
    problems = [RowProblem("field_missing", f, "alpaca") for f in ("instruction", "output") if not isinstance(row.get(f), str)]
    extra = row.get("input")
    if extra is not None and not isinstance(extra, str):
        problems.append(RowProblem("field_missing", "input", "alpaca: not a string"))
    if problems:
        return None, problems
    user = row["instruction"] if not extra or extra.isspace() else f"{row['instruction']}\n\n{extra}"
    messages = []
    if isinstance(row.get("system"), str) and row["system"].strip():
        messages.append({"role": "system", "content": row["system"]})
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
    out = {k: v for k, v in row.items() if k not in ("instruction", "input", "output", "system")}
    out["messages"] = messages
    return out, []


def _from_sharegpt(row: dict[str, Any]) -> tuple[dict[str, Any] | None, list[RowProblem]]:
    """conversations [{from, value}] -> messages [{role, content}] (other keys kept)."""
    conv = row.get("conversations")
    if conv is None:
        return None, [RowProblem("messages_missing", "conversations")]
    if not isinstance(conv, list):
        return None, [RowProblem("messages_not_list", "conversations", type(conv).__name__)]
    messages = []
    for turn in conv:
        if not isinstance(turn, dict):
            messages.append(turn)  # reported by the rules as message_not_object
            continue
        msg = {k: v for k, v in turn.items() if k not in ("from", "value")}
        speaker = turn.get("from")
        msg["role"] = SHAREGPT_ROLES.get(speaker, speaker) if isinstance(speaker, str) else speaker
        msg["content"] = turn.get("value")
        messages.append(msg)
    out = {k: v for k, v in row.items() if k != "conversations"}
    out["messages"] = messages
    return out, []


def _ordered(out: dict[str, Any]) -> dict[str, Any]:
    """The target schema, in the order the reference data uses: prompt, prompt_id, messages, rest."""
    prompt = out.get("prompt")
    if not isinstance(prompt, str):
        prompt = _first_user(out["messages"])
    ordered: dict[str, Any] = {}
    if prompt is not None:
        ordered["prompt"] = prompt
    pid = out.get("prompt_id")
    # a missing id is filled in with a hash of the conversation once it has been validated
    ordered["prompt_id"] = pid if isinstance(pid, str) and pid else None
    ordered["messages"] = out["messages"]
    for k, v in out.items():
        if k not in ordered:
            ordered[k] = v
    return ordered


def strip_null_message_keys(messages: Any) -> Any:
    """Columnar sources (parquet, hub datasets) give every message every key seen in the
    column, filling the absent ones with null; drop those so rows round-trip as written."""
    if not isinstance(messages, list):
        return messages
    out = []
    for m in messages:
        if isinstance(m, dict) and any(v is None for k, v in m.items() if k not in ("role", "content")):
            m = {k: v for k, v in m.items() if v is not None or k in ("role", "content")}
        out.append(m)
    return out
