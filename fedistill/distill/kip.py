"""``kip``: Kernel Inducing Points, and KIP-ρ.

Nguyen, Chen & Lee, "Dataset Meta-Learning from Kernel Ridge-Regression", ICLR 2021; Nguyen,
Novak, Xiao & Lee, "Dataset Distillation with Infinitely Wide Convolutional Networks",
NeurIPS 2021. The synthetic set is the *support* of a kernel ridge regression whose predictions
on real images must match their labels (survey Eq. 8)::

    init   X_s ← ipc real images of every present class (or noise);  y_s ← encoded labels
    KIP-ρ  in each image a fixed random fraction ρ of the pixels is replaced by noise
           N(0, 1) in the normalised space (the data's own mean and std; truncated to the
           valid pixel range with ``clip``) and never updated
    repeat iterations times:
        (X_t, y_t) ← a class-balanced batch of real images
        K ← a fresh draw of the random-feature ConvNet NNGP (kernel "convnet", as RFAD)
        ŷ_t ← K(X_t, X_s) (K(X_s, X_s) + λ tr(K_ss)/n I)⁻¹ y_s       kernel: the ConvNet's NNGP
        L ← ½ mean (ŷ_t − y_t)²                                        by random features, or the
                                                                       NNGP / NTK of an infinitely
                                                                       wide FC ReLU net (closed form)
        Adam step on X_s (and y_s if labels are learned); ρ pixels: gradient masked, values restored
        clip: learned pixels projected onto the valid range 0..1 (ours: KIP has no such step;
              it keeps the images image-like and transfers better to finite ConvNets)

Kernels (:mod:`fedistill.kernels`): ``ntk`` / ``nngp`` are KIP's fully-connected kernels, exact.
``convnet`` (the default) is the NNGP of the evaluator's own architecture, ConvNet-3 with
instance norm and pooling, approximated by ``rf_models`` random networks of ``rf_width``
channels redrawn at every step (Loo et al., NeurIPS 2022); its KRR predictor uses one fixed,
larger draw (``rf_predict_models`` networks from ``rf_seed``): a closer estimate of the kernel
the support was fitted to in expectation. It costs more per step and transfers far better to
the finite ConvNet: on the MNIST subset, IPC 10, 200 steps, ConvNet test accuracy 95.1 %
against 93.7 % for the FC NTK (``experiments/bench_privacy.py``).

Labels are encoded as ``one_hot − 1/K`` (centred, as KIP) or plain one-hot. Unlearned labels
are saved as hard class ids; learned ones are KRR regression targets (``label_kind
"targets"``, float32 N×K, trained on with MSE by the evaluator). The kernel hyper-parameters are
in the set's provenance, so :func:`kip_accuracy` reproduces the KRR predictor from the file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fedistill.data import LabeledImages
from fedistill.distill import register
from fedistill.distill._common import (
    INITS,
    check_init,
    init_images,
    make_set,
    present_classes,
    sample_per_class,
    seeded,
)
from fedistill.errors import ConfigError
from fedistill.kernels import KINDS, ConvNetRFKernel, FCKernel, krr_predict
from fedistill.progress import progress_bar
from fedistill.synthetic import SyntheticSet

log = logging.getLogger(__name__)

LABEL_ENCODINGS = ("centered", "onehot")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
MASK_SEED_OFFSET = 1_000_003
KERNELS = ("convnet", *KINDS)
_KERNEL_KEYS = (
    "kernel",
    "depth",
    "w_var",
    "b_var",
    "reg",
    "label_encoding",
    "rf_width",
    "rf_depth",
    "rf_models",
    "rf_predict_models",
    "rf_seed",
)


@dataclass
class KIPConfig:
    # defaults: mnist-subset IPC 10, 200 steps (≈ 5 CPU minutes): ConvNet 95.1 %, KRR 96.3 %
    iterations: int = 200
    lr_img: float = 0.01  # Adam learning rate for the support images (KIP: 4e-2)
    lr_label: float | None = None  # Adam learning rate for learned labels (None: lr_img)
    batch_target: int = 1000  # real target images per step (class-balanced)
    kernel: str = "convnet"  # "convnet" (random features) | "nngp" | "ntk" (FC, closed form)
    depth: int = 1  # FC kernels: hidden ReLU layers
    w_var: float = 2.0  # FC kernels: σ_w² (KIP: W_std = √2)
    b_var: float = 0.01  # FC kernels: σ_b² (KIP: b_std = 0.1)
    rf_width: int = 32  # convnet kernel: channels of each random ConvNet
    rf_depth: int | None = None  # convnet kernel: conv blocks (None: auto_rf_depth)
    rf_models: int = 4  # convnet kernel: random networks per step's draw
    rf_predict_models: int = 16  # convnet kernel: networks of the KRR predictor's fixed draw
    rf_seed: int = 0  # convnet kernel: the seed of that fixed draw (kip_accuracy)
    reg: float = 1e-6  # KRR ridge, times tr(K_ss)/n
    learn_labels: bool = False
    rho: float = 0.0  # KIP-ρ: fraction of every image's pixels kept as fixed noise
    mask_seed: int | None = None  # seed of the ρ mask and its noise (None: seed + 1000003)
    init: str = "real"
    label_encoding: str = "centered"  # "centered": one_hot − 1/K (KIP); "onehot"
    dtype: str = "float64"  # precision of the kernel computations
    clip: bool = True  # keep pixels (learned ones and ρ noise) in the valid range 0..1

    def validate(self) -> None:
        if self.iterations < 0:
            raise ConfigError(f"iterations must be ≥ 0, got {self.iterations}")
        if not self.lr_img > 0 or (self.lr_label is not None and not self.lr_label > 0):
            raise ConfigError("learning rates must be positive")
        if self.batch_target < 1:
            raise ConfigError(f"batch_target must be ≥ 1, got {self.batch_target}")
        if self.kernel not in KERNELS:
            raise ConfigError(f"kernel must be one of {KERNELS}, got '{self.kernel}'")
        for name in ("rf_width", "rf_depth", "rf_models", "rf_predict_models"):
            value = getattr(self, name)
            if name == "rf_depth" and value is None:
                continue
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer ≥ 1, got {value!r}")
        if not isinstance(self.depth, int) or self.depth < 0:
            raise ConfigError(f"depth must be an integer ≥ 0, got {self.depth!r}")
        if not self.w_var > 0 or not self.b_var >= 0 or not self.reg >= 0:
            raise ConfigError("need w_var > 0, b_var ≥ 0 and reg ≥ 0")
        if not 0.0 <= self.rho < 1.0:
            raise ConfigError(f"rho must lie in [0, 1), got {self.rho}")
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {INITS}, got '{self.init}'")
        if self.label_encoding not in LABEL_ENCODINGS:
            raise ConfigError(f"label_encoding must be one of {LABEL_ENCODINGS}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {tuple(DTYPES)}, got '{self.dtype}'")

    def kernel_fn(self, channels: int, image_size: tuple[int, int]) -> FCKernel | ConvNetRFKernel:
        """The KRR predictor's kernel for images of this shape (convnet: the fixed draw of
        ``rf_predict_models`` networks from ``rf_seed``; training redraws ``rf_models`` per step)."""
        if self.kernel == "convnet":
            return ConvNetRFKernel(
                channels,
                image_size,
                width=self.rf_width,
                depth=self.rf_depth or auto_rf_depth(image_size),
                models=self.rf_predict_models,
                seed=self.rf_seed,
            )
        return FCKernel(self.kernel, self.depth, self.w_var, self.b_var)


def auto_rf_depth(image_size: tuple[int, int]) -> int:
    """The convnet kernel's default depth: the evaluator's 3 blocks, fewer where pooling would
    shrink the last map below 2×2 (8×8 digits: 2) — a 1×1 map leaves a random-feature kernel of
    ``width × models`` features only, and KIP on digits then fits far worse (76 % against 93 %
    KRR test accuracy, IPC 2, 40 steps)."""
    side, depth = min(image_size), 0
    while depth < 3 and side // 2 >= 2:
        side, depth = side // 2, depth + 1
    return max(depth, 1)


def encode_labels(labels: Tensor, num_classes: int, encoding: str = "centered") -> Tensor:
    """Regression targets for class ids: ``one_hot − 1/K`` (``centered``) or ``one_hot``."""
    y = F.one_hot(labels, num_classes).double()
    return y - 1.0 / num_classes if encoding == "centered" else y


def pixel_bounds(
    mean: tuple[float, ...] | list[float], std: tuple[float, ...] | list[float]
) -> tuple[Tensor, Tensor]:
    """Pixel values 0 and 1 in the normalised space, per channel (1×C×1×1 float32)."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return -m / s, (1 - m) / s


def rho_corruption(
    shape: tuple[int, ...],
    rho: float,
    seed: int,
    bounds: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """KIP-ρ's fixed corruption of N×C×H×W images: a boolean mask selecting, in every image,
    ``round(ρ·H·W)`` pixel positions (all channels) drawn at random, and the noise they hold:
    N(0, 1) in the normalised space, i.e. the data's own per-channel mean and std, truncated to
    ``bounds`` (the valid pixel range) where given. A function of its arguments alone, so the
    mask of a saved set can be rebuilt from its provenance (:func:`rho_mask_of`)."""
    n, c, h, w = shape
    gen = torch.Generator().manual_seed(seed)
    m = round(rho * h * w)
    order = torch.stack([torch.randperm(h * w, generator=gen) for _ in range(n)])
    mask = torch.zeros(n, h * w, dtype=torch.bool)
    mask.scatter_(1, order[:, :m], True)
    mask = mask.view(n, 1, h, w).expand(n, c, h, w).contiguous()
    noise = torch.randn(n, c, h, w, generator=gen)
    if bounds is not None:
        noise = torch.minimum(torch.maximum(noise, bounds[0]), bounds[1])
    return mask, noise


def rho_mask_of(syn: SyntheticSet) -> tuple[Tensor, Tensor] | None:
    """The ρ mask and noise of a KIP-ρ set, rebuilt from its provenance (None without ρ)."""
    priv = syn.privacy or {}
    if priv.get("mechanism") != "kip-rho":
        return None
    hp = syn.meta.get("hyperparameters") or {}
    bounds = pixel_bounds(syn.meta["mean"], syn.meta["std"]) if hp.get("clip") else None
    return rho_corruption(tuple(syn.images.shape), priv["rho"], priv["mask_seed"], bounds)


def kip_loss(
    x_s: Tensor,
    y_s: Tensor,
    x_t: Tensor,
    y_t: Tensor,
    kernel: FCKernel | ConvNetRFKernel,
    reg: float,
) -> tuple[Tensor, Tensor]:
    """KIP's objective ``½ mean (ŷ_t − y_t)²`` of the KRR prediction from the support, and the
    accuracy of that prediction (argmax) on the targets."""
    pred = krr_predict(*kernel.pair(x_t, x_s), y_s, reg)
    loss = 0.5 * (pred - y_t).pow(2).mean()
    acc = (pred.argmax(1) == y_t.argmax(1)).double().mean()
    return loss, acc


@register(
    "kip",
    KIPConfig,
    "kernel inducing points (KRR with the ConvNet's random-feature NNGP or the FC NTK/NNGP); KIP-ρ",
)
def distill_kip(
    real: LabeledImages,
    ipc: int,
    config: KIPConfig,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
    record: dict[str, Any] | None = None,
) -> SyntheticSet:
    """Learn ``ipc`` support images per present class by kernel inducing points (real-init
    indices to ``record["exposed"]``)."""
    config.validate()
    check_init(real, ipc, config.init)
    device = torch.device(device)
    dtype = DTYPES[config.dtype]
    gen = seeded(seed)
    k = real.num_classes
    kernel = config.kernel_fn(real.images.shape[1], tuple(real.images.shape[2:]))

    # init: real images (or noise) per present class, labels sorted by class
    images, labels = init_images(real, ipc, config.init, gen, record)
    mask = None
    # its own stream: the mask must not replay the draws that picked the initial images
    mask_seed = seed + MASK_SEED_OFFSET if config.mask_seed is None else config.mask_seed
    if config.rho > 0:  # KIP-ρ: a fixed fraction of every image is noise, forever
        bounds = pixel_bounds(real.info.mean, real.info.std) if config.clip else None
        mask, noise = rho_corruption(tuple(images.shape), config.rho, mask_seed, bounds)
        images = torch.where(mask, noise, images)
        mask = mask.to(device)
    x_s = images.to(device, dtype).requires_grad_(True)
    frozen = x_s.detach().clone()
    y_s = encode_labels(labels, k, config.label_encoding).to(device, dtype)
    params = [{"params": [x_s], "lr": config.lr_img}]
    if config.learn_labels:
        y_s.requires_grad_(True)
        params.append({"params": [y_s], "lr": config.lr_label or config.lr_img})
    opt = torch.optim.Adam(params)

    lo, hi = (b.to(device, dtype) for b in pixel_bounds(real.info.mean, real.info.std))

    classes = present_classes(real)
    per_class = max(1, config.batch_target // len(classes))
    history: list[float] = []
    with progress_bar("kip", config.iterations, progress) as bar:
        for it in range(config.iterations):
            # a class-balanced batch of real targets
            idx = sample_per_class(real, per_class, gen, classes)
            x_t = real.images[idx].to(device, dtype)
            y_t = encode_labels(real.labels[idx], k, config.label_encoding).to(device, dtype)
            if isinstance(kernel, ConvNetRFKernel):  # RFAD: fresh random networks every step
                step_seed = int(torch.randint(2**62, (1,), generator=gen))
                kernel = kernel.redraw(step_seed, models=config.rf_models)
            # KRR prediction from the support, MSE, Adam step
            loss, acc = kip_loss(x_s, y_s, x_t, y_t, kernel, config.reg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if mask is not None:
                x_s.grad.masked_fill_(mask, 0.0)
            opt.step()
            with torch.no_grad():
                if config.clip:
                    x_s.copy_(torch.minimum(torch.maximum(x_s, lo), hi))
                if mask is not None:
                    x_s.copy_(torch.where(mask, frozen, x_s))
            history.append(loss.item())
            bar.advance(loss=history[-1], acc=acc.item())
            if it == 0 or (it + 1) % 100 == 0:
                log.info("kip step %d: loss %.5f, target acc %.3f", it + 1, history[-1], acc.item())

    extra: dict = {}
    if history:
        extra["kip"] = {
            "first_loss": history[0],
            "final_loss": history[-1],
            "final_target_accuracy": acc.item(),
        }
    if config.rho > 0:
        extra["privacy"] = {
            "mechanism": "kip-rho",
            "rho": config.rho,
            "mask_seed": mask_seed,
            "pixels_fixed_per_image": int(mask[0, 0].sum()),
        }
    if config.learn_labels:
        out_labels = y_s.detach().float()
        extra["label_kind"] = "targets"
    else:
        out_labels = labels
    return make_set(
        x_s.detach().float(),
        out_labels,
        real,
        method="kip",
        ipc=ipc,
        seed=seed,
        iterations=config.iterations,
        config=config,
        extra=extra,
    )


def _kernel_config(syn: SyntheticSet) -> KIPConfig:
    """The KRR predictor of a set: its own kernel hyper-parameters where it records them."""
    hp = syn.meta.get("hyperparameters") or {}
    names = {f.name for f in fields(KIPConfig)}
    return KIPConfig(**{key: hp[key] for key in _KERNEL_KEYS if key in hp and key in names})


@torch.no_grad()
def kip_accuracy(
    syn: SyntheticSet,
    test: LabeledImages,
    config: KIPConfig | None = None,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 2048,
) -> float:
    """Test accuracy of kernel ridge regression with the set as support.

    The kernel (kind, its hyper-parameters and, for ``convnet``, the ``rf_seed`` draw; ridge;
    label encoding) is ``config``'s if given, else
    the one recorded in the set's provenance (KIPConfig defaults for a set from another method).
    Hard labels are encoded like in training; learned targets are used as they are."""
    cfg = config or _kernel_config(syn)
    cfg.validate()
    device = torch.device(device)
    kernel = cfg.kernel_fn(syn.images.shape[1], tuple(syn.images.shape[2:]))
    x_s = syn.images.to(device, torch.float64)
    if syn.labels.is_floating_point():
        y_s = syn.labels.to(device, torch.float64)
    else:
        y_s = encode_labels(syn.labels, syn.num_classes, cfg.label_encoding).to(device)
    k_ss = kernel(x_s)
    correct = 0
    for i in range(0, len(test), batch_size):
        x_t = test.images[i : i + batch_size].to(device, torch.float64)
        pred = krr_predict(kernel(x_t, x_s), k_ss, y_s, cfg.reg)
        correct += int((pred.argmax(1).cpu() == test.labels[i : i + batch_size]).sum())
    return correct / len(test)
