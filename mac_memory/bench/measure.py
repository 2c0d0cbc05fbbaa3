"""How the benchmark measures: timings with their spread, peak memory three ways, profiles, the machine.

* :func:`summarize` — raw values kept, plus median, quartiles / IQR, p95, min, max, mean.
* :class:`PeakRSS` — peak resident memory of *this process since a reset*: Linux lets a process reset its
  high-water mark (``/proc/self/clear_refs`` ← ``5``) and read it back (``VmHWM``), so a variant's peak
  excludes what ran before it. Elsewhere it falls back to ``ru_maxrss`` (process lifetime). In a fresh
  subprocess per variant (``isolation=variant``) the figure is the variant's own; within a shared process
  freed-but-cached allocator memory can hide part of a later variant's growth (a lower bound).
* :class:`TensorPeak` — peak bytes of tensors *allocated inside a block*, op by op (a
  ``TorchDispatchMode``), independent of allocator caching and of what was allocated before (weights,
  inputs). On CUDA :func:`tensor_peak` uses the allocator's own peak counter instead.
* :func:`profile_top` — torch.profiler's top ops and cProfile's top Python functions for one call.
"""

from __future__ import annotations

import cProfile
import gc
import io
import os
import platform
import pstats
import resource
import statistics
import sys
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = [
    "PeakRSS",
    "TensorPeak",
    "machine_info",
    "profile_top",
    "python_profile",
    "summarize",
    "sync_device",
    "tensor_peak",
    "timed",
]


# ----------------------------------------------------------------------------- timings


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """``{"raw", "n", "median", "q1", "q3", "iqr", "p95", "min", "max", "mean"}`` of ``values``."""
    raw = [float(v) for v in values]
    if not raw:
        return {"raw": [], "n": 0}
    ordered = sorted(raw)
    if len(raw) >= 2:
        q1, _, q3 = statistics.quantiles(raw, n=4, method="inclusive")
    else:
        q1 = q3 = raw[0]
    return {
        "raw": raw,
        "n": len(raw),
        "median": statistics.median(raw),
        "q1": q1,
        "q3": q3,
        "iqr": q3 - q1,
        "p95": _percentile(ordered, 0.95),
        "min": ordered[0],
        "max": ordered[-1],
        "mean": statistics.fmean(raw),
    }


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile of sorted values (numpy's default method)."""
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def sync_device(device: torch.device | str | None) -> None:
    """Wait for queued CUDA work (no-op on CPU), so a clock read after it is honest."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device | str | None = None) -> tuple[float, Any]:
    """``(seconds, result)`` of one call, with CUDA work finished before the clock stops."""
    sync_device(device)
    start = time.perf_counter()
    out = fn()
    sync_device(device)
    return time.perf_counter() - start, out


# ----------------------------------------------------------------------------- resident memory


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _maxrss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # bytes on macOS, KiB elsewhere


class PeakRSS:
    """Peak resident set size of this process between :meth:`start` and :meth:`stop` (see module doc).

    Example:
        >>> rss = PeakRSS(); rss.start(); x = bytearray(50_000_000); rss.stop()["peak_rss_bytes"] > 0
        True
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else None
        self.method = "unknown"
        self.before = 0
        self._cuda_base = 0

    @staticmethod
    def current() -> int:
        """Resident bytes now (``VmRSS``; ``ru_maxrss`` where /proc is missing)."""
        kb = _status_kb("VmRSS")
        return kb * 1024 if kb is not None else _maxrss_bytes()

    def start(self) -> PeakRSS:
        # Garbage left by earlier work must not be freed mid-measurement: the resident size would drop
        # under ``before`` and hide what the measured block allocates.
        gc.collect()
        self.before = self.current()
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
            self.method = "VmHWM since reset"
        except OSError:
            self.method = "ru_maxrss (process lifetime)"
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._cuda_base = torch.cuda.memory_allocated(self.device)
        return self

    def stop(self) -> dict[str, Any]:
        kb = _status_kb("VmHWM") if self.method.startswith("VmHWM") else None
        peak = kb * 1024 if kb is not None else _maxrss_bytes()
        out: dict[str, Any] = {
            "peak_rss_bytes": peak,
            "rss_before_bytes": self.before,
            "peak_rss_delta_bytes": max(peak - self.before, 0),
            "process_peak_rss_bytes": _maxrss_bytes(),
            "rss_method": self.method,
        }
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            out["peak_cuda_bytes"] = int(torch.cuda.max_memory_allocated(self.device))
            out["peak_cuda_delta_bytes"] = int(torch.cuda.max_memory_allocated(self.device)) - self._cuda_base
        return out


# ----------------------------------------------------------------------------- tensor memory


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _tensors(item)]
    return []


class TensorPeak(TorchDispatchMode):
    """Live bytes of storages created by ops inside the block; ``peak`` is their maximum (module doc).

    Outputs that alias an input by the op's schema (views, in-place, ``out=``) are not new allocations.
    A storage counts as live until its last reference dies (``weakref.finalize`` on the storage).
    Overhead is roughly 50-100 µs per op, so timings are never taken inside it.

    Example:
        >>> x = torch.ones(256, 256)
        >>> with torch.no_grad(), TensorPeak() as mem:
        ...     y = (x @ x).softmax(-1)
        >>> mem.peak >= 256 * 256 * 4
        True
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._tracked: dict[tuple[str, int], int] = {}
        self._aliasing: dict[Any, bool] = {}

    def _returns_alias(self, func: Any) -> bool:
        if func not in self._aliasing:
            self._aliasing[func] = func.__name__.startswith("_unsafe_view") or any(
                r.alias_info is not None for r in func._schema.returns
            )
        return self._aliasing[func]

    def _release(self, key: tuple[str, int], nbytes: int) -> None:
        if self._tracked.get(key) == nbytes:
            del self._tracked[key]
            self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        if self._returns_alias(func):
            return out
        for tensor in _tensors(out):
            storage = tensor.untyped_storage()
            nbytes = storage.nbytes()
            key = (str(storage.device), storage.data_ptr())
            if not nbytes or key in self._tracked:
                continue
            self._tracked[key] = nbytes
            self.live += nbytes
            weakref.finalize(storage, self._release, key, nbytes)
        self.peak = max(self.peak, self.live)
        return out


def tensor_peak(fn: Callable[[], Any], device: torch.device | str) -> tuple[int, str]:
    """``(bytes, method)``: peak tensor memory ``fn`` allocates beyond what existed before it."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base), "torch.cuda.max_memory_allocated"
    with TensorPeak() as mem:
        fn()
    return int(mem.peak), "TorchDispatchMode tracker"


# ----------------------------------------------------------------------------- profiles


def profile_top(fn: Callable[[], Any], device: torch.device | str, top: int = 15) -> dict[str, Any]:
    """Top ops (torch.profiler, by self time) and top Python functions (cProfile, by own time) of one call."""
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
    sync_device(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0.0), reverse=True)[:top]
    ops = [
        {
            "name": e.key,
            "calls": int(e.count),
            "self_cpu_ms": e.self_cpu_time_total / 1000.0,
            "cpu_total_ms": e.cpu_time_total / 1000.0,
            **({"self_cuda_ms": getattr(e, "self_device_time_total", 0.0) / 1000.0} if device.type == "cuda"
               else {}),
        }
        for e in events
    ]
    return {"torch_ops": ops, **python_profile(fn, top)}


def python_profile(fn: Callable[[], Any], top: int = 15) -> dict[str, Any]:
    """cProfile's top Python functions (by own time) of one call of ``fn``, and the call's wall time."""
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    try:
        fn()
    finally:
        profiler.disable()
    wall = time.perf_counter() - start
    stats = pstats.Stats(profiler, stream=io.StringIO())
    rows = []
    for (filename, line, name), (_, ncalls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": f"{_short_path(filename)}:{line}({name})", "calls": int(ncalls),
                     "own_s": float(tottime), "cumulative_s": float(cumtime)})
    rows.sort(key=lambda r: r["own_s"], reverse=True)
    return {"python_functions": rows[:top], "python_wall_s": wall}


def _short_path(filename: str) -> str:
    for marker in ("site-packages/", "mac_memory/"):
        if marker in filename:
            return ("mac_memory/" if marker == "mac_memory/" else "") + filename.split(marker, 1)[1]
    return filename


# ----------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_bytes() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def machine_info(device: torch.device | str) -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, RAM, load, library versions, device."""
    device = torch.device(device)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "ram_bytes": _ram_bytes(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": _version("transformers"),
        "chromadb": _version("chromadb"),
        "sentence_transformers": _version("sentence-transformers"),
        "mac_memory": _version("mac-memory"),
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_bytes=int(props.total_memory), cuda=torch.version.cuda)
    return info
