"""``mac-memory bench``: what MAC costs next to RAG, online fine-tuning and no memory, measured in one run.

One package per concern: :mod:`.config` (the options), :mod:`.models` (what is measured, and the context
a measurement runs in), :mod:`.data` (synthetic documents of a given token length), :mod:`.measure`
(timings, peak memory, profiles, machine), one module per measurement (:mod:`.ingestion`, :mod:`.query`,
:mod:`.storage`, :mod:`.scale`, :mod:`.training`, :mod:`.profiling`), :mod:`.targets` (ratios judged
against the targets), :mod:`.runner` (plans and runs the tasks, in fresh subprocesses by default via
:mod:`.worker`) and :mod:`.report` (JSON, Markdown, plots).

Example:
    >>> from mac_memory.bench import BenchConfig, run_bench                       # doctest: +SKIP
    >>> report = run_bench(BenchConfig(quick=True, out="bench.json"))             # doctest: +SKIP
    >>> print(ratio_table(report))                                               # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import BenchConfig
    from .report import ratio_table
    from .runner import run_bench

__all__ = ["BenchConfig", "ratio_table", "run_bench"]

_EXPORTS = {"BenchConfig": "config", "ratio_table": "report", "run_bench": "runner"}


def __getattr__(name: str) -> Any:
    # Lazy: `mac-memory --help` and the config import no torch.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'mac_memory.bench' has no attribute {name!r}")
