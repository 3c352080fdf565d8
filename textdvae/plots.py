"""Pictures of what people would rather see than read: training curves, code usage, traversals.

matplotlib is an optional extra (`pip install 'textdvae[plot]'`); without it each plot is skipped with a hint.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def _pyplot(what: str):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning(f"{what} not plotted: pip install 'textdvae[plot]' (matplotlib)")
        return None
    return plt


def plot_training_curves(log_path: Path, png_path: Path) -> None:
    """ELBO terms, beta and tau against steps; skipped with a hint when matplotlib is missing."""
    plt = _pyplot("training curves")
    if plt is None:
        return
    records = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if r.get("split") == "eval"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    steps = [r["step"] for r in train]
    axes[0].plot(steps, [r["rec"] for r in train], label="train rec")
    if evals:
        axes[0].plot([r["step"] for r in evals], [-r["elbo"] for r in evals], "o-", label="valid -ELBO")
        axes[0].plot([r["step"] for r in evals], [r["rec"] for r in evals], "s--", label="valid rec")
    axes[0].set(xlabel="step", ylabel="nats / sentence", title="reconstruction and -ELBO")
    axes[1].plot(steps, [r["kl"] for r in train], label="train KL")
    if evals:
        axes[1].plot([r["step"] for r in evals], [r["kl"] for r in evals], "o-", label="valid KL")
    axes[1].set(xlabel="step", ylabel="nats / sentence", title="KL(q(z|x) || p(z))")
    axes[2].plot(steps, [r["beta"] for r in train], label="beta (KL weight)")
    axes[2].plot(steps, [r["tau"] for r in train], label="tau (temperature)")
    betas = [r["beta"] for r in train if r["beta"] > 0]
    if betas and max(betas) / min(betas) > 20:  # a rate controller's beta moves over decades
        axes[2].set_yscale("log")
    axes[2].set(xlabel="step", title="schedules")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


def code_usage_heatmap(usage: list[list[float]], png_path: Path, title: str = "code usage") -> None:
    """usage (N, K): how often each category is the most likely code of each latent, over a split."""
    plt = _pyplot("code usage")
    if plt is None:
        return
    N, K = len(usage), len(usage[0])
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * K + 2), max(3, 0.35 * N + 1.5)))
    im = ax.imshow(usage, aspect="auto", cmap="viridis", vmin=0)
    ax.set(xlabel="category", ylabel="latent", title=title, xticks=range(K), yticks=range(N))
    fig.colorbar(im, ax=ax, label="fraction of sentences")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


def traversal_table(text: str, latent: int, rows: list[dict], png_path: str | Path) -> None:
    """The sentence decoded with one latent set to each category, drawn as a table: the text's own category starred
    and shaded, the sentences that differ from its reconstruction in dark text, the others greyed."""
    plt = _pyplot("traversal")
    if plt is None:
        return
    own = next((r["text"] for r in rows if r["original"]), None)
    column = "value" if "value" in rows[0] else "category"  # a Gaussian latent's values, or a categorical's categories
    cells = [[("* " if r["original"] else "") + str(r[column]), _shorten(r["text"]) or "(empty)"] for r in rows]
    width = max(len(_shorten(text)) + 25, *(len(c[1]) for c in cells))  # characters of the widest line
    fig_w = 1.6 + 0.095 * width
    fig, ax = plt.subplots(figsize=(fig_w, 0.75 + 0.3 * (len(rows) + 1)))
    ax.axis("off")
    label_w = 1.0 / fig_w  # one inch for the category column
    table = ax.table(cellText=cells, colLabels=[column, "decoded sentence"], loc="upper center",
                     cellLoc="left", colLoc="left", colWidths=[label_w, 1 - label_w], bbox=[0, 0, 1, 1])
    table.auto_set_font_size(False)
    table.set_fontsize(10)
    for (row, col), cell in table.get_celld().items():
        cell.PAD = 0.04 if col == 0 else 0.01
        cell.set_edgecolor("#bbbbbb")
        if row == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("#e8e8e8")
            continue
        r = rows[row - 1]
        if r["original"]:
            cell.set_facecolor("#fff2b3")
            cell.set_text_props(weight="bold")
        elif own is not None and r["text"] == own:
            cell.get_text().set_color("#888888")  # decodes to the same sentence as the text's own category
    ax.set_title(f"latent {latent} set to each category, from: \"{_shorten(text)}\"\n"
                 "* the text's own category (shaded); grey: the same sentence as with it", fontsize=10, loc="left")
    fig.savefig(png_path, dpi=120, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)


def _shorten(text: str, limit: int = 180) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def factor_nmi_heatmap(nmi, factors: list[str], png_path: Path, title: str = "NMI between latents and factors") -> None:
    """nmi (L, F): the normalized mutual information of each latent with each factor; each factor's best latent
    outlined."""
    plt = _pyplot("factor NMI heatmap")
    if plt is None:
        return
    L, F = len(nmi), len(factors)
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * F + 2), max(3, 0.32 * L + 1.5)))
    im = ax.imshow(nmi, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set(xlabel="factor", ylabel="latent", title=title, xticks=range(F), yticks=range(L))
    ax.set_xticklabels(factors, rotation=45, ha="right")
    for j in range(F):
        best = max(range(L), key=lambda i: nmi[i][j])
        ax.add_patch(plt.Rectangle((j - 0.5, best - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
        ax.text(j, best, f"{nmi[best][j]:.2f}", ha="center", va="center", fontsize=7, color="white")
    fig.colorbar(im, ax=ax, label="NMI")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
