"""The benchmark report: JSON (everything), Markdown (tables), PNG plots, and the printed ratio table.

Files, for ``--out docs/benchmarks/bench.json``: ``bench.json``, ``bench.md`` and ``bench-ingestion.png``,
``bench-query.png``, ``bench-storage.png``, ``bench-scale.png``, ``bench-training.png`` beside it.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["figures_table", "markdown", "ratio_table", "write_plots", "write_report"]


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}"
    return str(value)


def _ms(stats: Any) -> str:
    """``median [q1–q3] ms`` of a :func:`~mac_memory.bench.measure.summarize` dict of seconds."""
    if not isinstance(stats, dict) or "median" not in stats:
        return "—"
    return f"{stats['median'] * 1000:.1f} [{stats['q1'] * 1000:.1f}–{stats['q3'] * 1000:.1f}]"


def _mb(value: Any) -> str:
    return "—" if not isinstance(value, (int, float)) else f"{value / 2**20:,.1f}"


def _cell(result: Any, render: Any) -> str:
    if not isinstance(result, dict):
        return "—"
    if "skipped" in result:
        return "skipped"
    if "error" in result:
        return "error"
    return render(result)


def ratio_table(report: dict[str, Any]) -> str:
    """Markdown table of every ratio: value, target, whether it is met and whether it binds this model."""
    lines = ["| model | ratio | value | target | met | binding | note |", "|---|---|---:|---|---|---|---|"]
    for model, data in report["models"].items():
        for row in data.get("ratios", []):
            target = f"{row['op']} {_fmt(row['threshold'])}" if row["op"] else ""
            met = "" if row["met"] is None else ("PASS" if row["met"] else "FAIL")
            binding = "" if row["op"] is None else ("yes" if row["applies"] else "no")
            lines.append(f"| {model} | {row['label']} | {_fmt(row['value'])} | {target} | {met} | {binding} | "
                         f"{row['note']} |")
    return "\n".join(lines)


def figures_table(report: dict[str, Any]) -> str:
    """Markdown tables of the main raw figures (medians with interquartile ranges)."""
    cfg = report["config"]
    out = []
    out.append("| model | ingestion | s/doc median [IQR] | docs/s | peak RSS MiB | peak tensors MiB |")
    out.append("|---|---|---:|---:|---:|---:|")
    for model, data in report["models"].items():
        for variant, r in (data.get("ingestion") or {}).items():
            out.append(f"| {model} | {variant} | {_cell(r, lambda r: _ms(r['seconds_per_doc']).replace(' [', ' ms ['))}"
                       f" | {_cell(r, lambda r: _fmt(r['docs_per_second']))} | "
                       f"{_cell(r, lambda r: _mb(r.get('peak_rss_bytes')))} | "
                       f"{_cell(r, lambda r: _mb(r.get('peak_tensor_bytes')))} |")
    out.append("")
    out.append("| model | doc tokens | method | latency ms median [IQR] | prompt tokens | new tokens | "
               "peak RSS MiB | peak tensors MiB | note |")
    out.append("|---|---:|---|---:|---:|---:|---:|---:|---|")
    for model, data in report["models"].items():
        for length, methods in (data.get("query") or {}).items():
            for method, r in methods.items():
                note = r.get("skipped") or r.get("error") or "" if isinstance(r, dict) else ""
                out.append(f"| {model} | {length} | {method} | {_cell(r, lambda r: _ms(r['latency_s']))} | "
                           f"{_cell(r, lambda r: _fmt(r['prompt_tokens']['median']))} | "
                           f"{_cell(r, lambda r: ','.join(map(str, r['new_tokens'])))} | "
                           f"{_cell(r, lambda r: _mb(r.get('peak_rss_bytes')))} | "
                           f"{_cell(r, lambda r: _mb(r.get('peak_tensor_bytes')))} | {note} |")
    out.append("")
    out.append("| model | doc tokens | records/doc | modulation B/doc | record B/doc | text B/doc | KV cache B/doc |")
    out.append("|---|---:|---:|---:|---:|---:|---:|")
    for model, data in report["models"].items():
        st = data.get("storage") or {}
        for length in (str(t) for t in cfg["doc_tokens"]):
            r = st.get(length)
            if isinstance(r, dict):
                out.append(f"| {model} | {length} | {_fmt(r['records_per_doc'])} | "
                           f"{_fmt(r['modulation_bytes_per_doc'])} | {_fmt(r['record_bytes_per_doc'])} | "
                           f"{_fmt(r['text_bytes_per_doc'])} | {_fmt(r['kv_cache_bytes_per_doc'])} |")
    out.append("")
    out.append("| model | records | query p50 / p95 ms | recall p50 ms | Chroma p50 ms filtered / not | "
               "add_texts docs/s | full aggregation s | aggregation peak MiB (with weights) | disk B/record |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for model, data in report["models"].items():
        for r in ((data.get("scale") or {}).get("sizes") or {}).values():
            agg, chroma = r["full_aggregation"], r["chroma_query"]
            out.append(f"| {model} | {_fmt(r['records'])} | {r['query_s']['median'] * 1000:.1f} / "
                       f"{r['query_s']['p95'] * 1000:.1f} | {r['recall_s']['median'] * 1000:.1f} | "
                       f"{chroma['filtered_s']['median'] * 1000:.1f} / {chroma['unfiltered_s']['median'] * 1000:.1f} | "
                       f"{_fmt(r['probe_ingest']['docs_per_second'])} | {_fmt(agg['seconds'])} | "
                       f"{_mb(agg['peak_bytes'])} ({_mb(agg.get('peak_bytes_with_weights'))}) | "
                       f"{_fmt(r['chroma_disk_bytes_per_record'])} |")
    out.append("")
    out.append("| model | backprop dropout | doc tokens | batch | amortizer encoder trained | step s median [IQR] "
               "| peak RSS MiB | peak tensors MiB |")
    out.append("|---|---:|---:|---:|---|---:|---:|---:|")
    for model, data in report["models"].items():
        for variant, r in (data.get("training") or {}).items():
            out.append(f"| {model} | {variant[len('bpd_'):]} | {_fmt(r.get('doc_tokens'))} | {_fmt(r.get('batch'))} | "
                       f"{_fmt(r.get('amortizer_backbone_trained'))} | "
                       f"{_cell(r, lambda r: _ms(r['step_s']).replace(' [', ' ms ['))} | "
                       f"{_cell(r, lambda r: _mb(r.get('peak_rss_bytes')))} | "
                       f"{_cell(r, lambda r: _mb(r.get('peak_tensor_bytes')))} |")
    return "\n".join(out)


def _profile_section(report: dict[str, Any], top: int = 8) -> str:
    out = []
    for model, data in report["models"].items():
        prof = data.get("profile")
        paths = ("ingest", "query") if isinstance(prof, dict) and "ingest" in prof else ()
        for path in paths:
            p = prof[path]
            out.append(f"**{model} — {path}** (torch ops by self time; Python functions by own time, "
                       f"{p['python_wall_s']:.3f} s under cProfile)\n")
            out.append("| op | calls | self ms | | function | own s |\n|---|---:|---:|---|---|---:|")
            ops, fns = p["torch_ops"][:top], p["python_functions"][:top]
            for i in range(max(len(ops), len(fns))):
                op = f"{ops[i]['name']} | {ops[i]['calls']} | {ops[i]['self_cpu_ms']:.1f}" if i < len(ops) else " | |"
                fn = f"{fns[i]['function']} | {fns[i]['own_s']:.3f}" if i < len(fns) else " |"
                out.append(f"| {op} | | {fn} |")
            out.append("")
        scale = data.get("scale")
        sizes = scale.get("sizes") or {} if isinstance(scale, dict) else {}
        if sizes:
            size, r = list(sizes.items())[-1]
            for title, p in (("add_texts", r["probe_ingest"]["profile"]), ("recall", r["recall_profile"])):
                out.append(f"**{model} — {title} into a memory of {size} documents** (Python functions by own "
                           f"time, {p['python_wall_s']:.3f} s under cProfile)\n")
                out.append("| function | calls | own s | cumulative s |\n|---|---:|---:|---:|")
                out += [f"| {f['function']} | {f['calls']} | {f['own_s']:.3f} | {f['cumulative_s']:.3f} |"
                        for f in p["python_functions"][:top]]
                out.append("")
    return "\n".join(out)


def markdown(report: dict[str, Any]) -> str:
    """The whole report as Markdown: machine, ratios against targets, raw figures, profiles, notes."""
    m = report["machine"]
    ram = f"{m['ram_bytes'] / 2**30:.1f} GiB" if m.get("ram_bytes") else "?"
    lines = [
        f"# mac-memory bench ({'quick' if report['config']['quick'] else 'full'})",
        "",
        f"Machine: {m['cpu_model']}, {m['usable_cores']} usable cores, {ram} RAM, device {m['device']}"
        + (f" ({m['gpu']})" if m.get("gpu") else "")
        + f"; torch {m['torch']}, transformers {m['transformers']}, chromadb {m['chromadb']}, Python {m['python']}; "
        f"load average at start {_fmt((m.get('load_average') or [None])[0])}, at end "
        f"{_fmt((m.get('load_average_end') or [None])[0])}. Created {report['created']}, "
        f"{report['duration_s']:.0f} s.",
        "",
        "## Ratios",
        "",
        ratio_table(report),
        "",
        "## Raw figures",
        "",
        figures_table(report),
        "",
        "## Profiles",
        "",
        _profile_section(report),
        "## Notes",
        "",
        *[f"- {n}" for n in report.get("notes", [])],
    ]
    for model, data in report["models"].items():
        for err in data.get("errors", []):
            lines.append(f"- {model} {err['task']}: {err['error']}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- plots


def write_plots(report: dict[str, Any], out: Path) -> list[Path]:
    """PNG plots next to ``out``; returns the paths written (none when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no plots (pip install 'mac-memory[train]').")
        return []
    models = report["models"]
    written = []

    def save(fig: Any, name: str) -> None:
        path = out.with_name(f"{out.stem}-{name}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    def ok(r: Any) -> bool:
        return isinstance(r, dict) and "skipped" not in r and "error" not in r

    # Ingestion: seconds per document per variant (log scale), IQR whiskers.
    names = [m for m in models if models[m].get("ingestion")]
    if names:
        fig, ax = plt.subplots(figsize=(7, 4))
        variants = ["mac", "online_ft", "embedding_only"]
        width = 0.8 / len(variants)
        for j, variant in enumerate(variants):
            xs, ys, lo, hi = [], [], [], []
            for i, model in enumerate(names):
                r = models[model]["ingestion"].get(variant)
                if ok(r):
                    s = r["seconds_per_doc"]
                    xs.append(i + j * width)
                    ys.append(s["median"])
                    lo.append(s["median"] - s["q1"])
                    hi.append(s["q3"] - s["median"])
            ax.bar(xs, ys, width, yerr=[lo, hi], label=variant, capsize=3)
        ax.set_xticks([i + width for i in range(len(names))], names)
        ax.set_yscale("log")
        ax.set_ylabel("seconds per document")
        ax.set_title("Ingestion (median, IQR)")
        ax.legend()
        save(fig, "ingestion")

    # Query: latency per method, one panel per model, one bar per document length.
    names = [m for m in models if models[m].get("query")]
    if names:
        fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
        for ax, model in zip(axes[0], names, strict=True):
            lengths = list(models[model]["query"])
            methods = list(next(iter(models[model]["query"].values())))
            width = 0.8 / max(len(lengths), 1)
            for j, length in enumerate(lengths):
                xs, ys, lo, hi = [], [], [], []
                for i, method in enumerate(methods):
                    r = models[model]["query"][length].get(method)
                    if ok(r):
                        s = r["latency_s"]
                        xs.append(i + j * width)
                        ys.append(s["median"] * 1000)
                        lo.append((s["median"] - s["q1"]) * 1000)
                        hi.append((s["q3"] - s["median"]) * 1000)
                ax.bar(xs, ys, width, yerr=[lo, hi], label=f"{length}-token docs", capsize=3)
            ax.set_xticks([i + width * (len(lengths) - 1) / 2 for i in range(len(methods))], methods, rotation=30)
            ax.set_ylabel("end-to-end latency (ms)")
            ax.set_title(f"{model}: query, {report['config']['new_tokens']} new tokens")
            ax.legend()
        save(fig, "query")

    # Storage: bytes per document of each representation (log scale).
    names = [m for m in models if ok(models[m].get("storage"))]
    if names:
        kinds = [("modulation_bytes_per_doc", "modulation"), ("record_bytes_per_doc", "Chroma record"),
                 ("text_bytes_per_doc", "text"), ("kv_cache_bytes_per_doc", "KV cache")]
        fig, ax = plt.subplots(figsize=(8, 4))
        groups = [(m, length) for m in names for length in (str(t) for t in report["config"]["doc_tokens"])
                  if length in models[m]["storage"]]
        width = 0.8 / len(kinds)
        for j, (key, label) in enumerate(kinds):
            ax.bar([i + j * width for i in range(len(groups))],
                   [models[m]["storage"][length][key] for m, length in groups], width, label=label)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))], [f"{m}\n{n} tok" for m, n in groups])
        ax.set_yscale("log")
        ax.set_ylabel("bytes per document")
        ax.set_title("Storage")
        ax.legend()
        save(fig, "storage")

    # Scale: query latency p50/p95 and full-aggregation peak vs memory size.
    names = [m for m in models if ok(models[m].get("scale")) and models[m]["scale"].get("sizes")]
    if names:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        for model in names:
            sizes = models[model]["scale"]["sizes"]
            n = [sizes[s]["records"] for s in sizes]
            ax1.plot(n, [sizes[s]["query_s"]["median"] * 1000 for s in sizes], "o-", label=f"{model} p50")
            ax1.plot(n, [sizes[s]["query_s"]["p95"] * 1000 for s in sizes], "x--", label=f"{model} p95")
            ax2.plot(n, [sizes[s]["full_aggregation"]["peak_bytes"] / 2**20 for s in sizes], "o-", label=model)
        ax1.set_xscale("log")
        ax1.set_xlabel("documents in memory")
        ax1.set_ylabel("query latency (ms)")
        ax1.set_title("Query latency vs memory size")
        ax1.legend()
        ax2.set_xscale("log")
        ax2.set_xlabel("documents aggregated")
        ax2.set_ylabel("peak memory beyond input (MiB)")
        ax2.set_title("Full hierarchical aggregation")
        ax2.legend()
        save(fig, "scale")

    # Training: peak tensor memory and step time per backprop-dropout setting.
    names = [m for m in models if models[m].get("training")]
    if names:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        for i, model in enumerate(names):
            rows = [(v[len("bpd_"):], r) for v, r in models[model]["training"].items() if ok(r)]
            width = 0.8 / max(len(rows), 1)
            for j, (dropout, r) in enumerate(rows):
                ax1.bar(i + j * width, r.get("peak_tensor_bytes", 0) / 2**20, width,
                        label=f"dropout {dropout}" if i == 0 else None, color=f"C{j}")
                ax2.bar(i + j * width, r["step_s"]["median"], width, color=f"C{j}")
        for ax in (ax1, ax2):
            ax.set_xticks([i + 0.2 for i in range(len(names))], names)
        ax1.set_ylabel("peak tensor memory (MiB)")
        ax1.set_title("Meta-training step: memory")
        ax1.legend()
        ax2.set_ylabel("seconds per step")
        ax2.set_title("Meta-training step: time")
        save(fig, "training")
    return written


def write_report(report: dict[str, Any], out: Path, plots: bool = True) -> list[Path]:
    """Write ``out`` (JSON), ``out`` with ``.md`` and the plots; returns every path written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    written = [out, out.with_suffix(".md")]
    if plots:
        report.setdefault("plots", [])
        paths = write_plots(report, out)
        report["plots"] = [p.name for p in paths]
        written += paths
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    return written
