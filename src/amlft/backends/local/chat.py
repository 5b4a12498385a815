"""Turn chat conversations into (input_ids, labels) with loss on assistant tokens only.

Why render-and-diff instead of `{% generation %}` masks: most hub chat templates
(Qwen2.5, Phi-3) carry no generation markers, so the assistant spans are found by
rendering the conversation up to each assistant turn with and without that turn, using
the model's own template. Character spans map to tokens through the fast tokenizer's
offset mapping, so this works for any template whose renderings are prefixes of each
other (true for ChatML, Llama, Phi-3 and Mistral templates); otherwise the assistant
text is located by search.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

IGNORE_INDEX = -100


def render(tokenizer: Any, messages: list[dict[str, str]], *, add_generation_prompt: bool = False) -> str:
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt))


def assistant_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans the model must learn to produce."""
    full = render(tokenizer, messages)
    spans: list[tuple[int, int]] = []
    search_from = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        upto = render(tokenizer, messages[: i + 1])
        if full.startswith(before) and full.startswith(upto) and len(upto) > len(before):
            spans.append((len(before), len(upto)))
            search_from = len(upto)
        else:  # template rewrites history (e.g. strips reasoning): fall back to locating the text
            start = full.find(m["content"], search_from)
            if start >= 0:
                end = start + len(m["content"])
                spans.append((start, end))
                search_from = end
    return full, spans


def encode_conversation(tokenizer: Any, messages: list[dict[str, str]], *,
                        max_seq_length: int) -> tuple[list[int], list[int]]:
    """Token ids and labels (-100 outside assistant turns), truncated to max_seq_length."""
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    for t, (s, e) in enumerate(enc["offset_mapping"]):
        if e <= s:
            continue
        for a, b in spans:
            if s < b and e > a:  # token overlaps an assistant span (incl. its end-of-turn marker)
                labels[t] = ids[t]
                break
    return ids[:max_seq_length], labels[:max_seq_length]


def read_conversations(path: Path) -> Iterator[list[dict[str, str]]]:
    """Messages of every row of a prepared chat JSONL file."""
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                yield [{"role": m["role"], "content": m["content"]} for m in row["messages"]]


def texts_of(conversations: Iterable[list[dict[str, str]]]) -> Iterator[str]:
    for conv in conversations:
        for m in conv:
            yield m["content"]
