"""A re-creation of the official DM iteration, for side-by-side timing only.

The official implementation (``VICO-UoE/DatasetCondensation``, ``main_DM.py`` with ``utils.py``
and ``networks.py``) runs each DM iteration as below; this file rebuilds that *structure* in
our own code so :mod:`experiments.bench_dm_speed` can time it in the same process as ours:

* a fresh ``ConvNet`` (NCHW, float32, ``GroupNorm(C, C)`` as instance norm, in-place ReLU,
  average pooling), ``train()`` mode, parameters frozen;
* a Python loop over the classes; for each class: ``batch_real`` random real images (a NumPy
  permutation of the class's indices), a seed from the wall clock, the siamese augmentation
  applied to the real batch and, in a separate call, to the class's synthetic images, then
  ``embed(real).detach()`` and ``embed(syn)``, and the squared distance of the means added to
  the loss;
* one backward pass and one SGD (momentum 0.5) step on the synthetic images.

The augmentation follows the reference's ``DiffAugment`` in siamese mode: the global torch RNG
is re-seeded before every draw (``seed``, ``seed + 1``, …), parameters are drawn per sample and
then overwritten by the first sample's, affine matrices are built per sample in Python, and
``crop`` pads by one pixel and clamps indices. Its outputs are not meant to match ours draw for
draw; its cost is meant to match the reference's.

``official_arch=True`` gives the official network for 28×28 inputs: its first convolution pads
by 3, so the three blocks see 32×32, 16×16 and 8×8 maps (about 30% more arithmetic than
fedistill's ConvNet, which keeps 28×28, 14×14 and 7×7). ``official_arch=False`` uses
fedistill's ConvNet, isolating the implementation from the architecture.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedistill.models import ConvNet

# --------------------------------------------------------------------------- network


class OfficialConvNet(nn.Module):
    """The official ``ConvNet`` (width 128, depth 3, instance norm, ReLU, average pooling); a
    28×28 input is treated as 32×32 by padding the first convolution by 3."""

    def __init__(
        self,
        channels: int,
        num_classes: int,
        size: tuple[int, int],
        width: int = 128,
        depth: int = 3,
    ) -> None:
        super().__init__()
        h, w = (32, 32) if size[0] == 28 else size
        layers: list[nn.Module] = []
        cin = channels
        for d in range(depth):
            pad = 3 if channels == 1 and d == 0 else 1
            layers += [
                nn.Conv2d(cin, width, kernel_size=3, padding=pad),
                nn.GroupNorm(width, width, affine=True),
                nn.ReLU(inplace=True),
                nn.AvgPool2d(kernel_size=2, stride=2),
            ]
            cin, h, w = width, h // 2, w // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * h * w, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        out = self.features(x)
        return out.view(out.size(0), -1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embed(x))


# --------------------------------------------------------------------------- augmentation


@dataclass
class AugmentParams:
    """The reference's ``ParamDiffAug`` ranges."""

    prob_flip: float = 0.5
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5


class _SeedChain:
    """Re-seed torch's global RNG before every draw: seed, seed + 1, …"""

    def __init__(self, seed: int) -> None:
        self.next = seed

    def reseed(self) -> None:
        torch.random.manual_seed(self.next)
        self.next += 1


def _affine(x: Tensor, rows: list[list[list[float]]]) -> Tensor:
    theta = torch.tensor(rows, dtype=torch.float)
    theta[:] = theta[0].clone()  # siamese: every sample takes the first sample's matrix
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)


def _scale(x: Tensor, p: AugmentParams, s: _SeedChain) -> Tensor:
    r = p.ratio_scale
    s.reseed()
    sx = torch.rand(x.shape[0]) * (r - 1.0 / r) + 1.0 / r
    s.reseed()
    sy = torch.rand(x.shape[0]) * (r - 1.0 / r) + 1.0 / r
    rows = [[[float(sx[i]), 0.0, 0.0], [0.0, float(sy[i]), 0.0]] for i in range(x.shape[0])]
    return _affine(x, rows)


def _rotate(x: Tensor, p: AugmentParams, s: _SeedChain) -> Tensor:
    s.reseed()
    a = (torch.rand(x.shape[0]) - 0.5) * 2 * p.ratio_rotate / 180 * math.pi
    rows = [
        [
            [math.cos(float(a[i])), -math.sin(float(a[i])), 0.0],
            [math.sin(float(a[i])), math.cos(float(a[i])), 0.0],
        ]
        for i in range(x.shape[0])
    ]
    return _affine(x, rows)


def _flip(x: Tensor, p: AugmentParams, s: _SeedChain) -> Tensor:
    s.reseed()
    f = torch.rand(x.size(0), 1, 1, 1)
    f[:] = f[0].clone()
    return torch.where(f < p.prob_flip, x.flip(3), x)


def _color(x: Tensor, p: AugmentParams, s: _SeedChain) -> Tensor:
    def one(shape_like: Tensor) -> Tensor:
        s.reseed()
        v = torch.rand(shape_like.size(0), 1, 1, 1, dtype=shape_like.dtype)
        v[:] = v[0].clone()
        return v

    x = x + (one(x) - 0.5) * p.brightness
    m = x.mean(dim=1, keepdim=True)
    x = (x - m) * (one(x) * p.saturation) + m
    m = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - m) * (one(x) + p.contrast) + m


def _crop(x: Tensor, p: AugmentParams, s: _SeedChain) -> Tensor:
    n, _, h, w = x.shape
    sh, sw = int(h * p.ratio_crop_pad + 0.5), int(w * p.ratio_crop_pad + 0.5)
    s.reseed()
    tx = torch.randint(-sh, sh + 1, size=[n, 1, 1])
    s.reseed()
    ty = torch.randint(-sw, sw + 1, size=[n, 1, 1])
    tx[:], ty[:] = tx[0].clone(), ty[0].clone()
    gb, gx, gy = torch.meshgrid(torch.arange(n), torch.arange(h), torch.arange(w), indexing="ij")
    gx = torch.clamp(gx + tx + 1, 0, h + 1)
    gy = torch.clamp(gy + ty + 1, 0, w + 1)
    xp = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
    return xp.permute(0, 2, 3, 1).contiguous()[gb, gx, gy].permute(0, 3, 1, 2)


def _cutout(x: Tensor, p: AugmentParams, s: _SeedChain) -> Tensor:
    n, _, h, w = x.shape
    ch, cw = int(h * p.ratio_cutout + 0.5), int(w * p.ratio_cutout + 0.5)
    s.reseed()
    ox = torch.randint(0, h + (1 - ch % 2), size=[n, 1, 1])
    s.reseed()
    oy = torch.randint(0, w + (1 - cw % 2), size=[n, 1, 1])
    ox[:], oy[:] = ox[0].clone(), oy[0].clone()
    gb, gx, gy = torch.meshgrid(torch.arange(n), torch.arange(ch), torch.arange(cw), indexing="ij")
    gx = torch.clamp(gx + ox - ch // 2, min=0, max=h - 1)
    gy = torch.clamp(gy + oy - cw // 2, min=0, max=w - 1)
    mask = torch.ones(n, h, w, dtype=x.dtype)
    mask[gb, gx, gy] = 0
    return x * mask.unsqueeze(1)


_OPS = {
    "color": _color,
    "crop": _crop,
    "cutout": _cutout,
    "flip": _flip,
    "scale": _scale,
    "rotate": _rotate,
}


def reference_augment(x: Tensor, strategy: str, seed: int, p: AugmentParams) -> Tensor:
    """One op of ``strategy`` chosen and applied with every draw seeded from ``seed``."""
    chain = _SeedChain(seed)
    ops = strategy.split("_")
    chain.reseed()
    op = ops[int(torch.randint(0, len(ops), size=(1,)).item())]
    out = _OPS[op](x, p, chain)
    # the reference's x.contiguous(); for one channel, force NCHW strides explicitly (a
    # permuted 1-channel tensor counts as contiguous but would send the network channels-last)
    return out.clone(memory_format=torch.contiguous_format)


# --------------------------------------------------------------------------- one iteration


class ReferenceDM:
    """State of the official DM loop over ``images`` (N×C×H×W) with ``labels``."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        num_classes: int,
        ipc: int,
        *,
        batch_real: int = 256,
        lr_img: float = 1.0,
        strategy: str = "color_crop_cutout_scale_rotate",
        official_arch: bool = True,
        seed: int = 0,
    ) -> None:
        self.images, self.num_classes, self.ipc = images, num_classes, ipc
        self.batch_real, self.strategy = batch_real, strategy
        self.official_arch = official_arch
        self.param = AugmentParams()
        self.rng = np.random.RandomState(seed)
        self.indices_class = [
            np.nonzero(labels.numpy() == c)[0].tolist() for c in range(num_classes)
        ]
        c, h, w = images.shape[1:]
        self.shape = (c, h, w)
        self.image_syn = torch.randn(num_classes * ipc, c, h, w, requires_grad=True)
        with torch.no_grad():  # init from random real images
            for k in range(num_classes):
                self.image_syn[k * ipc : (k + 1) * ipc] = self.get_images(k, ipc)
        self.optimizer = torch.optim.SGD([self.image_syn], lr=lr_img, momentum=0.5)

    def get_images(self, c: int, n: int) -> Tensor:
        idx = self.rng.permutation(self.indices_class[c])[:n]
        return self.images[idx]

    def new_net(self) -> nn.Module:
        c, h, w = self.shape
        if self.official_arch:
            return OfficialConvNet(c, self.num_classes, (h, w))
        return ConvNet(c, self.num_classes, (h, w))

    def iteration(self) -> float:
        net = self.new_net()
        net.train()
        for param in net.parameters():
            param.requires_grad = False
        loss = torch.tensor(0.0)
        for c in range(self.num_classes):
            img_real = self.get_images(c, self.batch_real)
            img_syn = self.image_syn[c * self.ipc : (c + 1) * self.ipc].reshape(
                (self.ipc, *self.shape)
            )
            seed = int(time.time() * 1000) % 100000
            img_real = reference_augment(img_real, self.strategy, seed, self.param)
            img_syn = reference_augment(img_syn, self.strategy, seed, self.param)
            output_real = net.embed(img_real).detach()
            output_syn = net.embed(img_syn)
            loss += torch.sum((output_real.mean(0) - output_syn.mean(0)) ** 2)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.item() / self.num_classes
