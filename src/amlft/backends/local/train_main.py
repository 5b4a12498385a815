"""Entry point of the detached training process: `python -m amlft.backends.local.train_main --train-dir D`.

Why a separate process: training outlives the terminal that started it (like an Azure
job), so `amlft wait` can be Ctrl-C'd and resumed, and `amlft teardown` can stop it by
pid. Everything it has to say goes to files in the training folder: train.log,
progress.jsonl, and result.json (status Completed or Failed, with the error).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from amlft.extras import needs_extra

RESULT = "result.json"


def plot_loss_curve(history: list[dict[str, Any]], path: Path, *, title: str) -> Path | None:
    """Training loss per step as a PNG (matplotlib Agg: no display needed)."""
    if not history:
        return None
    with needs_extra("bench", purpose="Drawing the loss curve"):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    losses = [h["loss"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, losses, lw=1, alpha=0.45, label="loss per step")
    window = max(1, len(losses) // 20)
    if window > 1:
        smooth = [sum(losses[max(0, i - window + 1): i + 1]) / len(losses[max(0, i - window + 1): i + 1])
                  for i in range(len(losses))]
        ax.plot(steps, smooth, lw=2, label=f"moving average ({window} steps)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    from amlft.records import atomic_write_json

    ap = argparse.ArgumentParser(prog="amlft.backends.local.train_main")
    ap.add_argument("--train-dir", required=True, type=Path)
    args = ap.parse_args(argv)
    train_dir: Path = args.train_dir
    result_path = train_dir / RESULT

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    from amlft.backends.local.trainer import TrainConfig, train
    from amlft.errors import AmlftError

    cfg = TrainConfig.load(train_dir)
    result_path.unlink(missing_ok=True)
    try:
        out = train(cfg, log=log)
        png = plot_loss_curve(out["history"], train_dir / "loss_curve.png",
                              title=f"LoRA fine-tune of {Path(cfg.model).name}")
        atomic_write_json(result_path, {
            "status": "Completed", "metrics": out["metrics"], "hyperparameters": cfg.hyperparameters(),
            "before": out["before"], "after": out["after"], "adapter_dir": out["adapter_dir"],
            "merged_dir": out["merged_dir"], "checkpoint_dir": out["checkpoint_dir"],
            "loss_curve_png": str(png) if png else None,
        })
        log("completed")
        return 0
    except BaseException as exc:
        traceback.print_exc()
        message = exc.message if isinstance(exc, AmlftError) else f"{type(exc).__name__}: {exc}"
        hint = exc.hint if isinstance(exc, AmlftError) else None
        atomic_write_json(result_path, {"status": "Failed", "error": message[:2000], "hint": hint})
        return 1


if __name__ == "__main__":
    sys.exit(main())
