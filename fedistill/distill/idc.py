"""``idc``: dataset condensation with multi-formation (IDC).

Kim et al., "Dataset Condensation via Efficient Synthetic-Data Parameterization", ICML 2022.
Each stored image holds an f×f grid of (H/f)×(W/f) sub-images; the network is trained, and the
matching loss computed, on the *decoded* images (every tile upsampled to H×W, bilinear:
:func:`fedistill.factorised.multi_formation`), and the loss is back-propagated through the
decoder to the stored images. IPC counts stored images, as the paper does: IPC ``n`` at factor
``f`` uploads ``n`` images per class and trains on ``n·f²``.

Algorithm (what :func:`distill_idc` runs)::

    S ← per present class, ipc·f² random real images, each area-downsampled by f into one tile
        (row-major) of the ipc stored images                   # IDC's "mix" init (exposed)
    D(S) ← split every stored image into f² tiles, upsample each tile to H×W
    base "dm":  for k = 1 … iterations:                          # DM's loop on D(S)
                    ψ ← a fresh random ConvNet (frozen)
                    L ← Σ_c ‖mean ψ(A_ω_c(B_c)) − mean ψ(A_ω_c(D(S)_c))‖²
                    S ← S − SGD-momentum step on ∇_S L   (clamp: off by default for dm)
    base "dc":  for k = 1 … iterations:                          # IDC's gradient matching
                    θ ← a fresh ConvNet
                    for t = 1 … inner_loop:
                        for every present class c:
                            B_c ← batch_real real images;  D_c ← D(S)_c (≤ batch_syn_max)
                            ω ← one DSA draw for both;  ℓ = cross-entropy
                            L_c ← Σ_{conv weights W} ‖∇_W ℓ(θ; A_ω(D_c)) − ∇_W ℓ(θ; A_ω(B_c))‖₁
                            S ← S − SGD-momentum step on ∇_S L_c
                        θ ← one pass of SGD over n_data random REAL images (DSA)   # not on S
                    S ← clamp(S, pixel range)
    return S with meta decoder "multi-formation", factor f

The "dc" base is IDC's own objective: the ℓ1 distance between gradients of the convolution
weights only (no biases, norms or classifier: the paper's ``bias=False, fc=False``), the
network trained on real data between matching steps (instead of DC's training on S), and S
clamped to the valid pixel range. The "dm" base is DM's loss on the decoded images (the
paper's formulation is agnostic to the matching objective). The matching machinery is DM's and
DC's own (:mod:`fedistill.distill.dm`, :mod:`fedistill.distill.dc`), called on D(S).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fedistill.augment import DSA, default_strategy, parse_strategy
from fedistill.data import LabeledImages
from fedistill.distill import register
from fedistill.distill._common import (
    class_batch,
    frozen,
    make_set,
    new_seed,
    present_classes,
    record_exposed,
    seeded,
)
from fedistill.distill._fast_convnet import single_threaded
from fedistill.distill.dc import (
    ChunkedGradients,
    synthetic_gradient,
    train_on_synthetic,
)
from fedistill.distill.dm import DMConfig, DMLoop, synthetic_loss
from fedistill.errors import ConfigError
from fedistill.factorised import MAX_FACTOR, MULTI_FORMATION, downsample, multi_formation, pack
from fedistill.models import NORMS, build_model
from fedistill.progress import progress_bar
from fedistill.synthetic import SyntheticSet

log = logging.getLogger(__name__)

BASES = ("dm", "dc")
METRICS = ("l1", "mse")
IDC_INITS = ("mix", "real", "noise")  # "real": the mix init (the CLI's --init real)


@dataclass
class IDCConfig:
    """IDC's hyper-parameters. ``None`` takes the base's default: dm → DM's (lr_img 1.0,
    batch_real 256), dc → IDC's (lr_img 0.01 in normalised space, batch_real 64)."""

    base: str = "dm"  # the matching objective on the decoded images: "dm" or "dc"
    factor: int = 2  # f: f² sub-images per stored image (the paper's default for 32 px)
    iterations: int = 200  # fresh networks (dm: one image step each; dc: inner_loop rounds)
    lr_img: float | None = None
    batch_real: int | None = None
    init: str = "mix"  # "mix" (or "real"): real images downsampled into the tiles; or "noise"
    dsa: bool = True
    dsa_strategy: str | None = None
    width: int = 128
    depth: int | None = None  # None: 3, or 2 for images under 16 px (DM's net_depth)
    norm: str = "instance"
    # keep stored pixels inside the dataset's pixel range; None: as IDC for "dc", off for "dm"
    # (clamping cost DM 7 points on digits at IPC 1: 0.77 against 0.84 unclamped)
    clamp: bool | None = None
    # dc base only
    inner_loop: int = 10  # matching rounds per network (paper: 100)
    metric: str = "l1"
    batch_syn_max: int = 128  # decoded images per class per matching step (paper: 128)
    n_data: int = 500  # real images the network trains on between rounds (paper: 500)
    batch_net: int = 64
    lr_net: float = 0.01

    def validate(self) -> None:
        if self.base not in BASES:
            raise ConfigError(f"base must be one of {BASES}, got '{self.base}'")
        if not isinstance(self.factor, int) or not 1 <= self.factor <= MAX_FACTOR:
            raise ConfigError(f"factor must be an integer in 1..{MAX_FACTOR}, got {self.factor}")
        if self.iterations < 0 or self.inner_loop < 1:
            raise ConfigError("iterations must be ≥ 0 and inner_loop ≥ 1")
        if self.lr_img is not None and not self.lr_img > 0:
            raise ConfigError(f"lr_img must be > 0, got {self.lr_img}")
        if self.batch_real is not None and self.batch_real < 1:
            raise ConfigError(f"batch_real must be ≥ 1, got {self.batch_real}")
        if self.init not in IDC_INITS:
            raise ConfigError(f"init must be one of {IDC_INITS}, got '{self.init}'")
        if self.metric not in METRICS:
            raise ConfigError(f"metric must be one of {METRICS}, got '{self.metric}'")
        if self.norm not in NORMS:
            raise ConfigError(f"norm must be one of {NORMS}, got '{self.norm}'")
        if self.width < 1 or (self.depth is not None and self.depth < 1):
            raise ConfigError("width and depth must be ≥ 1")
        if min(self.batch_syn_max, self.n_data, self.batch_net) < 1 or not self.lr_net > 0:
            raise ConfigError("batch_syn_max, n_data, batch_net must be ≥ 1 and lr_net > 0")
        if self.dsa_strategy is not None:
            try:
                parse_strategy(self.dsa_strategy)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None

    def clamps(self) -> bool:
        return self.clamp if self.clamp is not None else self.base == "dc"

    def lr(self) -> float:
        return self.lr_img if self.lr_img is not None else (1.0 if self.base == "dm" else 0.01)

    def real_batch(self) -> int:
        if self.batch_real is not None:
            return self.batch_real
        return 256 if self.base == "dm" else 64

    def dm_config(self) -> DMConfig:
        """The DM loop's settings for the "dm" base."""
        return DMConfig(
            iterations=self.iterations,
            lr_img=self.lr(),
            batch_real=self.real_batch(),
            dsa=self.dsa,
            dsa_strategy=self.dsa_strategy,
            width=self.width,
            depth=self.depth,
            norm=self.norm,
        )


# --------------------------------------------------------------------------- init and bounds


def mix_init(
    real: LabeledImages, ipc: int, factor: int, gen: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """IDC's "mix" initialisation: ``ipc`` stored images per present class, each tiled with
    f² real images of that class downsampled by f. Returns (images, labels, used indices);
    a class with fewer than ipc·f² images repeats some."""
    per = ipc * factor * factor
    by_class = real.class_indices()
    images, labels, used = [], [], []
    for c in present_classes(real):
        idx = by_class[c]
        pick = torch.randperm(len(idx), generator=gen)[:per]
        if len(pick) < per:
            pick = pick[torch.arange(per) % len(pick)]
        images.append(pack(downsample(real.images[idx[pick]], factor), factor))
        labels.append(torch.full((ipc,), c, dtype=torch.int64))
        used.append(idx[pick])
    return torch.cat(images), torch.cat(labels), torch.unique(torch.cat(used))


def pixel_bounds(real: LabeledImages, device: torch.device) -> tuple[Tensor, Tensor]:
    """Per-channel normalised values of pixels 0 and 1 (shape 1×C×1×1 each)."""
    mean = torch.tensor(real.info.mean, device=device).reshape(1, -1, 1, 1)
    std = torch.tensor(real.info.std, device=device).reshape(1, -1, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


# --------------------------------------------------------------------------- the dm base


class DecodedDMLoop(DMLoop):
    """DM's pipelined loop with the loss taken on D(S): the stored images are the parameters,
    the real targets (fresh ψ, real batches, DSA seeds) are DM's own."""

    def __init__(self, *args: Any, factor: int, **kwargs: Any) -> None:
        self.factor = factor
        super().__init__(*args, **kwargs)

    def step(self) -> float:
        if self.upcoming is None:
            raise RuntimeError("no iterations left")
        target = self.upcoming
        self.upcoming = self._draw() if self.left > 0 else None
        decoded = multi_formation(self.syn, self.factor)
        loss = synthetic_loss(target, decoded, len(self.classes), self.augment)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()


# --------------------------------------------------------------------------- the dc base


def gradient_distance(g_syn: list[Tensor], g_real: list[Tensor], metric: str) -> Tensor:
    """IDC's distance: Σ over the given gradients of ‖g_syn − g_real‖₁ (or squared ℓ2)."""
    parts = [
        (s - r).abs().sum() if metric == "l1" else ((s - r) ** 2).sum()
        for s, r in zip(g_syn, g_real, strict=True)
    ]
    return torch.stack(parts).sum()


def conv_weights(net: nn.Module) -> list[nn.Parameter]:
    """The convolution kernels (4-D): IDC matches neither biases, norms nor the classifier."""
    return [p for p in net.parameters() if p.ndim == 4]


def _idc_dc_loop(
    real: LabeledImages,
    syn: Tensor,
    opt: torch.optim.Optimizer,
    ipc: int,
    config: IDCConfig,
    gen: torch.Generator,
    augment: DSA | None,
    bounds: tuple[Tensor, Tensor],
    bar: Any,
    workers: int,
) -> list[float]:
    classes = present_classes(real)
    by_class = real.class_indices()
    f2 = config.factor**2
    dcfg = config.dm_config()
    net_kwargs = {
        "width": config.width,
        "depth": dcfg.net_depth(real.info.height, real.info.width),
        "norm": config.norm,
    }
    grads = ChunkedGradients(workers if syn.device.type == "cpu" else 1)
    history: list[float] = []
    try:
        for _ in range(config.iterations):
            net = build_model("convnet", real.info, **net_kwargs).to(syn.device).train()
            opt_net = torch.optim.SGD(
                net.parameters(), lr=config.lr_net, momentum=0.9, weight_decay=5e-4
            )
            params = conv_weights(net)
            total = 0.0
            for _t in range(config.inner_loop):
                for j, c in enumerate(classes):
                    xr = real.images[class_batch(by_class[c], config.real_batch(), gen)]
                    xr = xr.to(syn.device)
                    xs = multi_formation(syn[j * ipc : (j + 1) * ipc], config.factor)
                    if len(xs) > config.batch_syn_max:  # IDC's random subsample of D(S)_c
                        keep = torch.randperm(ipc * f2, generator=gen)[: config.batch_syn_max]
                        xs = xs[keep.to(syn.device)]
                    if augment is not None:
                        s = new_seed(gen)
                        xr, xs = augment(xr, seed=s), augment(xs, seed=s)
                    yr = torch.full((len(xr),), c, dtype=torch.long, device=xr.device)
                    ys = torch.full((len(xs),), c, dtype=torch.long, device=xr.device)
                    g_real = grads.start(net, params, xr, yr)  # on the workers, meanwhile:
                    loss = gradient_distance(
                        list(synthetic_gradient(net, params, xs, ys)), g_real(), config.metric
                    )
                    opt.zero_grad(set_to_none=True)
                    syn.grad = torch.autograd.grad(loss, [syn])[0]
                    opt.step()
                    total += loss.item()
                # the network learns from real data between rounds (IDC), not from S
                idx = torch.randperm(len(real), generator=gen)[: config.n_data]
                train_on_synthetic(
                    net,
                    opt_net,
                    real.images[idx].to(syn.device),
                    real.labels[idx].to(syn.device),
                    1,
                    config.batch_net,
                    gen,
                    augment,
                    grads,
                )
            if config.clamps():
                with torch.no_grad():
                    syn.copy_(torch.maximum(torch.minimum(syn, bounds[1]), bounds[0]))
            history.append(total / (len(classes) * config.inner_loop))
            bar.advance(match=history[-1])
    finally:
        grads.close()
    return history


# --------------------------------------------------------------------------- the method


@register("idc", IDCConfig, "IDC: multi-formation sets matched by DM or DC (Kim et al. 2022)")
def distill_idc(
    real: LabeledImages,
    ipc: int,
    config: IDCConfig,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
    model: nn.Module | None = None,
    record: dict[str, Any] | None = None,
) -> SyntheticSet:
    """Distill ``real`` into ``ipc`` stored (multi-formation) images per present class.

    ``model`` (dm base only): distill against a given network, as DM does. With the "mix" init
    every real image downsampled into a tile goes to ``record["exposed"]``."""
    config.validate()
    device = torch.device(device)
    h, w = real.info.height, real.info.width
    if h % config.factor or w % config.factor:
        raise ConfigError(f"factor {config.factor} does not divide the image size {h}×{w}")
    if model is not None and config.base != "dm":
        raise ConfigError("idc distills against a given model with base 'dm' only")
    gen = seeded(seed)
    if not present_classes(real):
        raise ConfigError("no training images to distill")
    if ipc < 1:
        raise ConfigError(f"ipc must be ≥ 1, got {ipc}")
    images, labels, used = mix_init(real, ipc, config.factor, gen)
    if config.init == "noise":
        images = torch.randn(images.shape, generator=gen)
        used = torch.zeros(0, dtype=torch.int64)
    record_exposed(record, used)
    syn = images.to(device).requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=config.lr(), momentum=0.5)
    strategy = config.dsa_strategy or default_strategy(real.info)
    augment = DSA(strategy) if config.dsa else None
    bounds = pixel_bounds(real, device)
    k = len(present_classes(real))

    losses: list[float] = []
    with progress_bar(f"idc-{config.base}", config.iterations, progress) as bar:
        if config.base == "dm":
            base = None
            if model is not None:
                if not hasattr(model, "embed"):
                    raise ConfigError("idc needs a model with an embed(x) method")
                base = frozen(copy.deepcopy(model).to(device).eval())
            workers = torch.get_num_threads()
            with single_threaded():
                loop = DecodedDMLoop(
                    real,
                    syn,
                    opt,
                    config.dm_config(),
                    gen,
                    augment=augment,
                    base=base,
                    workers=workers,
                    factor=config.factor,
                )
                for _ in range(config.iterations):
                    losses.append(loop.step() / k)
                    if config.clamps():
                        with torch.no_grad():
                            syn.copy_(torch.maximum(torch.minimum(syn, bounds[1]), bounds[0]))
                    bar.advance(loss=losses[-1])
        else:
            workers = torch.get_num_threads()
            with single_threaded():
                losses = _idc_dc_loop(
                    real, syn, opt, ipc, config, gen, augment, bounds, bar, workers
                )

    extra: dict[str, Any] = {"decoder": MULTI_FORMATION, "factor": config.factor}
    if losses:
        tail = max(1, min(10, len(losses) // 2))
        extra["idc_loss"] = {
            "first": sum(losses[:tail]) / tail,
            "last": sum(losses[-tail:]) / tail,
            "averaged_over": tail,
        }
        log.info(
            "idc-%s: loss %.4g → %.4g",
            config.base,
            extra["idc_loss"]["first"],
            extra["idc_loss"]["last"],
        )
    return make_set(
        syn.detach(),
        labels,
        real,
        method="idc",
        ipc=ipc,
        seed=seed,
        iterations=config.iterations,
        config=config,
        extra=extra,
    )
