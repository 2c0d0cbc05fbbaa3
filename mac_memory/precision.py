"""Mixed precision: which autocast dtype a run uses, on a GPU or a CPU.

``mixed_precision`` options (training, evaluation) take ``auto``, ``no``, ``bf16`` or ``fp16``. ``auto``
picks bfloat16 on a GPU that supports it, and on a CPU only where bfloat16 measures faster: CPUs with
native bfloat16 matrix units (AVX512-BF16, AMX) run a base LM's passes about 2-3× faster under bf16
autocast, while on the others bf16 is emulated and slower than float32. The CPU answer comes from a
short timing of a matrix product the size of a small LM's layer, made once per process.

Example:
    >>> with autocast(resolve("auto", "cpu"), "cpu"):       # doctest: +SKIP
    ...     logits = model(input_ids).logits
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Iterator

import torch

from .errors import ConfigError

logger = logging.getLogger(__name__)

MODES = ("auto", "no", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
SPEEDUP_NEEDED = 1.25
"""``auto`` takes bf16 on a CPU when it runs the probe at least this much faster than float32."""


def check_mode(mode: str, what: str = "mixed_precision") -> str:
    if mode not in MODES:
        raise ConfigError(f"{what}={mode!r} is invalid: choose one of {MODES}.")
    return mode


def resolve(mode: str, device: str | torch.device) -> str:
    """``no``, ``bf16`` or ``fp16``: what ``mode`` means on ``device`` (``auto`` decided, others checked)."""
    check_mode(mode)
    kind = torch.device(device).type
    if mode != "auto":
        if mode == "fp16" and kind == "cpu":
            raise ConfigError("mixed_precision='fp16' needs a GPU; on a CPU use 'bf16' or 'auto'.")
        return mode
    if kind == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    if kind == "cpu":
        return "bf16" if cpu_bf16_speedup() >= SPEEDUP_NEEDED else "no"
    return "no"


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup() -> float:
    """How many times faster a (256 × 576) @ (576 × 1536) product runs under bf16 autocast than in float32
    on this CPU (best of a few timings each: a small LM's MLP layer on a batch of tokens)."""
    x = torch.randn(256, 576)
    layer = torch.nn.Linear(576, 1536)

    def best(bf16: bool) -> float:
        times = []
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            layer(x)  # warm-up: first calls pick kernels
            for _ in range(7):
                start = time.perf_counter()
                for _ in range(4):
                    layer(x)
                times.append(time.perf_counter() - start)
        return min(times)

    try:
        speedup = best(False) / max(best(True), 1e-9)
    except RuntimeError:  # no bf16 kernels at all on this build
        speedup = 0.0
    logger.info("bf16 autocast on this CPU: %.2fx the speed of float32", speedup)
    return speedup


@contextlib.contextmanager
def autocast(mode: str, device: str | torch.device) -> Iterator[None]:
    """``torch.autocast`` for a resolved mode (``no``: nothing changes)."""
    if mode == "no":
        yield
        return
    with torch.autocast(torch.device(device).type, dtype=_DTYPES[mode]):
        yield
