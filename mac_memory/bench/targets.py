"""The performance targets, and the ratios of one run's raw figures that are judged against them.

Every ratio is computed here from the raw figures in the report (medians of the recorded repetitions,
peak bytes), never entered by hand; a ratio whose inputs are missing (a skipped or failed variant, a
measurement not run) has ``value`` None and a ``note`` saying why. Targets apply to GPT-2-small-sized
base LMs and up (``sized``), except the storage budget, which is the default's; every model's ratios
are reported either way (``applies`` says whether the target is binding for that model).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["SIZED_MODELS", "TARGETS", "Target", "compute_ratios"]

SIZED_MODELS = ("gpt2-small", "llama-1b")


@dataclass(frozen=True)
class Target:
    """A target a ratio must meet: ``value <op> threshold``; ``applies_to`` is ``sized`` or ``default``."""

    key: str
    label: str
    op: str
    threshold: float
    applies_to: str = "sized"

    def met(self, value: float) -> bool:
        return value >= self.threshold if self.op == ">=" else value <= self.threshold


TARGETS = (
    Target("ingest_speedup_vs_online_ft", "ingestion: online-FT s/doc ÷ MAC s/doc", ">=", 30.0),
    Target("ingest_throughput_vs_embedding", "ingestion: MAC docs/s ÷ embedding-only docs/s", ">=", 0.7),
    Target("query_latency_vs_rag", "query p50: mac ÷ rag k={k} ({short}-token docs)", "<=", 0.5),
    Target("query_latency_vs_no_memory", "query p50: mac ÷ no_memory ({short}-token docs)", "<=", 1.3),
    Target("query_peak_rss_vs_rag", "query peak RSS/CUDA: mac ÷ rag k={k} ({short}-token docs)", "<=", 1.0),
    Target("query_peak_tensor_vs_rag", "query peak tensors: mac ÷ rag k={k} ({short}-token docs)", "<=", 1.0),
    Target("modulation_bytes_per_doc", "stored modulation bytes per {short}-token doc", "<=", 4096.0, "default"),
    Target("scale_query_p50_growth", "scale: query p50, {largest} ÷ {smallest} docs", "<=", 1.5),
    Target("scale_aggregation_peak_growth", "scale: full-aggregation peak, {largest} ÷ {smallest} docs", "<=", 1.10),
    Target("train_peak_rss_reduction", "training peak RSS/CUDA: backprop dropout {low} ÷ {high}", ">=", 2.0),
    Target("train_peak_tensor_reduction", "training peak tensors: backprop dropout {low} ÷ {high}", ">=", 2.0),
)


def _get(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _why_missing(data: Any, *path: str) -> str:
    """The skip reason or error of the variant at ``path`` (or 'not measured')."""
    for depth in range(len(path), 0, -1):
        node = _get(data, *path[:depth])
        if isinstance(node, dict):
            if "skipped" in node:
                return f"{'/'.join(path[:depth])} skipped: {node['skipped']}"
            if "error" in node:
                return f"{'/'.join(path[:depth])} failed: {node['error']}"
    return f"{'/'.join(path)} not measured"


def _ratio(data: dict[str, Any], num: tuple[str, ...], den: tuple[str, ...]) -> tuple[Any, Any, Any, str]:
    a, b = _get(data, *num), _get(data, *den)
    if not isinstance(a, (int, float)):
        return None, a, b, _why_missing(data, *num)
    if not isinstance(b, (int, float)):
        return None, a, b, _why_missing(data, *den)
    if b == 0:
        return None, a, b, f"{'/'.join(den)} is 0"
    return a / b, a, b, ""


def _memory_key(data: dict[str, Any], *path: str) -> str:
    """``peak_cuda_bytes`` when the figures were taken on a GPU, else ``peak_rss_bytes``."""
    node = _get(data, *path)
    return "peak_cuda_bytes" if isinstance(node, dict) and "peak_cuda_bytes" in node else "peak_rss_bytes"


def compute_ratios(model: str, data: dict[str, Any], cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Ratio rows (targets first, then informative rows without a target) for one model's results."""
    short = str(cfg["doc_tokens"][0])
    rag = f"rag_k{max(cfg['rag_ks'])}"
    sizes = [str(s) for s in cfg.get("scale_sizes") or ()]
    dropouts = sorted(cfg.get("train_dropouts") or ())
    low = f"bpd_{dropouts[0]:g}" if dropouts else "bpd_0"
    high = f"bpd_{dropouts[-1]:g}" if dropouts else "bpd_0.75"
    smallest, largest = (sizes[0], sizes[-1]) if sizes else ("?", "?")
    substituted = bool(_get(data, "info", "substituted"))

    specs: dict[str, Callable[[], tuple[Any, Any, Any, str]]] = {
        "ingest_speedup_vs_online_ft": lambda: _ratio(
            data, ("ingestion", "online_ft", "seconds_per_doc", "median"),
            ("ingestion", "mac", "seconds_per_doc", "median")),
        "ingest_throughput_vs_embedding": lambda: _ratio(
            data, ("ingestion", "embedding_only", "seconds_per_doc", "median"),
            ("ingestion", "mac", "seconds_per_doc", "median")),
        "query_latency_vs_rag": lambda: _ratio(
            data, ("query", short, "mac", "latency_s", "median"), ("query", short, rag, "latency_s", "median")),
        "query_latency_vs_no_memory": lambda: _ratio(
            data, ("query", short, "mac", "latency_s", "median"),
            ("query", short, "no_memory", "latency_s", "median")),
        "query_peak_rss_vs_rag": lambda: _ratio(
            data, ("query", short, "mac", _memory_key(data, "query", short, "mac")),
            ("query", short, rag, _memory_key(data, "query", short, "mac"))),
        "query_peak_tensor_vs_rag": lambda: _ratio(
            data, ("query", short, "mac", "peak_tensor_bytes"), ("query", short, rag, "peak_tensor_bytes")),
        "modulation_bytes_per_doc": lambda: _value(data, "storage", short, "modulation_bytes_per_doc"),
        "scale_query_p50_growth": lambda: _ratio(
            data, ("scale", "sizes", largest, "query_s", "median"), ("scale", "sizes", smallest, "query_s", "median")),
        "scale_aggregation_peak_growth": lambda: _ratio(
            data, ("scale", "sizes", largest, "full_aggregation", "peak_bytes"),
            ("scale", "sizes", smallest, "full_aggregation", "peak_bytes")),
        "train_peak_rss_reduction": lambda: _ratio(
            data, ("training", low, _memory_key(data, "training", low)),
            ("training", high, _memory_key(data, "training", low))),
        "train_peak_tensor_reduction": lambda: _ratio(
            data, ("training", low, "peak_tensor_bytes"), ("training", high, "peak_tensor_bytes")),
    }
    rows = []
    for target in TARGETS:
        value, num, den, note = specs[target.key]()
        label = target.label.format(k=max(cfg["rag_ks"]), short=short, largest=largest, smallest=smallest,
                                    low=low[len("bpd_"):], high=high[len("bpd_"):])
        applies = (model in SIZED_MODELS) if target.applies_to == "sized" else (model == "default" and not substituted)
        rows.append({
            "key": target.key, "label": label, "value": value, "numerator": num, "denominator": den,
            "op": target.op, "threshold": target.threshold, "met": None if value is None else target.met(value),
            "applies": applies, "note": note,
        })
    rows += _informative(data, cfg, short, rag, smallest, largest, low, high)
    return rows


def _value(data: dict[str, Any], *path: str) -> tuple[Any, Any, Any, str]:
    v = _get(data, *path)
    return (v, v, None, "") if isinstance(v, (int, float)) else (None, None, None, _why_missing(data, *path))


def _informative(data: dict[str, Any], cfg: dict[str, Any], short: str, rag: str, smallest: str, largest: str,
                 low: str, high: str) -> list[dict[str, Any]]:
    """Ratios worth reading next to the targets (no threshold)."""
    rows: list[tuple[str, str, tuple[Any, Any, Any, str]]] = []
    for length in (str(t) for t in cfg["doc_tokens"]):
        for k in cfg["rag_ks"]:
            rows.append((f"query_latency_vs_rag_k{k}_{length}", f"query p50: mac ÷ rag k={k} ({length}-token docs)",
                         _ratio(data, ("query", length, "mac", "latency_s", "median"),
                                ("query", length, f"rag_k{k}", "latency_s", "median"))))
        if length != short:
            rows.append((f"query_latency_vs_no_memory_{length}", f"query p50: mac ÷ no_memory ({length}-token docs)",
                         _ratio(data, ("query", length, "mac", "latency_s", "median"),
                                ("query", length, "no_memory", "latency_s", "median"))))
        rows.append((f"kv_cache_over_modulation_{length}", f"storage: KV cache ÷ modulation ({length}-token docs)",
                     _value(data, "storage", length, "kv_cache_over_modulation")))
    memory_key = _memory_key(data, "ingestion", "mac")
    rows.append(("ingest_peak_memory_mac_vs_online_ft", "ingestion peak RSS/CUDA: MAC ÷ online FT",
                 _ratio(data, ("ingestion", "mac", memory_key), ("ingestion", "online_ft", memory_key))))
    rows.append(("scale_recall_p50_growth", f"scale: recall p50 largest ÷ smallest ({largest} vs {smallest} docs)",
                 _ratio(data, ("scale", "sizes", largest, "recall_s", "median"),
                        ("scale", "sizes", smallest, "recall_s", "median"))))
    rows.append(("scale_ingest_slowdown", f"scale: add_texts docs/s, {smallest} ÷ {largest} docs",
                 _ratio(data, ("scale", "sizes", smallest, "probe_ingest", "docs_per_second"),
                        ("scale", "sizes", largest, "probe_ingest", "docs_per_second"))))
    rows.append(("scale_chroma_filter_cost", f"scale: Chroma top-k p50 with ÷ without namespace filter ({largest} docs)",
                 _ratio(data, ("scale", "sizes", largest, "chroma_query", "filtered_s", "median"),
                        ("scale", "sizes", largest, "chroma_query", "unfiltered_s", "median"))))
    rows.append(("train_step_time_ratio", f"training step time: {low} ÷ {high}",
                 _ratio(data, ("training", low, "step_s", "median"), ("training", high, "step_s", "median"))))
    return [{"key": key, "label": label, "value": v, "numerator": a, "denominator": b, "op": None,
             "threshold": None, "met": None, "applies": False, "note": note}
            for key, label, (v, a, b, note) in rows]
