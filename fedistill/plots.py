"""Figures a person would rather look at than read: set grids, curves (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from fedistill.data import denormalise
from fedistill.synthetic import SyntheticSet


def pyplot():
    """matplotlib.pyplot on the Agg backend (files, no display): every figure of the project
    is drawn through this."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def mosaic(images: Tensor, rows: list[Tensor], cols: int, pad: int = 2) -> Tensor:
    """One (H, W, C) image holding ``images[rows[r][j]]`` in cell (r, j) of a grid with
    ``cols`` columns, cells ``pad`` pixels apart on a white background (values in [0, 1])."""
    _, ch, h, w = images.shape
    out = torch.ones(len(rows) * (h + pad) + pad, cols * (w + pad) + pad, ch)
    for r, idx in enumerate(rows):
        for j, i in enumerate(idx.tolist()):
            y, x = pad + r * (h + pad), pad + j * (w + pad)
            out[y : y + h, x : x + w] = images[i].permute(1, 2, 0)
    return out


def save_grid(
    syn: SyntheticSet, path: str | Path, max_per_class: int = 20, title: str | None = None
) -> Path:
    """An image grid of ``syn``: a row per class (up to ``max_per_class`` columns), drawn as
    one picture (one axes per image took seconds for a few hundred images)."""
    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = syn.hard_labels()
    k = syn.num_classes
    rows = [torch.nonzero(labels == c, as_tuple=True)[0][:max_per_class] for c in range(k)]
    cols = max(1, max(len(r) for r in rows))
    imgs = denormalise(syn.images, tuple(syn.meta["mean"]), tuple(syn.meta["std"])).clamp(0, 1)
    grid = mosaic(imgs, rows, cols)
    h = imgs.shape[-2]
    fig, ax = plt.subplots(figsize=(cols * 0.8 + 0.6, k * 0.8 + 0.4))
    if grid.shape[-1] == 1:
        ax.imshow(grid[..., 0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(grid.numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([2 + c * (h + 2) + h / 2 for c in range(k)], [str(c) for c in range(k)])
    ax.tick_params(length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    m = syn.meta
    ax.set_title(
        title or f"{m['method']} · {m['dataset']} · ipc {m['ipc']} · {m['iterations']} it",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
