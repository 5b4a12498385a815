"""Run the tokens every row of a batch starts with once, not once per row.

Why: chat templates open every conversation the same way. SmolLM2's default system turn
plus the user header is 24 tokens (`<|im_start|>system\\nYou are a helpful AI assistant
named SmolLM, ...<|im_end|>\\n<|im_start|>user\\n`), Qwen2.5 and Llama 3 add one too, and
datasets with a fixed system prompt have more. In a causal decoder those positions see only
each other, so their hidden states and keys/values are the same in every row: the shared
prefix runs once (batch of one) into a KV cache, the cache is repeated over the batch, and
the rows run on from there. Gradients flow through the repeat, so each LoRA weight gets the
sum over rows it would have got anyway - the same loss and gradients, less compute. On
short chat rows (the shipped sample: 53 tokens on average, 24 of them shared) this is
about 40% of the positions of a batch of 8.

The prefix stops before the first label, so every loss position is in the second pass.
It is used only for decoders whose attention is full (no sliding window) and after the
first batch has shown the two paths give the same loss; otherwise every row runs whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from amlft.backends.local.chat import IGNORE_INDEX

__all__ = ["MIN_SHARED_TOKENS", "PrefixSharing", "shared_prefix_length"]

MIN_SHARED_TOKENS = 8        # below this the second decoder call costs more than it saves
LOSS_REL_TOLERANCE = 1e-4    # first-batch check: the two paths' losses agree to this


def shared_prefix_length(batch: dict[str, Any]) -> int:
    """Tokens at the start of every row that are identical and carry no label, nor does the next one.

    Only real (unpadded) positions count, and at least one real token is left to every row.
    """
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    shortest = int(mask.sum(dim=1).min())
    if ids.shape[0] < 2 or shortest < 2:
        return 0
    n = min(shortest, ids.shape[1])
    same = ((ids[:, :n] == ids[:1, :n]).all(dim=0) & (labels[:, :n] == IGNORE_INDEX).all(dim=0)).int()
    run = int(same.cumprod(dim=0).sum())      # length of the leading all-true stretch
    # labels[:, P] must be ignored too: its prediction comes from position P-1, inside the prefix
    return max(0, min(run - 1, shortest - 1))


def full_attention(config: Any) -> bool:
    """No sliding-window or chunked layers (their caches keep only part of the prefix)."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    layer_types = getattr(text, "layer_types", None)
    if layer_types and any(t != "full_attention" for t in layer_types):
        return False
    return not (getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True))


def cache_keyword(decoder: Any) -> str:
    """`cache` (transformers >= 5.24 decoders) or `past_key_values` (earlier ones, and remote code)."""
    import inspect

    try:
        params = inspect.signature(decoder.forward).parameters
    except (TypeError, ValueError, AttributeError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


@dataclass
class PrefixSharing:
    """Per-run state: on or off, checked yet, and how many positions were not recomputed."""

    enabled: bool = True
    checked: bool = False
    saved_tokens: int = 0
    reason: str = ""
    keyword: str = ""  # the decoder's cache keyword (cache_keyword), looked up on first use

    def hidden(self, base: Any, batch: dict[str, Any]) -> tuple[Any, int]:
        """(last hidden states, offset): the states of positions offset.. of every row.

        offset is the shared prefix length (0 when nothing is shared); the caller's loss
        uses positions from offset on, whose labels start at offset + 1.
        """
        decoder = base.get_decoder()
        prefix = shared_prefix_length(batch) if self.enabled else 0
        if prefix < MIN_SHARED_TOKENS:
            return decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state, 0
        from transformers import DynamicCache

        cache = DynamicCache(config=base.config)
        self.keyword = self.keyword or cache_keyword(decoder)
        kw = {self.keyword: cache, "use_cache": True}
        decoder(input_ids=batch["input_ids"][:1, :prefix], **kw)
        cache.batch_repeat_interleave(batch["input_ids"].shape[0])
        out = decoder(input_ids=batch["input_ids"][:, prefix:], attention_mask=batch["attention_mask"], **kw)
        self.saved_tokens += prefix * (batch["input_ids"].shape[0] - 1)
        return out.last_hidden_state, prefix

    def check(self, base: Any, batch: dict[str, Any], loss_fn: Any) -> None:
        """Once per run: switch sharing off unless this model gives the same loss both ways.

        loss_fn(batch, hidden, offset) -> loss. Runs the two shortest rows of the first batch
        that has a shared prefix both ways, without gradients (a few hundredths of a second
        on SmolLM2); a decoder that rejects a cache, or whose loss differs, trains the plain
        way (with the reason kept for the log).
        """
        if self.checked or not self.enabled or shared_prefix_length(batch) < MIN_SHARED_TOKENS:
            return
        import torch

        self.checked = True
        if not full_attention(base.config):
            self.enabled, self.reason = False, "the model has sliding-window attention layers"
            return
        lengths = batch["attention_mask"].sum(dim=1)
        rows = lengths.argsort()[:2]
        pair = {k: v[rows, : int(lengths[rows].max())] for k, v in batch.items()}
        training, saved = base.training, self.saved_tokens
        base.eval()  # no dropout, so the two passes see the same network
        try:
            with torch.no_grad():
                shared = float(loss_fn(pair, *self.hidden(base, pair)))
                self.enabled = False
                whole = float(loss_fn(pair, *self.hidden(base, pair)))
        except (TypeError, ValueError, RuntimeError, AttributeError) as exc:
            self.enabled, self.reason = False, f"the decoder does not run from a shared cache ({exc})"
            return
        finally:
            base.train(training)
            self.saved_tokens = saved
        if abs(shared - whole) <= LOSS_REL_TOLERANCE * max(1.0, abs(whole)):
            self.enabled = True
        else:
            self.reason = f"the first batch's loss differed ({shared:.6f} shared vs {whole:.6f} whole)"
