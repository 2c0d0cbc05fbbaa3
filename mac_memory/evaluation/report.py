"""The evaluation report: ``report.json``, a Markdown table (``report.md``) and a plot (``report.png``).

The report dict (what :func:`~mac_memory.evaluation.protocol.evaluate` returns)::

    {"methods":   {"mac": {"em": 41.2, "f1": 55.0, "n": 400, "seconds": 12.3, "adapt_seconds": 4.1}, ...},
     "retention": {"mac": {"40": 60.1, "80": 58.9, ...}, "online_ft": {...}},
     "retrieval": {"k": 4, "recall": 97.5, "n": 400, "seconds": 1.2, "retention_recall": {"40": 99.0, ...}},
     "config":    {...EvalConfig fields, "checkpoint_fingerprint", "base_lm", "data", ...},
     "samples":   [{"question", "answers", "predictions": {method: answer}}, ...]}

Example:
    >>> print(markdown_table({"methods": {"mac": {"em": 50.0, "f1": 60.0, "n": 2, "seconds": 1.5}}}))
    | method | EM | F1 | n | seconds |
    |---|---:|---:|---:|---:|
    | mac | 50.00 | 60.00 | 2 | 1.50 |
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["markdown_table", "plot_report", "write_report"]


def markdown_table(report: dict[str, Any]) -> str:
    """The scores per method as a Markdown table, then retention F1 by documents ingested (if any)."""
    methods = report.get("methods", {})
    adapt = any("adapt_seconds" in row for row in methods.values())
    header = "| method | EM | F1 | n | seconds |" + (" adapt seconds |" if adapt else "")
    lines = [header, "|---|---:|---:|---:|---:|" + ("---:|" if adapt else "")]
    for name, row in methods.items():
        line = f"| {name} | {row['em']:.2f} | {row['f1']:.2f} | {row['n']} | {row['seconds']:.2f} |"
        if adapt:
            line += f" {row.get('adapt_seconds', 0.0):.2f} |"
        lines.append(line)
    retrieval = report.get("retrieval")
    if retrieval and "recall" in retrieval:
        lines += [
            "",
            f"Retrieval recall@{retrieval['k']} of the gold document: {retrieval['recall']:.2f}% "
            f"(n={retrieval['n']}).",
        ]
    retention = {m: curve for m, curve in report.get("retention", {}).items() if curve}
    if retention:
        counts = sorted({int(n) for curve in retention.values() for n in curve})
        lines += [
            "",
            "Retention: F1 on the first documents' questions after N documents were ingested.",
            "",
            "| method | " + " | ".join(f"N={n}" for n in counts) + " |",
            "|---|" + "---:|" * len(counts),
        ]
        rows = dict(retention)
        if retrieval and retrieval.get("retention_recall"):
            rows[f"(mac's retrieval recall@{retrieval['k']})"] = retrieval["retention_recall"]
        for name, curve in rows.items():
            cells = [f"{curve[str(n)]:.2f}" if str(n) in curve else "" for n in counts]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_report(report: dict[str, Any], path: str | Path) -> Path:
    """Bar chart of EM/F1 per method, and retention curves (F1 vs documents ingested) beside it."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers and CI
    import matplotlib.pyplot as plt

    methods = report.get("methods", {})
    retention = {m: curve for m, curve in report.get("retention", {}).items() if curve}
    ncols = 2 if retention else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 4), squeeze=False)
    ax = axes[0][0]
    names = list(methods)
    xs = range(len(names))
    width = 0.4
    ax.bar([x - width / 2 for x in xs], [methods[n]["f1"] for n in names], width, label="F1")
    ax.bar([x + width / 2 for x in xs], [methods[n]["em"] for n in names], width, label="EM")
    ax.set_xticks(list(xs), names, rotation=30, ha="right")
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Answer quality per method")
    ax.legend()
    if retention:
        ax = axes[0][1]
        for name, curve in retention.items():
            counts = sorted(int(n) for n in curve)
            ax.plot(counts, [curve[str(n)] for n in counts], marker="o", label=name)
        ax.set_xlabel("documents ingested")
        ax.set_ylabel("F1 on the first documents' questions (%)")
        ax.set_ylim(0, 100)
        ax.set_title("Retention")
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(report: dict[str, Any], out: str | Path, *, plot: bool = True) -> dict[str, Path]:
    """Write ``out`` (JSON), the Markdown table next to it (``.md``) and the plot (``.png``).

    Returns the written paths by kind (``json``, ``md``, ``png``). A missing matplotlib skips the plot
    with a warning rather than losing the scores.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    paths = {"json": out}
    md = out.with_suffix(".md")
    md.write_text(markdown_table(report) + "\n", encoding="utf-8")
    paths["md"] = md
    if plot:
        try:
            paths["png"] = plot_report(report, out.with_suffix(".png"))
        except ImportError:
            logger.warning("matplotlib is not installed: no plot written (pip install 'mac-memory[train]').")
    logger.info("Report written to %s", ", ".join(str(p) for p in paths.values()))
    return paths
