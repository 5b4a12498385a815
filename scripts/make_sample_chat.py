#!/usr/bin/env python
"""Write the project's own chat dataset, src/amlft/resources/sample_chat/*.jsonl.

Why a generated dataset: the offline demo must show that fine-tuning *did something*
in about a minute of CPU training. So the data teaches one simple, deterministic task
with a fixed answer format, which a tiny model measurably learns and which exact match
can score on held-out prompts:

    user:      "Classify this item: banana"   (8 phrasings, 40 items, 4 categories)
    assistant: "Category: fruit"

Held-out prompts (test_sft, test_gen) use (item, phrasing) pairs never seen in
training, so a gain means the model generalised across phrasings rather than memorised
rows. General chat conversations are mixed in so it looks (and tokenizes) like chat
data. train_gen holds general chat plus free-text facts ("Banana is a kind of fruit.")
and is what the tiny base model is pre-trained on: like a real base model it then
speaks and knows facts, but does not answer in the task's format - fine-tuning teaches
that, and exact match measures it.

Deterministic: the same seed always writes byte-identical files.

    python scripts/make_sample_chat.py [--out DIR] [--seed 7]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from pathlib import Path

CATEGORIES: dict[str, list[str]] = {
    "fruit": ["apple", "banana", "cherry", "mango", "pear", "plum", "grape", "lemon", "peach", "melon"],
    "animal": ["horse", "tiger", "rabbit", "dolphin", "eagle", "wolf", "sheep", "camel", "zebra", "monkey"],
    "vehicle": ["bicycle", "truck", "tram", "scooter", "tractor", "canoe", "ferry", "taxi", "van", "bus"],
    "tool": ["hammer", "wrench", "screwdriver", "saw", "chisel", "drill", "shovel", "pliers", "ladder", "axe"],
}

# The item always ends the request, as in "Classify this item: banana".
TEMPLATES = [
    "Classify this item: {item}",
    "Which category fits this word: {item}",
    "Sort into fruit, animal, vehicle or tool: {item}",
    "Name the category of {item}",
    "Tell me the category for {item}",
    "What kind of thing is this: {item}",
    "Category please: {item}",
    "I need the category of {item}",
]

ANSWER = "Category: {category}"

# General chat: (topic, [what-is, tip, why-people-like, fun-fact]) answers.
GENERAL: dict[str, list[str]] = {
    "python": ["Python is a programming language known for its readable syntax.",
               "Write small functions and give them clear names.",
               "It is easy to read and has libraries for almost everything.",
               "Python is named after a comedy group, not the snake."],
    "coffee": ["Coffee is a drink brewed from roasted coffee beans.",
               "Use freshly ground beans and water just off the boil.",
               "It tastes good and helps many people feel awake.",
               "Coffee beans are the seeds of a cherry-like fruit."],
    "running": ["Running is a simple way to exercise using only your legs.",
                "Start slowly and increase your distance a little each week.",
                "It clears the mind and needs almost no equipment.",
                "A marathon is a little over forty-two kilometres long."],
    "gardening": ["Gardening is growing plants for food or for beauty.",
                  "Water in the morning so the leaves dry during the day.",
                  "It is relaxing and you can eat what you grow.",
                  "Some seeds can sleep in the soil for many years."],
    "music": ["Music is sound arranged in time with rhythm and melody.",
              "Practise a little every day rather than a lot once a week.",
              "It changes our mood and brings people together.",
              "The piano has eighty-eight keys."],
    "sleep": ["Sleep is the daily rest that lets the body and brain recover.",
              "Go to bed at the same time every night.",
              "Waking up rested makes the whole day easier.",
              "Adults usually need seven to nine hours of sleep."],
    "chess": ["Chess is a board game for two players with sixteen pieces each.",
              "Control the centre of the board early in the game.",
              "Every game is different and rewards careful thinking.",
              "There are more possible chess games than atoms in the universe."],
    "the ocean": ["The ocean is the large body of salt water covering most of Earth.",
                  "Always swim near a lifeguard and check the tide times.",
                  "It is calming to watch and full of life.",
                  "Most of the ocean has never been explored."],
    "baking": ["Baking is cooking food with dry heat, usually in an oven.",
               "Weigh your ingredients instead of using cups.",
               "The kitchen smells wonderful and you can share the results.",
               "Bread rises because yeast makes tiny bubbles of gas."],
    "reading": ["Reading is looking at written words and understanding them.",
                "Keep a book with you for spare moments.",
                "Books let you visit other places and lives.",
                "The oldest known story was written on clay tablets."],
    "the moon": ["The moon is the natural satellite that orbits Earth.",
                 "Look at it through binoculars to see its craters.",
                 "It is beautiful and changes shape every night.",
                 "The same side of the moon always faces Earth."],
    "tea": ["Tea is a drink made by steeping leaves in hot water.",
            "Do not steep green tea in boiling water.",
            "It is warming and there are many flavours to try.",
            "After water, tea is the most popular drink in the world."],
}
GENERAL_QUESTIONS = ["What is {topic}?", "Give me one tip about {topic}.",
                     "Why do people like {topic}?", "Tell me a fun fact about {topic}."]
GREETINGS = [("Hi!", "Hello! How can I help you today?"),
             ("Good morning.", "Good morning! What can I do for you?"),
             ("Thanks for your help.", "You are welcome. Have a nice day!"),
             ("Who are you?", "I am a small assistant. I like to chat.")]


def _row(messages: list[dict[str, str]]) -> dict[str, object]:
    prompt = messages[0]["content"]
    return {"prompt": prompt, "prompt_id": hashlib.sha256(prompt.encode()).hexdigest(), "messages": messages}


def _turn(item: str, template: str) -> list[dict[str, str]]:
    category = next(c for c, items in CATEGORIES.items() if item in items)
    return [{"role": "user", "content": template.format(item=item)},
            {"role": "assistant", "content": ANSWER.format(category=category)}]


def general_conversations() -> list[list[dict[str, str]]]:
    convs = [[{"role": "user", "content": q.format(topic=topic)}, {"role": "assistant", "content": a}]
             for topic, answers in GENERAL.items() for q, a in zip(GENERAL_QUESTIONS, answers, strict=True)]
    convs += [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in GREETINGS]
    return convs


def knowledge_conversations() -> list[list[dict[str, str]]]:
    """Free-text facts about every item, in general-chat style (never the task's answer format)."""
    convs = []
    for category, items in CATEGORIES.items():
        for item in items:
            convs.append([{"role": "user", "content": f"Tell me about {item}."},
                          {"role": "assistant", "content": f"{item.capitalize()} is a kind of {category}."}])
    return convs


def build(seed: int = 7) -> dict[str, list[dict[str, object]]]:
    rng = random.Random(seed)
    pairs = [(item, t) for items in CATEGORIES.values() for item in items for t in TEMPLATES]
    rng.shuffle(pairs)
    # Held-out pairs first, so every test prompt is an (item, phrasing) combination training never saw.
    test_pairs, gen_pairs, train_pairs = pairs[:48], pairs[48:72], pairs[72:]

    def task_rows(ps: list[tuple[str, str]], two_turn_every: int) -> list[dict[str, object]]:
        rows, i = [], 0
        while i < len(ps):
            msgs = _turn(*ps[i])
            if two_turn_every and i % two_turn_every == 0 and i + 1 < len(ps):
                msgs += _turn(*ps[i + 1])
                i += 1
            rows.append(_row(msgs))
            i += 1
        return rows

    general = general_conversations()
    rng.shuffle(general)
    train = task_rows(train_pairs, two_turn_every=7) + [_row(c) for c in general[:36]]
    test = task_rows(test_pairs, two_turn_every=0) + [_row(c) for c in general[36:44]]
    # test_gen is what `amlft invoke` and `amlft bench` sample: task prompts only, so the demo's
    # invoke shows the skill the fine-tune taught (the model answers everything in that format).
    test_gen = task_rows(gen_pairs, two_turn_every=0)
    rng.shuffle(train)
    rng.shuffle(test)
    rng.shuffle(test_gen)
    # train_gen: general chat and plain facts ("Banana is a kind of fruit.") - what the tiny
    # base model is pre-trained on, like the world knowledge of a real base model. The
    # fine-tune then teaches the behaviour: answer in the task's format.
    # Held-out general chat stays out of it, so neither model has seen the test answers.
    train_gen = [_row(c) for c in general[:36] + knowledge_conversations()]
    rng.shuffle(train_gen)
    return {"train_sft": train, "test_sft": test, "train_gen": train_gen, "test_gen": test_gen}


def main() -> None:
    default_out = Path(__file__).resolve().parents[1] / "src" / "amlft" / "resources" / "sample_chat"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=default_out)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for split, rows in build(args.seed).items():
        path = args.out / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        print(f"{path}: {len(rows)} conversations")


if __name__ == "__main__":
    main()
