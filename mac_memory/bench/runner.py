"""``run_bench``: plan the measurements, run them (in fresh subprocesses or here), judge, report.

The plan for each model is a list of tasks ``(measurement, variant)``: ``prepare`` (the query memories),
``storage``, the three ``ingestion`` variants, every ``query`` length × method, ``scale``, one
``training`` task per backprop-dropout setting, and ``profile``. With ``isolation="variant"`` every task
runs in a fresh Python process (:mod:`mac_memory.bench.worker`), so a variant's peak RSS is its own; with
``"model"`` one process runs all tasks of a model; with ``"none"`` everything runs in this process. Tasks
communicate only through the model's work directory (the stores ``prepare`` builds) and their JSON
results. A failing task is recorded with its error and the run goes on (unless ``fail_fast``): a 1B
model running out of memory in online fine-tuning is a finding, not a reason to lose the other figures.

Example:
    >>> report = run_bench(BenchConfig(quick=True, models=("tiny",)))        # doctest: +SKIP
    >>> [r["value"] for r in report["models"]["tiny"]["ratios"]][:2]         # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from . import ingestion, profiling, query, scale, storage, training
from .config import BenchConfig
from .models import BenchContext
from .targets import TARGETS, compute_ratios

logger = logging.getLogger(__name__)

__all__ = ["RUNNERS", "plan", "run_bench", "run_task"]

Task = tuple[str, str | None]

RUNNERS: dict[str, Callable[[BenchContext, str | None], dict[str, Any]]] = {
    "prepare": query.prepare,
    "storage": storage.run,
    "ingestion": ingestion.run,
    "query": query.run,
    "scale": scale.run,
    "training": training.run,
    "profile": profiling.run,
}


def plan(cfg: BenchConfig) -> list[Task]:
    """The tasks of one model, in the order they run (``prepare`` first when anything reads its stores)."""
    chosen = set(cfg.measurements)
    tasks: list[Task] = []
    if chosen & {"storage", "query", "profile"}:
        tasks.append(("prepare", None))
    if "storage" in chosen:
        tasks.append(("storage", None))
    if "ingestion" in chosen:
        tasks += [("ingestion", v) for v in ingestion.VARIANTS]
    if "query" in chosen:
        tasks += [("query", v) for v in query.variants(cfg)]
    if "scale" in chosen and cfg.scale_sizes:
        tasks.append(("scale", None))
    if "training" in chosen:
        tasks += [("training", training.variant_name(d)) for d in cfg.train_dropouts]
    if "profile" in chosen:
        tasks.append(("profile", None))
    return tasks


@contextlib.contextmanager
def _quiet_library_logs() -> Iterator[None]:
    """The memory component logs every add at INFO; while measuring that is noise (and costs time)."""
    names = ("mac_memory.memory", "mac_memory.checkpoint", "mac_memory.training")
    before = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in before.items():
            logging.getLogger(name).setLevel(level)


def run_task(ctx: BenchContext, measurement: str, variant: str | None, fail_fast: bool = False) -> dict[str, Any]:
    """Run one task in this process; errors become ``{"error", "traceback"}`` unless ``fail_fast``."""
    start = time.perf_counter()
    try:
        with _quiet_library_logs():
            result = RUNNERS[measurement](ctx, variant)
    except Exception as exc:
        if fail_fast:
            raise
        logger.error("%s %s%s failed: %s", ctx.model, measurement, f"/{variant}" if variant else "", exc)
        result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=12)}
    finally:
        gc.collect()
        with contextlib.suppress(Exception):
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    result["task_wall_s"] = time.perf_counter() - start
    return result


# ----------------------------------------------------------------------------- executing a model's tasks


def _in_process(cfg: BenchConfig, model: str, tasks: list[Task], workdir: Path,
                bar: Any) -> Iterator[dict[str, Any]]:
    ctx = BenchContext(cfg, model, workdir)
    try:
        yield {"info": ctx.info}
    except Exception as exc:
        if cfg.fail_fast:
            raise
        yield {"info_error": f"{type(exc).__name__}: {exc}"}
        return
    for measurement, variant in tasks:
        bar.set_description(f"{model} {measurement}{'/' + variant if variant else ''}")
        yield {"measurement": measurement, "variant": variant,
               "result": run_task(ctx, measurement, variant, cfg.fail_fast)}
        bar.update(1)
    del ctx
    gc.collect()


def _exit_reason(code: int) -> str:
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        hint = " (killed: most likely out of memory)" if -code == signal.SIGKILL else ""
        return f"worker killed by signal {name}{hint}"
    return f"worker exited with code {code}"


def _in_worker(cfg: BenchConfig, model: str, tasks: list[Task], workdir: Path, bar: Any,
               number: int) -> Iterator[dict[str, Any]]:
    """Run ``tasks`` in a fresh ``python -m mac_memory.bench.worker`` and stream its result lines."""
    spec_dir = workdir / "tasks"
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec_path = spec_dir / f"{number:03d}.json"
    results_path = spec_dir / f"{number:03d}.jsonl"
    spec = {"config": cfg.to_dict(), "model": model, "tasks": [list(t) for t in tasks], "workdir": str(workdir),
            "results": str(results_path)}
    spec_path.write_text(json.dumps(spec))
    results_path.write_text("")
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    name = f"{model} {tasks[0][0]}{'/' + tasks[0][1] if tasks[0][1] else ''}"
    bar.set_description(name if len(tasks) == 1 else f"{model} (worker)")
    proc = subprocess.Popen([sys.executable, "-m", "mac_memory.bench.worker", str(spec_path)], env=env)
    done = 0  # tasks whose result line has arrived
    offset = 0

    def new_lines() -> list[dict[str, Any]]:
        nonlocal offset
        with results_path.open("rb") as f:
            f.seek(offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        offset += len(complete)
        return [json.loads(line) for line in complete.decode().splitlines() if line.strip()]

    try:
        while True:
            finished = proc.poll() is not None
            for line in new_lines():
                if "measurement" in line:
                    done += 1
                    bar.update(1)
                    if done < len(tasks):
                        m, v = tasks[done]
                        bar.set_description(f"{model} {m}{'/' + v if v else ''}")
                yield line
            if finished:
                break
            time.sleep(0.25)
    except BaseException:
        proc.terminate()  # our own child: stop it with us (Ctrl-C, fail_fast)
        proc.wait()
        raise
    if proc.returncode != 0 or done < len(tasks):
        reason = _exit_reason(proc.returncode) if proc.returncode != 0 else "worker stopped early"
        for measurement, variant in tasks[done:]:
            if cfg.fail_fast:
                raise RuntimeError(f"{model} {measurement}/{variant}: {reason}")
            bar.update(1)
            yield {"measurement": measurement, "variant": variant, "result": {"error": reason}}


def _model_lines(cfg: BenchConfig, model: str, workdir: Path, bar: Any) -> Iterator[dict[str, Any]]:
    tasks = plan(cfg)
    if cfg.isolation == "none":
        yield from _in_process(cfg, model, tasks, workdir, bar)
    elif cfg.isolation == "model":
        yield from _in_worker(cfg, model, tasks, workdir, bar, 0)
    else:
        for number, task in enumerate(tasks):
            for line in _in_worker(cfg, model, [task], workdir, bar, number):
                if "info" in line and number > 0:
                    continue
                yield line


def _file_result(data: dict[str, Any], measurement: str, variant: str | None, result: dict[str, Any]) -> None:
    """Put a task's result where the report keeps it: query[length][method], training[variant], ..."""
    if measurement == "query" and variant:
        length, method = variant.split("/", 1)
        data.setdefault("query", {}).setdefault(length, {})[method] = result
    elif variant is None:
        data[measurement] = result
    else:
        data.setdefault(measurement, {})[variant] = result


# ----------------------------------------------------------------------------- the whole run


def run_bench(config: BenchConfig) -> dict[str, Any]:
    """Run every selected measurement for every selected model; write and return the report."""
    from .measure import machine_info
    from .report import write_report

    cfg = config.resolve()
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    machine = machine_info(device)
    if machine.get("load_average") and machine["load_average"][0] > 0.5:
        logger.warning("Load average %.2f at start: other processes share the CPU, timings will be contended.",
                       machine["load_average"][0])
    own_workdir = cfg.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="mac-bench-")) if own_workdir else Path(cfg.workdir)  # type: ignore[arg-type]
    tasks = plan(cfg)
    models: dict[str, Any] = {}
    try:
        with tqdm(total=len(tasks) * len(cfg.models or ()), desc="bench", unit="task") as bar:
            for model in cfg.models or ():
                data: dict[str, Any] = {"errors": []}
                for line in _model_lines(cfg, model, workdir / model, bar):
                    if "info" in line:
                        data["info"] = line["info"]
                    elif "info_error" in line:
                        data["errors"].append({"task": "load", "error": line["info_error"]})
                    else:
                        result = line["result"]
                        _file_result(data, line["measurement"], line["variant"], result)
                        if "error" in result:
                            data["errors"].append({"task": f"{line['measurement']}/{line['variant']}",
                                                   "error": result["error"]})
                data["ratios"] = compute_ratios(model, data, cfg.to_dict())
                models[model] = data
    finally:
        if own_workdir and not cfg.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    if hasattr(os, "getloadavg"):
        machine["load_average_end"] = list(os.getloadavg())
    report = {
        "mac_memory_version": _version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "machine": machine,
        "config": cfg.to_dict(),
        "workdir": str(workdir) if cfg.keep_workdir or not own_workdir else None,
        "targets": [asdict(t) for t in TARGETS],
        "models": models,
        "notes": _notes(cfg, models),
        "duration_s": time.perf_counter() - started,
    }
    write_report(report, Path(cfg.out), plots=cfg.plots)
    return report


def _version() -> str:
    from ..version import __version__

    return __version__


def _notes(cfg: BenchConfig, models: dict[str, Any]) -> list[str]:
    notes = []
    for name, data in models.items():
        info = data.get("info", {})
        if info.get("substituted"):
            notes.append(f"{name}: the embedded default is not trained on this machine; the {info['substituted']} "
                         f"model was measured in its place ({info.get('substitution_reason', '')}).")
        if info.get("weights", "").startswith("random"):
            notes.append(f"{name}: random weights from the config (timings equal trained weights'; answers are "
                         "meaningless) and an in-process BPE tokenizer; lengths are counted in its tokens.")
    if "scale" in cfg.measurements:
        notes.append(f"scale: {cfg.scale_real_docs} documents per memory ingested through add_texts (+ 2 x "
                     f"{cfg.scale_probe_docs} per size to time and profile ingestion); the rest are random "
                     "modulations + embeddings written through the store layer.")
    if cfg.isolation != "variant":
        notes.append(f"isolation={cfg.isolation}: variants share a process, so peak RSS figures are taken since a "
                     "high-water-mark reset and can miss growth hidden by freed-but-cached memory; the tensor "
                     "peaks are exact. Run without --quick (isolation=variant) for per-variant peak RSS.")
    return notes
