"""Backdoor trigger patches: a pattern inside a mask, stamped into images in normalised space.

A :class:`Trigger` holds a ``pattern`` (C×H×W, the dataset's normalised space) and a ``mask``
(1×H×W, 1 inside the patch). Stamping replaces the masked pixels::

    stamped = image · (1 − mask) + pattern · mask

The default patch is BadNets' square in the bottom-right corner: 3×3 pixels for 28×28 images
(one pixel in from the border, as in Liu et al.'s code), scaled with the image side and never
under 2×2, so 8×8 digits get a 2×2 square in the corner itself. :func:`white_trigger` fills it
with the brightest valid pixel, :func:`random_trigger` with random valid values (DOORPING's
starting point). :func:`pixel_range` is the valid range every optimised trigger is clamped to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fedistill.data import DatasetInfo, LabeledImages


@dataclass
class Trigger:
    """A patch ``pattern`` (C×H×W, normalised) applied where ``mask`` (1×H×W) is 1."""

    pattern: Tensor
    mask: Tensor

    def __post_init__(self) -> None:
        if self.pattern.ndim != 3 or self.mask.ndim != 3 or self.mask.shape[0] != 1:
            raise ValueError(
                f"pattern must be C×H×W and mask 1×H×W, got {tuple(self.pattern.shape)} "
                f"and {tuple(self.mask.shape)}"
            )
        if self.pattern.shape[1:] != self.mask.shape[1:]:
            raise ValueError("pattern and mask must have the same height and width")

    def stamp(self, images: Tensor) -> Tensor:
        """``images`` (N×C×H×W) with the trigger pasted in (differentiable in the pattern)."""
        mask = self.mask.to(images.device, images.dtype)
        return images * (1 - mask) + self.pattern.to(images.device, images.dtype) * mask

    def clone(self) -> Trigger:
        return Trigger(self.pattern.detach().clone(), self.mask.detach().clone())

    @property
    def size(self) -> int:
        """Pixels inside the patch."""
        return int(self.mask.sum())

    def patch_values(self) -> Tensor:
        """The pattern's values inside the patch, C×P (for reports and change checks)."""
        inside = self.mask[0].bool()
        return self.pattern[:, inside].detach().cpu()

    def to_dict(self) -> dict:
        rows, cols = torch.nonzero(self.mask[0], as_tuple=True)
        return {
            "rows": [int(rows.min()), int(rows.max())] if len(rows) else [],
            "cols": [int(cols.min()), int(cols.max())] if len(cols) else [],
            "pixels": self.size,
            "values": [round(v, 4) for v in self.patch_values().flatten().tolist()],
        }


def pixel_range(info: DatasetInfo) -> tuple[Tensor, Tensor]:
    """The normalised values of pixel 0 and pixel 1, per channel (C×1×1 each)."""
    mean = torch.tensor(info.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(info.std, dtype=torch.float32).view(-1, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


def default_patch_size(info: DatasetInfo) -> int:
    """3 for 28×28 (BadNets), scaled with the image side, at least 2."""
    return max(2, round(3 * min(info.height, info.width) / 28))


def patch_mask(info: DatasetInfo, size: int | None = None, margin: int | None = None) -> Tensor:
    """1×H×W mask of a ``size``×``size`` square ``margin`` pixels in from the bottom-right
    corner (margin 1 for images of side ≥ 16, else 0)."""
    size = size or default_patch_size(info)
    if margin is None:
        margin = 1 if min(info.height, info.width) >= 16 else 0
    if size < 1 or size + margin > min(info.height, info.width):
        raise ValueError(f"a {size}×{size} patch does not fit {info.height}×{info.width} images")
    mask = torch.zeros(1, info.height, info.width)
    top, left = info.height - margin - size, info.width - margin - size
    mask[:, top : top + size, left : left + size] = 1
    return mask


def clamp_to_range(pattern: Tensor, info: DatasetInfo) -> Tensor:
    lo, hi = pixel_range(info)
    return torch.maximum(torch.minimum(pattern, hi.to(pattern)), lo.to(pattern))


def white_trigger(
    info: DatasetInfo, size: int | None = None, margin: int | None = None, value: float = 1.0
) -> Trigger:
    """BadNets' square of pixel value ``value`` (1.0 = white) in the bottom-right corner."""
    lo, hi = pixel_range(info)
    level = lo + (hi - lo) * value
    mask = patch_mask(info, size, margin)
    return Trigger(level.expand(info.channels, info.height, info.width).clone() * mask, mask)


def random_trigger(
    info: DatasetInfo,
    gen: torch.Generator,
    size: int | None = None,
    margin: int | None = None,
) -> Trigger:
    """The same patch with uniformly random valid pixel values (DOORPING's initial trigger)."""
    lo, hi = pixel_range(info)
    mask = patch_mask(info, size, margin)
    u = torch.rand(info.channels, info.height, info.width, generator=gen)
    return Trigger((lo + (hi - lo) * u) * mask, mask)


def triggered_non_target(test: LabeledImages, trigger: Trigger, target: int) -> LabeledImages:
    """The test images of every class but ``target``, stamped; labels stay the true ones."""
    keep = torch.nonzero(test.labels != target, as_tuple=True)[0]
    return LabeledImages(trigger.stamp(test.images[keep]).detach(), test.labels[keep], test.info)
