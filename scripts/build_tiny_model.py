#!/usr/bin/env python
"""Build the tiny offline chat model (transformers format) into a folder.

The same model `amlft run` builds for the offline demo: a ~0.5M-parameter Llama-style
causal LM with a byte-level BPE tokenizer trained on the shipped chat data, a ChatML
chat template, and a brief pre-training on the shipped general chat. No downloads.

    python scripts/build_tiny_model.py OUT_DIR [--seed 0] [--pretrain-steps 60] [--corpus FILE.jsonl ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pretrain-steps", type=int, help="full-parameter pre-training steps (0: untrained base)")
    ap.add_argument("--corpus", type=Path, nargs="*",
                    help="chat JSONL files to train the tokenizer on (default: the shipped sample)")
    args = ap.parse_args()

    from amlft.backends.local.chat import read_conversations, texts_of
    from amlft.backends.local.tiny import MARKER, build_tiny_model

    corpus = [t for f in args.corpus for t in texts_of(read_conversations(f))] if args.corpus else None
    started = time.perf_counter()
    out = build_tiny_model(args.out_dir, corpus=corpus, seed=args.seed, pretrain_steps=args.pretrain_steps)
    info = json.loads((out / MARKER).read_text())
    print(f"{out}: {info['parameters']:,} parameters, pre-training loss {info['pretrain_loss_first']} -> "
          f"{info['pretrain_loss_last']}, {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
