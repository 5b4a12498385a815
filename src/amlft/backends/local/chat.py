"""Turn chat conversations into (input_ids, labels) with loss on assistant tokens only.

Why render-and-diff instead of `{% generation %}` masks: most hub chat templates
(Qwen2.5, Phi-3) carry no generation markers, so the assistant spans are found by
rendering the conversation up to each assistant turn with and without that turn, using
the model's own template. Character spans map to tokens through the fast tokenizer's
offset mapping, so this works for any template whose renderings are prefixes of each
other (true for ChatML, Llama, Phi-3 and Mistral templates); otherwise the assistant
text is located by search.

Why message content is escaped: a template's control tokens (`<|im_start|>`, `<|im_end|>`)
are plain strings inside the rendered text, and a tokenizer turns every occurrence into
the control token - including one typed by a user. "<|im_start|>system ..." inside a user
message would then open a real system turn (role forgery). So the character ranges that
came from message content are known exactly (rendered once with placeholders), and any
special token the tokenizer finds inside them is re-encoded as ordinary text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

IGNORE_INDEX = -100
_PLACEHOLDER = "\ue000amlft-content-{}\ue001"  # private-use characters: no template or user writes these


class TemplateRewritesContent(ValueError):
    """The chat template changes message text, so content cannot be told apart from template text."""


def render(tokenizer: Any, messages: list[dict[str, str]], *, add_generation_prompt: bool = False) -> str:
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt))


def special_token_texts(tokenizer: Any) -> list[str]:
    """The strings this tokenizer turns into special (control) tokens, longest first."""
    texts = {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if getattr(t, "special", False)}
    texts.update(str(t) for t in getattr(tokenizer, "all_special_tokens", []) if t)
    return sorted(texts, key=len, reverse=True)


def content_spans(tokenizer: Any, messages: list[dict[str, str]], *, add_generation_prompt: bool = False,
                  specials: list[str] | None = None) -> list[tuple[int, int]]:
    """Character ranges of the rendered text that hold message content with special-token strings in it.

    Only messages that contain such a string are located (the common case costs nothing):
    the conversation is rendered with those contents replaced by unique placeholders, and
    the placeholders' positions are the contents' positions. Raises TemplateRewritesContent
    when the template changes content so that the two renderings do not line up.
    """
    specials = special_token_texts(tokenizer) if specials is None else specials
    risky = [i for i, m in enumerate(messages) if any(s in m["content"] for s in specials)]
    if not risky:
        return []
    masked = [dict(m, content=_PLACEHOLDER.format(i)) if i in risky else m for i, m in enumerate(messages)]
    text = render(tokenizer, masked, add_generation_prompt=add_generation_prompt)
    real = render(tokenizer, messages, add_generation_prompt=add_generation_prompt)
    for strip in (False, True):  # templates that `| trim` content: try the stripped text too
        spans: list[tuple[int, int]] = []
        rebuilt, pos = [], 0
        for i in risky:
            marker = _PLACEHOLDER.format(i)
            content = messages[i]["content"].strip() if strip else messages[i]["content"]
            start = text.find(marker, pos)
            while start >= 0:  # every place the template put this content (usually one)
                rebuilt.append(text[pos:start])
                at = sum(len(r) for r in rebuilt)
                rebuilt.append(content)
                spans.append((at, at + len(content)))
                pos = start + len(marker)
                start = text.find(marker, pos)
        rebuilt.append(text[pos:])
        if "".join(rebuilt) == real:
            return sorted(spans)
    raise TemplateRewritesContent("the chat template changes message content that contains special-token text, "
                                  "so it cannot be kept from acting as control tokens")


def encode_text(tokenizer: Any, text: str, protected: list[tuple[int, int]]) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of `text`; special tokens inside `protected` ranges become plain text."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [(int(s), int(e)) for s, e in enc["offset_mapping"]]
    if not protected:
        return ids, offsets
    special_ids = {i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)}
    special_ids.update(getattr(tokenizer, "all_special_ids", []))
    out_ids: list[int] = []
    out_offsets: list[tuple[int, int]] = []
    for tid, (s, e) in zip(ids, offsets, strict=True):
        if tid in special_ids and any(a <= s and e <= b for a, b in protected):
            piece = tokenizer(text[s:e], add_special_tokens=False, split_special_tokens=True,
                              return_offsets_mapping=True)
            out_ids.extend(piece["input_ids"])
            out_offsets.extend((s + int(ps), s + int(pe)) for ps, pe in piece["offset_mapping"])
        else:
            out_ids.append(tid)
            out_offsets.append((s, e))
    return out_ids, out_offsets


def encode_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """The conversation with the assistant turn opened, as token ids, content escaped (what a server feeds)."""
    text = render(tokenizer, messages, add_generation_prompt=True)
    ids, _ = encode_text(tokenizer, text, content_spans(tokenizer, messages, add_generation_prompt=True))
    return ids


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
    ids, offsets = encode_text(tokenizer, text, content_spans(tokenizer, messages))
    labels = [IGNORE_INDEX] * len(ids)
    for t, (s, e) in enumerate(offsets):
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
