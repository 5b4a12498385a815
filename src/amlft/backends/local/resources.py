"""Will this fine-tune fit on this machine? CPU/GPU, free memory and disk versus the model.

Why estimate before starting: running out of memory an hour into a fine-tune (or the
OOM killer taking the whole terminal) is the local equivalent of a failed cloud job.
The estimate is deliberately simple and errs on the generous side: weights in the
training dtype, plus LoRA/optimizer state, activations and a fixed runtime overhead;
disk holds checkpoints, the merged model and its registered copy.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from amlft.extras import needs_extra

GIB = 1024**3
RUNTIME_OVERHEAD = int(1.0 * GIB)  # python + torch + transformers, measured ~0.8 GiB on CPU
# Parameter counts of well-known hub models, so `check` can answer offline.
KNOWN_PARAMS = {
    "qwen/qwen2.5-0.5b-instruct": 494_000_000,
    "qwen/qwen2.5-1.5b-instruct": 1_540_000_000,
    "microsoft/phi-3-mini-4k-instruct": 3_821_000_000,
    "microsoft/phi-3-mini-128k-instruct": 3_821_000_000,
    "meta-llama/llama-3.2-1b-instruct": 1_236_000_000,
}


def available_memory_bytes() -> int:
    """RAM available to a new process (MemAvailable on Linux), not just 'free'."""
    with needs_extra("local", purpose="Checking available memory"):
        import psutil

    return int(psutil.virtual_memory().available)


def free_disk_bytes(path: Path) -> int:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return int(shutil.disk_usage(p).free)


def gpus() -> list[dict[str, Any]]:
    """Visible CUDA GPUs with their free memory (empty on CPU-only torch)."""
    with needs_extra("local", purpose="Detecting GPUs"):
        import torch

    out = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            out.append({"index": i, "name": torch.cuda.get_device_name(i), "free_bytes": int(free),
                        "total_bytes": int(total), "bf16": bool(torch.cuda.is_bf16_supported())})
    return out


def count_parameters(model_ref: str, *, trust_remote_code: bool = False) -> tuple[int | None, str]:
    """(parameters, how we know) for a local folder or hub id, without loading weights.

    The model is instantiated on the `meta` device from its config (no memory, no
    weights); a hub id is looked up in the local cache only, then in a table of known
    models, so this never needs the network.
    """
    import contextlib

    with needs_extra("local", purpose="Sizing the base model"):
        from transformers import AutoConfig, AutoModelForCausalLM

    cfg = None
    with contextlib.suppress(Exception):
        cfg = AutoConfig.from_pretrained(model_ref, trust_remote_code=trust_remote_code, local_files_only=True)
    if cfg is not None:
        with needs_extra("local", purpose="Sizing the base model"):
            import torch

        try:
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=trust_remote_code)
            return sum(p.numel() for p in model.parameters()), "config"
        except Exception:  # an exotic config: fall back to the table
            pass
    known = KNOWN_PARAMS.get(model_ref.lower())
    if known:
        return known, "known model table"
    return None, "unknown"


def estimate_needs(params: int, *, device: str, max_seq_length: int = 512, batch_size: int = 8) -> dict[str, int]:
    """Bytes of (device) memory and disk a LoRA fine-tune of `params` parameters needs."""
    bytes_per_param = 2 if device == "cuda" else 4  # bf16 on GPU, fp32 on CPU
    weights = params * bytes_per_param
    # LoRA adapters + AdamW state are ~1-2% of the weights; activations scale with tokens in flight
    # (~ sqrt(params) stands in for hidden size x layers of a typical decoder).
    activations = int(batch_size * max_seq_length * (params ** 0.5) * 2 * bytes_per_param)
    memory = int(weights * 1.1) + activations + (RUNTIME_OVERHEAD if device == "cpu" else int(0.5 * GIB))
    # Disk: checkpoints are adapters (small); the merged model is written twice (run folder +
    # MLflow artifact) plus the hub download cache.
    disk = int(weights * 3) + int(0.2 * GIB)
    return {"memory_bytes": memory, "disk_bytes": disk, "weights_bytes": weights}


def fmt_bytes(n: float) -> str:
    """Bytes for people (powers of 1000, as disks and `df -H` count)."""
    from rich.filesize import decimal

    return decimal(int(n))
