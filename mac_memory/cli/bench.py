"""``mac-memory bench``: the performance benchmark (ingestion, query, storage, scale, training).

Example::

    mac-memory bench --quick --out docs/benchmarks/bench-quick.json
    mac-memory bench --models default gpt2-small llama-1b --out docs/benchmarks/bench.json
"""

from __future__ import annotations

import argparse
from typing import Any

from . import add_dataclass_arguments, dataclass_from_args

__all__ = ["COMMANDS"]


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..bench.config import BenchConfig

    add_dataclass_arguments(parser, BenchConfig)


def _run(ns: argparse.Namespace) -> int:
    """Run the benchmark, print the ratio table and where the report went."""
    from pathlib import Path

    from ..bench.config import BenchConfig
    from ..bench.report import figures_table, ratio_table
    from ..bench.runner import run_bench

    report = run_bench(dataclass_from_args(BenchConfig, ns))
    print("\n" + figures_table(report) + "\n\n" + ratio_table(report) + "\n")
    for note in report["notes"]:
        print(f"note: {note}")
    for model, data in report["models"].items():
        for err in data["errors"]:
            print(f"error: {model} {err['task']}: {err['error']}")
    out = Path(report["config"]["out"])
    print(f"\nreport: {out} (+ {out.with_suffix('.md').name}, {len(report.get('plots', []))} plots); "
          f"{report['duration_s']:.0f} s")
    return 0


COMMANDS: dict[str, tuple[str, Any, Any]] = {
    "bench": ("Measure ingestion, query latency/memory, storage, scale and training cost vs RAG and online FT.",
              _add_arguments, _run),
}
