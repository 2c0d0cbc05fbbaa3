"""What both training loops share: the learning-rate schedule and finding the latest checkpoint."""

from __future__ import annotations

import math
from pathlib import Path


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
