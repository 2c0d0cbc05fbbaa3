"""A measuring process: ``python -m mac_memory.bench.worker TASK.json``.

The task file names the configuration, the model, the tasks and a results file; the worker loads the
model once, runs the tasks in order and appends one JSON line per finished task (so the parent can show
progress, and a crash keeps what was measured before it). The first line describes the loaded model.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        sys.stderr.write("usage: python -m mac_memory.bench.worker TASK.json\n")
        return 2
    spec = json.loads(Path(args[0]).read_text())
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    from .config import BenchConfig
    from .models import BenchContext
    from .runner import run_task

    cfg = BenchConfig.from_dict(spec["config"])
    results = Path(spec["results"])

    def emit(line: dict[str, Any]) -> None:
        with results.open("a") as f:
            f.write(json.dumps(line, default=str) + "\n")

    ctx = BenchContext(cfg, spec["model"], spec["workdir"])
    try:
        info = ctx.info
    except Exception as exc:
        emit({"info_error": f"{type(exc).__name__}: {exc}"})
        return 3
    emit({"info": info})
    for measurement, variant in spec["tasks"]:
        emit({"measurement": measurement, "variant": variant, "result": run_task(ctx, measurement, variant)})
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
