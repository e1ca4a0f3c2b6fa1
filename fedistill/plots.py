"""Figures a person would rather look at than read: set grids, curves (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import torch

from fedistill.data import denormalise
from fedistill.synthetic import SyntheticSet


def pyplot():
    """matplotlib.pyplot on the Agg backend (files, no display): every figure of the project
    is drawn through this."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_grid(
    syn: SyntheticSet, path: str | Path, max_per_class: int = 20, title: str | None = None
) -> Path:
    """An image grid of ``syn``: a row per class (up to ``max_per_class`` columns)."""
    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = syn.hard_labels()
    k = syn.num_classes
    rows = [torch.nonzero(labels == c, as_tuple=True)[0][:max_per_class] for c in range(k)]
    cols = max(1, max(len(r) for r in rows))
    imgs = denormalise(syn.images, tuple(syn.meta["mean"]), tuple(syn.meta["std"])).clamp(0, 1)
    fig, axes = plt.subplots(k, cols, figsize=(cols * 0.8 + 0.6, k * 0.8 + 0.4), squeeze=False)
    for c in range(k):
        for j in range(cols):
            ax = axes[c][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if j < len(rows[c]):
                img = imgs[rows[c][j]]
                if img.shape[0] == 1:
                    ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
                else:
                    ax.imshow(img.permute(1, 2, 0).numpy())
            if j == 0:
                ax.set_ylabel(str(c), rotation=0, labelpad=10, va="center")
    m = syn.meta
    fig.suptitle(
        title or f"{m['method']} · {m['dataset']} · ipc {m['ipc']} · {m['iterations']} it",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
