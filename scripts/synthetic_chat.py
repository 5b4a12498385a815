"""Ultrachat-shaped synthetic chat data for benchmarks (not for training anything useful).

Same schema as HuggingFaceH4/ultrachat_200k (`prompt`, `prompt_id` = sha256(prompt),
`messages` alternating user/assistant, ending with assistant) and a similar size
distribution: 1-8 exchanges (mean ~3.3), short user turns, long assistant turns, about
6.7 KB of JSON per row, with some typographic non-ASCII text as in the real data.
Built from a seeded pool of sentences so a million rows generate in seconds.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_SYLLABLES = ("ba", "ko", "ri", "tan", "mel", "so", "quo", "ver", "lin", "da", "pre", "ex", "str", "um",
              "ga", "ne", "tho", "ric", "al", "po", "sen", "ti", "mo", "cal", "fer", "ap", "ion", "es")
_EXTRAS = ("“quoted”", "café", "naïve", "—", "résumé", "…", "°C", "€", "👍", "’s")
_PAIR_WEIGHTS = (24, 22, 18, 13, 9, 7, 4, 3)  # 1..8 exchanges


def _pool(rng: random.Random, n_sentences: int = 20_000) -> tuple[list[str], list[str]]:
    words = ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
    pool = []
    for _ in range(n_sentences):
        ws = rng.choices(words, k=rng.randint(6, 22))
        if rng.random() < 0.08:
            ws.insert(rng.randrange(len(ws)), rng.choice(_EXTRAS))
        pool.append(" ".join(ws).capitalize() + rng.choice(".....?!"))
    return pool, words


def _text(rng: random.Random, pool: list[str], mean_chars: float) -> str:
    # log-normal lengths: most turns near the mean, a long tail like real answers
    target = max(20.0, rng.lognormvariate(0, 0.6) * mean_chars / 1.197)
    k = max(1, round(target / 95))
    sents = rng.choices(pool, k=k)
    if k > 6 and rng.random() < 0.5:  # paragraphs and a list, as in assistant answers
        sents.insert(k // 2, "\n\n1.")
        sents.insert(k // 2 + 2, "\n2.")
    return " ".join(sents)


def generate_rows(n: int, *, seed: int = 0, user_chars: float = 330, assistant_chars: float = 1450) -> Iterator[dict[str, Any]]:
    """n ultrachat-shaped rows, deterministic for a seed."""
    rng = random.Random(seed)
    pool, words = _pool(rng)
    for _ in range(n):
        pairs = rng.choices(range(1, 9), weights=_PAIR_WEIGHTS)[0]
        messages = []
        for _ in range(pairs):
            messages.append({"role": "user", "content": _text(rng, pool, user_chars)})
            messages.append({"role": "assistant", "content": _text(rng, pool, assistant_chars)})
        # a fresh opening phrase keeps prompts (and so prompt_ids) unique, as in ultrachat
        opening = " ".join(rng.choices(words, k=6)).capitalize() + ":"
        messages[0]["content"] = prompt = f"{opening} {messages[0]['content']}"
        yield {"prompt": prompt, "prompt_id": hashlib.sha256(prompt.encode("utf-8")).hexdigest(),
               "messages": messages}


def write_jsonl(path: str | Path, n: int, *, seed: int = 0) -> int:
    """Write n synthetic rows as JSON Lines (UTF-8, non-ASCII unescaped); returns bytes written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    with open(path, "w", encoding="utf-8", buffering=1 << 20) as fh:
        for row in generate_rows(n, seed=seed):
            line = json.dumps(row, ensure_ascii=False) + "\n"
            size += len(line.encode("utf-8"))
            fh.write(line)
    return size
