"""Differentiable Siamese Augmentation (DSA; Zhao & Bilen, ICML 2021).

Augmentations are differentiable in the image, so a synthetic set can be learned *through*
them. "Siamese" means the real and the synthetic batch receive the same random transform: call
the augmenter twice with the same ``seed`` (and matching ``groups``) and both get identical draws.

As in the reference, one operation of the strategy string is chosen per call (per group) —
``color`` applies brightness, saturation and contrast together. With ``seed=None`` each sample
gets its own parameters (training-time augmentation in evaluation).

``groups`` (a per-sample integer id) lets one batched call stand for many siamese pairs: all
samples of a group share one draw. DM uses one group per class, so a single call over all
classes equals the reference's per-class calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from fedistill.data import DatasetInfo

ALL_OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")
FULL_STRATEGY = "_".join(ALL_OPS)


@dataclass(frozen=True)
class DSAParams:
    """Ranges of the reference implementation."""

    crop_pad: float = 0.125  # translate by up to 12.5% of the side
    scale: float = 1.2  # per-axis scale in [1/1.2, 1.2]
    rotate: float = 15.0  # degrees
    cutout: float = 0.5  # side of the erased square, fraction of the image
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5


def default_strategy(info: DatasetInfo) -> str:
    """The full strategy, without flips where they change the label meaning (digits)."""
    ops = [op for op in ALL_OPS if info.flip or op != "flip"]
    return "_".join(ops)


def parse_strategy(strategy: str) -> tuple[str, ...]:
    ops = tuple(op for op in strategy.split("_") if op)
    bad = [op for op in ops if op not in ALL_OPS]
    if bad or not ops:
        raise ValueError(
            f"bad DSA strategy '{strategy}': use ops from {', '.join(ALL_OPS)} joined by '_'"
        )
    return ops


class DSA:
    """``DSA("color_crop_cutout_scale_rotate")(x, seed=s, groups=g)`` → augmented ``x``."""

    def __init__(self, strategy: str = FULL_STRATEGY, params: DSAParams | None = None):
        self.ops = parse_strategy(strategy)
        self.strategy = strategy
        self.p = params or DSAParams()

    def __call__(
        self,
        x: Tensor,
        *,
        seed: int | None = None,
        groups: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        n = x.shape[0]
        if seed is not None:
            gen = torch.Generator().manual_seed(int(seed))
            if groups is None:
                groups = torch.zeros(n, dtype=torch.long)
            groups = groups.to("cpu", torch.long)
            num_groups = int(groups.max()) + 1 if n else 0
        else:  # independent per-sample draws; one op for the whole call
            gen = generator
            groups = torch.arange(n)
            num_groups = n
        if seed is not None:
            op_of_group = torch.randint(len(self.ops), (num_groups,), generator=gen)
        else:
            op_of_group = torch.full(
                (num_groups,), int(torch.randint(len(self.ops), (1,), generator=gen))
            )
        op_of_sample = op_of_group[groups]
        out = x
        for k, op in enumerate(self.ops):
            # draw every op's parameters for all groups, so draws don't depend on the choice
            params = _draw(op, num_groups, self.p, gen, x)
            sel = torch.nonzero(op_of_sample == k, as_tuple=True)[0]
            if len(sel) == 0:
                continue
            sample_params = {name: v[groups[sel]].to(x.device) for name, v in params.items()}
            if len(sel) == n:
                out = _apply(op, x, sample_params, self.p)
            else:
                sel_dev = sel.to(x.device)
                out = out.index_copy(
                    0, sel_dev, _apply(op, x.index_select(0, sel_dev), sample_params, self.p)
                )
        return out


# --------------------------------------------------------------------------- draws


def _draw(
    op: str, g: int, p: DSAParams, gen: torch.Generator | None, x: Tensor
) -> dict[str, Tensor]:
    def u(*shape):
        return torch.rand(*shape, generator=gen)

    h, w = x.shape[-2:]
    if op == "color":
        return {"b": u(g), "s": u(g), "c": u(g)}
    if op == "crop":
        sh, sw = int(h * p.crop_pad + 0.5), int(w * p.crop_pad + 0.5)
        return {
            "ty": torch.randint(-sh, sh + 1, (g,), generator=gen),
            "tx": torch.randint(-sw, sw + 1, (g,), generator=gen),
        }
    if op == "cutout":
        ch, cw = int(h * p.cutout + 0.5), int(w * p.cutout + 0.5)
        return {
            "cy": torch.randint(0, h + (1 - ch % 2), (g,), generator=gen),
            "cx": torch.randint(0, w + (1 - cw % 2), (g,), generator=gen),
        }
    if op == "flip":
        return {"f": u(g) < 0.5}
    if op == "scale":
        return {
            "sx": u(g) * (p.scale - 1 / p.scale) + 1 / p.scale,
            "sy": u(g) * (p.scale - 1 / p.scale) + 1 / p.scale,
        }
    if op == "rotate":
        return {"a": (u(g) - 0.5) * 2 * p.rotate / 180 * math.pi}
    raise ValueError(op)


# --------------------------------------------------------------------------- ops


def _apply(op: str, x: Tensor, q: dict[str, Tensor], p: DSAParams) -> Tensor:
    n, _, h, w = x.shape
    if op == "color":
        x = x + (q["b"].view(n, 1, 1, 1) - 0.5) * p.brightness
        m = x.mean(dim=1, keepdim=True)
        x = (x - m) * (q["s"].view(n, 1, 1, 1) * p.saturation) + m
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - m) * (q["c"].view(n, 1, 1, 1) + p.contrast) + m
    if op == "crop":  # integer translation, zero padding
        sh, sw = int(h * p.crop_pad + 0.5), int(w * p.crop_pad + 0.5)
        xp = F.pad(x, (sw, sw, sh, sh))
        ys = torch.arange(h, device=x.device).view(1, h) + q["ty"].view(n, 1) + sh
        xs = torch.arange(w, device=x.device).view(1, w) + q["tx"].view(n, 1) + sw
        rows = torch.arange(n, device=x.device).view(n, 1, 1)
        out = xp.permute(0, 2, 3, 1)[rows, ys.view(n, h, 1), xs.view(n, 1, w)]
        return out.permute(0, 3, 1, 2).contiguous()
    if op == "cutout":
        ch, cw = int(h * p.cutout + 0.5), int(w * p.cutout + 0.5)
        yy = torch.arange(h, device=x.device).view(1, h, 1)
        xx = torch.arange(w, device=x.device).view(1, 1, w)
        y0 = (q["cy"] - ch // 2).view(n, 1, 1)
        x0 = (q["cx"] - cw // 2).view(n, 1, 1)
        keep = ~((yy >= y0) & (yy < y0 + ch) & (xx >= x0) & (xx < x0 + cw))
        return x * keep.unsqueeze(1).to(x.dtype)
    if op == "flip":
        return torch.where(q["f"].view(n, 1, 1, 1), x.flip(3), x)
    if op in ("scale", "rotate"):
        theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
        if op == "scale":
            theta[:, 0, 0] = q["sx"]
            theta[:, 1, 1] = q["sy"]
        else:
            c, s = torch.cos(q["a"]).to(x.dtype), torch.sin(q["a"]).to(x.dtype)
            theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = c, s, -s, c
        grid = F.affine_grid(theta, list(x.shape), align_corners=True)
        return F.grid_sample(x, grid, align_corners=True)
    raise ValueError(op)
