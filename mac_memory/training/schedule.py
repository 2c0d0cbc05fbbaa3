"""What both training loops share: the learning-rate schedule, finding the latest checkpoint, the curves."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)


def warmup_cosine(step: int, warmup: int, total: int, floor: float = 0.1) -> float:
    """Multiplier of the peak learning rate: linear warmup, then cosine decay to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def step_checkpoints(out: Path) -> list[Path]:
    """``out/step-N`` directories, oldest first."""
    return sorted(out.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(out: Path) -> Path | None:
    steps = step_checkpoints(out)
    return steps[-1] if steps else None


def plot_log(log_path: Path, png: Path, loss_label: str, f1_title: str,
             series: Sequence[tuple[str, str]]) -> None:
    """Loss, and the F1 ``series`` ((log key, label) pairs) at the steps that logged them, from a JSONL log."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - plotting is optional
        logger.warning("matplotlib is not installed; skipping %s", png)
        return
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    steps, losses = [r["step"] for r in records], [r["loss"] for r in records]
    ax1.plot(steps, losses, lw=0.6, alpha=0.45, label="per step")
    window = max(1, min(25, len(losses) // 5))  # one step's batch is noisy: show the trend too
    if window > 1:
        trend = [sum(losses[max(0, i - window + 1): i + 1]) / len(losses[max(0, i - window + 1): i + 1])
                 for i in range(len(losses))]
        ax1.plot(steps, trend, lw=1.6, label=f"mean of {window}")
        ax1.legend()
    ax1.set(xlabel="step", ylabel=loss_label, title="training loss")
    for key, label in series:
        evals = [r for r in records if key in r]
        ax2.plot([r["step"] for r in evals], [r[key] for r in evals], marker="o", label=label)
    ax2.set(xlabel="step", ylabel="F1", title=f1_title, ylim=(0, 100))
    ax2.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
