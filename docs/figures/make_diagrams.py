"""Draw the data-flow diagram of docs/concepts.md: ``python docs/figures/make_diagrams.py``.

Writes ``docs/figures/data_flow.svg`` next to this script. The SVG is deterministic (no date, fixed ids),
so re-running it only shows a diff when the drawing changed.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

HERE = Path(__file__).resolve().parent

WRITE = "#dbeafe"  # write path
READ = "#fef3c7"  # read path
STORE = "#dcfce7"  # Chroma
FROZEN = "#e5e7eb"  # frozen LM
EDGE = "#374151"


def box(
    ax,
    x: float,
    y: float,
    w: float,
    h: float,
    title: str,
    body: str = "",
    color: str = WRITE,
    mono: bool = False,
) -> tuple:
    """A rounded box with a bold title and smaller lines below; returns its (x, y, w, h)."""
    ax.add_patch(
        FancyBboxPatch(
            (x, y),
            w,
            h,
            boxstyle="round,pad=0.02,rounding_size=0.08",
            facecolor=color,
            edgecolor=EDGE,
            linewidth=1.0,
        )
    )
    if body:
        ax.text(x + w / 2, y + h - 0.16, title, ha="center", va="top", fontsize=9.5, fontweight="bold")
        if mono:  # a left-aligned listing (field names line up)
            ax.text(
                x + 0.15,
                y + h - 0.45,
                body,
                ha="left",
                va="top",
                fontsize=7.4,
                linespacing=1.4,
                family="monospace",
            )
        else:
            ax.text(x + w / 2, y + h - 0.42, body, ha="center", va="top", fontsize=7.8, linespacing=1.35)
    else:
        ax.text(x + w / 2, y + h / 2, title, ha="center", va="center", fontsize=9.5, fontweight="bold")
    return (x, y, w, h)


def arrow(ax, start: tuple, end: tuple, label: str = "", style: str = "-|>", rad: float = 0.0) -> None:
    ax.add_patch(
        FancyArrowPatch(
            start,
            end,
            arrowstyle=style,
            mutation_scale=12,
            linewidth=1.1,
            color=EDGE,
            connectionstyle=f"arc3,rad={rad}",
            shrinkA=2,
            shrinkB=2,
        )
    )
    if label:
        mx, my = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2
        ax.text(mx, my + 0.1, label, ha="center", va="bottom", fontsize=7.2, style="italic", color="#1f2937")


def right(b: tuple) -> tuple:
    return (b[0] + b[2], b[1] + b[3] / 2)


def left(b: tuple) -> tuple:
    return (b[0], b[1] + b[3] / 2)


def top(b: tuple) -> tuple:
    return (b[0] + b[2] / 2, b[1] + b[3])


def bottom(b: tuple) -> tuple:
    return (b[0] + b[2] / 2, b[1])


def data_flow(path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(13.5, 6.6))
    ax.set_xlim(0, 13.5)
    ax.set_ylim(0, 6.6)
    ax.axis("off")

    ax.text(0.1, 6.45, "write: add_texts / ingest", fontsize=11, fontweight="bold", va="top", color="#1e3a8a")
    ax.text(0.1, 2.55, "read: answer / chat", fontsize=11, fontweight="bold", va="top", color="#92400e")

    # ---------------------------------------------------------------- write path (top)
    doc = box(ax, 0.1, 4.75, 1.55, 1.0, "document", "text + metadata\nnamespace, id")
    chunk = box(ax, 2.1, 4.75, 1.75, 1.0, "chunk", "≤ amortizer's max_length\ntokens, 1/8 overlap")
    embed = box(ax, 4.4, 5.35, 2.3, 0.95, "embed", "MiniLM (384-d unit vector)\nfor candidate search")
    amort = box(
        ax,
        4.4,
        4.05,
        2.3,
        1.1,
        "amortize",
        "one forward pass per chunk\n→ T memory tokens × d_mem\n(the modulation)",
    )
    arrow(ax, right(doc), left(chunk))
    arrow(ax, right(chunk), left(embed), rad=-0.15)
    arrow(ax, right(chunk), left(amort), rad=0.15)

    # ---------------------------------------------------------------- the store (middle right)
    record = box(
        ax,
        7.45,
        4.25,
        3.05,
        1.8,
        "Chroma record",
        (
            "id         <namespace>/<record id>\n"
            "document   the chunk's text\n"
            "embedding  the unit vector\n"
            "metadata   your keys, and\n"
            "  mac_modulation  base64 blob:\n"
            "    header, fp16|int8|fp32, sha256\n"
            "  mac_fingerprint  checkpoint id"
        ),
        color=STORE,
        mono=True,
    )
    arrow(ax, right(embed), (7.45, 5.6))
    arrow(ax, right(amort), (7.45, 4.6))
    ax.text(
        10.75,
        5.9,
        "lives and dies with its record:\nupdate = overwrite, delete = gone,\nreachable on a Chroma server",
        fontsize=7.8,
        va="top",
        color="#166534",
    )

    # ---------------------------------------------------------------- read path (bottom)
    q = box(ax, 0.1, 1.05, 1.45, 1.0, "question", "(+ recent chat\nturns)", color=READ)
    qe = box(ax, 1.95, 1.05, 1.35, 1.0, "embed", "same embedder", color=READ)
    topk = box(
        ax, 3.7, 1.05, 1.85, 1.0, "Chroma top-k", "namespace, where,\nas_of, prefer_newest", color=READ
    )
    dec = box(ax, 5.95, 1.05, 1.75, 1.0, "decode", "check + decode blobs\n→ (N, T, d_mem)", color=READ)
    agg = box(
        ax,
        8.1,
        0.85,
        2.15,
        1.4,
        "aggregate",
        "question-conditioned\ncross-attention; groups of\nwindow merged, repeated\n(hierarchical beyond it)",
        color=READ,
    )
    pre = box(ax, 10.65, 1.05, 1.15, 1.0, "prefix", "K/V per layer\n(GQA-aware)", color=READ)
    lm = box(
        ax,
        12.15,
        0.75,
        1.25,
        1.6,
        "frozen LM",
        "generate with\nonly the\nquestion in\nthe prompt",
        color=FROZEN,
    )
    arrow(ax, right(q), left(qe))
    arrow(ax, right(qe), left(topk))
    arrow(ax, right(topk), left(dec))
    arrow(ax, right(dec), left(agg))
    arrow(ax, right(agg), left(pre))
    arrow(ax, right(pre), left(lm))
    arrow(
        ax,
        bottom(record),
        (topk[0] + topk[2] * 0.75, topk[1] + topk[3]),
        label="k records + modulations",
        rad=0.15,
    )
    arrow(ax, (q[0] + q[2] * 0.8, q[1]), (agg[0] + agg[2] * 0.35, agg[1]), rad=0.12, style="-|>")
    ax.text(
        4.7, 0.2, "the question conditions the aggregation", fontsize=7.2, style="italic", color="#1f2937"
    )
    ax.text(
        12.8, 0.55, "answer + sources\n(id, weight)", ha="center", va="top", fontsize=8, fontweight="bold"
    )

    fig.tight_layout(pad=0.2)
    fig.savefig(path, format="svg", metadata={"Date": None})
    plt.close(fig)
    return path


def main() -> None:
    plt.rcParams["svg.hashsalt"] = "mac-memory-docs"  # deterministic element ids
    plt.rcParams["svg.fonttype"] = "none"  # text stays text (small, searchable)
    print(data_flow(HERE / "data_flow.svg"))


if __name__ == "__main__":
    main()
