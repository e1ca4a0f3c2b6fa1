"""A re-creation of the official DC loop, as a whole process, for side-by-side timing only.

The official implementation (``VICO-UoE/DatasetCondensation``, ``main.py`` with ``utils.py`` and
``networks.py``) runs each DC outer iteration as below; this file rebuilds that *structure* and
its costs in our own code, so :mod:`experiments.bench_dc_speed` can time it without a checkout:

* a fresh ``ConvNet`` (the official network: NCHW float32, ``GroupNorm(C, C)`` as instance norm,
  in-place ReLU, average pooling, a 28×28 input treated as 32×32 by padding the first
  convolution by 3), its initialisation seeded from the wall clock, ``train()`` mode, and a
  plain SGD optimiser (``lr_net``) over all its parameters;
* ``outer_loop`` times: for each class in turn, ``batch_real`` real images (a NumPy permutation
  of the class's indices), the real gradient of the mean cross-entropy w.r.t. *all* the
  parameters (then detached and cloned), the synthetic gradient with ``create_graph=True``, and
  the layer-wise distance (one row per output unit, Σ (1 − cos); 1-D tensors give 0) added to
  the loss; then ``loss.backward()`` — which, as in the official code, also back-propagates the
  second-order terms into the network's parameters — and one SGD (momentum 0.5) step on the
  synthetic images;
* between two matching steps, ``inner_loop`` epochs of training on a deep copy of the synthetic
  set through a shuffling ``DataLoader`` (``batch_train``), each batch with the official
  ``epoch`` function's bookkeeping (loss ``.item()``, accuracy through NumPy).

Not re-created: the official evaluation of the set (at iteration 0 and every 500 iterations,
outside the loop timed here) and its image saving. Torch keeps its default thread count, as the
official script does.

    python experiments/dc_reference.py --data-root ../shared/data/mnist-subset --iterations 2
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch
from _bench import DEFAULT_MNIST, require_mnist
from dm_reference import OfficialConvNet
from torch import Tensor, nn

from fedistill.data import load_dataset
from fedistill.distill.dc import get_loops


def distance_wb(gwr: Tensor, gws: Tensor) -> Tensor:
    """The official per-tensor distance: rows per output unit, Σ (1 − cos); 1-D tensors 0."""
    shape = gwr.shape
    if len(shape) == 1:
        return torch.tensor(0, dtype=torch.float)
    if len(shape) > 2:
        gwr, gws = gwr.reshape(shape[0], -1), gws.reshape(shape[0], -1)
    dot = torch.sum(gwr * gws, dim=-1)
    return torch.sum(1 - dot / (torch.norm(gwr, dim=-1) * torch.norm(gws, dim=-1) + 0.000001))


def match_loss(gw_syn: tuple[Tensor, ...], gw_real: list[Tensor]) -> Tensor:
    dis = torch.tensor(0.0)
    for gwr, gws in zip(gw_real, gw_syn, strict=True):
        dis += distance_wb(gwr, gws)
    return dis


def train_epoch(loader, net: nn.Module, optimizer, criterion) -> tuple[float, float]:
    """The official ``epoch('train', …)`` without augmentation."""
    loss_avg, acc_avg, num_exp = 0.0, 0.0, 0
    net.train()
    for img, lab in loader:
        img, lab = img.float(), lab.long()
        output = net(img)
        loss = criterion(output, lab)
        acc = np.sum(np.equal(np.argmax(output.data.numpy(), axis=-1), lab.data.numpy()))
        loss_avg += loss.item() * lab.shape[0]
        acc_avg += acc
        num_exp += lab.shape[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss_avg / num_exp, acc_avg / num_exp


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images, self.labels = images.detach().float(), labels.detach()

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.images[i], self.labels[i]

    def __len__(self) -> int:
        return self.images.shape[0]


def run(
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    ipc: int,
    iterations: int,
    *,
    batch_real: int = 256,
    batch_train: int = 256,
    lr_img: float = 0.1,
    lr_net: float = 0.01,
    loops: tuple[int, int] | None = None,
    seed: int = 0,
) -> list[float]:
    """``iterations`` official DC outer iterations from a real init; the loss of each."""
    np.random.seed(seed)
    outer_loop, inner_loop = loops or get_loops(ipc)
    channel, h, w = images.shape[1:]
    indices_class = [np.nonzero(labels.numpy() == c)[0].tolist() for c in range(num_classes)]

    def get_images(c: int, n: int) -> Tensor:
        return images[np.random.permutation(indices_class[c])[:n]]

    image_syn = torch.randn(num_classes * ipc, channel, h, w, requires_grad=True)
    label_syn = torch.arange(num_classes).repeat_interleave(ipc)
    for c in range(num_classes):
        image_syn.data[c * ipc : (c + 1) * ipc] = get_images(c, ipc).detach().data
    optimizer_img = torch.optim.SGD([image_syn], lr=lr_img, momentum=0.5)
    criterion = nn.CrossEntropyLoss()
    losses = []
    for _ in range(iterations):
        torch.random.manual_seed(int(time.time() * 1000) % 100000)
        net = OfficialConvNet(channel, num_classes, (h, w)).train()
        net_parameters = list(net.parameters())
        optimizer_net = torch.optim.SGD(net.parameters(), lr=lr_net)
        loss_avg = 0.0
        for ol in range(outer_loop):
            loss = torch.tensor(0.0)
            for c in range(num_classes):
                img_real = get_images(c, batch_real)
                lab_real = torch.ones((img_real.shape[0],), dtype=torch.long) * c
                img_syn = image_syn[c * ipc : (c + 1) * ipc].reshape((ipc, channel, h, w))
                lab_syn = torch.ones((ipc,), dtype=torch.long) * c
                gw_real = torch.autograd.grad(criterion(net(img_real), lab_real), net_parameters)
                gw_real = [g.detach().clone() for g in gw_real]
                loss_syn = criterion(net(img_syn), lab_syn)
                gw_syn = torch.autograd.grad(loss_syn, net_parameters, create_graph=True)
                loss += match_loss(gw_syn, gw_real)
            optimizer_img.zero_grad()
            loss.backward()  # as the official: into image_syn and the network's parameters
            optimizer_img.step()
            loss_avg += loss.item()
            if ol == outer_loop - 1:
                break
            train_set = _Pairs(copy.deepcopy(image_syn.detach()), copy.deepcopy(label_syn))
            loader = torch.utils.data.DataLoader(
                train_set, batch_size=batch_train, shuffle=True, num_workers=0
            )
            for _ in range(inner_loop):
                train_epoch(loader, net, optimizer_net, criterion)
        losses.append(loss_avg / (num_classes * outer_loop))
    return losses


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", type=Path, default=DEFAULT_MNIST)
    p.add_argument("--iterations", type=int, default=1, help="outer iterations")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--batch-real", type=int, default=256)
    p.add_argument("--loops", default=None, help="OUTER,INNER instead of get_loops(ipc)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    loops = None
    if args.loops:
        try:
            outer, inner = (int(v) for v in args.loops.split(","))
        except ValueError:
            p.error("--loops takes OUTER,INNER (two integers)")
        loops = (outer, inner)
    require_mnist(args.data_root)
    real = load_dataset("mnist", args.data_root, train=True)
    t0 = time.perf_counter()
    losses = run(
        real.images,
        real.labels,
        real.num_classes,
        args.ipc,
        args.iterations,
        batch_real=args.batch_real,
        loops=loops,
        seed=args.seed,
    )
    print(f"{args.iterations} iterations in {time.perf_counter() - t0:.1f} s; loss {losses}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
