"""Kernels of infinitely wide networks, and kernel ridge regression.

* :class:`FCKernel`: the NNGP and NTK of a fully-connected ReLU network, in closed form.
* :class:`ConvNetRFKernel`: the NNGP of the ConvNet (conv, instance norm, ReLU, average pooling),
  by random features.

Fully-connected, in closed form.

The network is the one of neural-tangents'
``stax.serial(Flatten(), [Dense(w, W_std, b_std), Relu()] * depth, Dense(k, W_std, b_std))``
with ``w_var = W_std²`` and ``b_var = b_std²``. As ``w → ∞`` its outputs are a Gaussian process
(the NNGP kernel ``K``) and gradient descent on it is kernel regression with the neural tangent
kernel ``Θ``. With inputs flattened to ``d`` features the recursion is (Cho & Saul's arc-cosine
kernel of degree 1 and 0 for ReLU and its derivative)::

    K¹(x, x') = w_var · x·x'/d + b_var                        Θ¹ = K¹
    c = K(x, x') / √(K(x, x) K(x', x')),  θ = arccos c
    E[relu(u) relu(v)] = √(K(x,x) K(x',x')) · (sin θ + (π − θ) cos θ) / (2π)
    E[relu'(u) relu'(v)] = (π − θ) / (2π)
    Kˡ⁺¹ = w_var · E[relu relu] + b_var                       Θˡ⁺¹ = Kˡ⁺¹ + w_var · Θˡ · E[relu' relu']

The NNGP is the same in the standard and the NTK parameterisation; the NTK is that of the NTK
parameterisation (weights ``W_std/√fan_in · ω``, biases ``b_std · β``, ω, β standard normal),
neural-tangents' default and what KIP (Nguyen, Chen & Lee, ICLR 2021) used.

The ``arccos`` terms have infinite derivatives at ``c = ±1`` (identical or opposite inputs)
while the kernel itself is smooth there in the NNGP case; both are implemented as autograd
functions with closed-form derivatives so that gradients with respect to either input stay
finite, and ``c`` is clamped to ``[-1, 1]``.

The ConvNet has no closed form here (pooling couples every pair of positions, so an exact
convolutional kernel costs O(positions²) per image pair). Its NNGP is the limit of the Gram
matrix of the features of randomly initialised networks as their width grows; with ``models``
networks of ``width`` channels each, :class:`ConvNetRFKernel` is that random-feature
approximation, ``K(x, x') = φ(x)·φ(x') / F`` with ``φ`` the concatenated embeddings (features
before the classifier, ``F`` of them) — the kernel of RFAD (Loo, Hasani, Amini & Rus, "Efficient
Dataset Distillation using Random Feature Approximation", NeurIPS 2022). A seed fixes the draw.

Kernel ridge regression (survey Eq. 8) with support ``(X_s, y_s)`` predicts
``K_ts (K_ss + λ · tr(K_ss)/n · I)⁻¹ y_s``: the regulariser scales with the mean eigenvalue, as in
KIP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from fedistill.errors import ConfigError
from fedistill.models import ConvNet

KINDS = ("nngp", "ntk")  # the fully-connected kernels; "convnet" is ConvNetRFKernel


class _ReluCov(torch.autograd.Function):
    """``J1(c)/π = (√(1−c²) + (π − arccos c) c) / π``: E[relu(u)relu(v)] for unit variances
    (times 2). Derivative ``(π − arccos c)/π``, finite everywhere."""

    @staticmethod
    def forward(ctx, c: Tensor) -> Tensor:
        c = c.clamp(-1.0, 1.0)
        theta = torch.arccos(c)
        ctx.save_for_backward(theta)
        return (torch.sin(theta) + (math.pi - theta) * c) / math.pi

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        (theta,) = ctx.saved_tensors
        return grad * (math.pi - theta) / math.pi


class _ReluDerivCov(torch.autograd.Function):
    """``J0(c)/π = (π − arccos c) / π``: E[relu'(u)relu'(v)] (times 2). Its derivative
    ``1/(π√(1−c²))`` diverges at ``c = ±1``; ``1 − c²`` is floored at the dtype's epsilon."""

    @staticmethod
    def forward(ctx, c: Tensor) -> Tensor:
        c = c.clamp(-1.0, 1.0)
        ctx.save_for_backward(c)
        return (math.pi - torch.arccos(c)) / math.pi

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        (c,) = ctx.saved_tensors
        tiny = torch.finfo(c.dtype).eps
        return grad / (math.pi * torch.sqrt((1 - c * c).clamp_min(tiny)))


def _sym_gram(a: Tensor) -> Tensor:
    """``a aᵀ``, symmetric bit for bit: a GEMM need not round ``(i, j)`` and ``(j, i)`` alike
    (AMD's and Intel's kernels differ), so the mean of the product and its transpose is taken;
    float addition commutes, so both triangles then hold the same bits."""
    g = a @ a.T
    return (g + g.T) / 2


def _check(depth: int, w_var: float, b_var: float, kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"kernel must be one of {KINDS}, got '{kind}'")
    if not isinstance(depth, int) or depth < 0:
        raise ConfigError(f"depth must be an integer ≥ 0, got {depth!r}")
    if not w_var > 0 or not b_var >= 0:
        raise ConfigError(f"need w_var > 0 and b_var ≥ 0, got {w_var}, {b_var}")


def fc_kernel_diag(
    x: Tensor, *, depth: int = 1, w_var: float = 2.0, b_var: float = 0.01, kind: str = "ntk"
) -> Tensor:
    """``k(x_i, x_i)`` for every row of ``x`` (N), without forming the N×N matrix."""
    _check(depth, w_var, b_var, kind)
    x = x.flatten(1)
    k = w_var * (x * x).sum(1) / x.shape[1] + b_var
    ntk = k
    for _ in range(depth):
        k = w_var * k / 2 + b_var
        ntk = k + w_var * ntk / 2
    return ntk if kind == "ntk" else k


def fc_kernel(
    x1: Tensor,
    x2: Tensor | None = None,
    *,
    depth: int = 1,
    w_var: float = 2.0,
    b_var: float = 0.01,
    kind: str = "ntk",
) -> Tensor:
    """The N1×N2 NNGP (``kind="nngp"``) or NTK (``kind="ntk"``) matrix between the rows of
    ``x1`` and ``x2`` (any shape N×…, flattened; same dtype and device). ``x2=None`` is the
    symmetric kernel of ``x1`` with itself, whose diagonal is exact. ``depth`` is the number of
    hidden ReLU layers (0: a linear model). Differentiable with respect to both inputs."""
    _check(depth, w_var, b_var, kind)
    a = x1.flatten(1)
    same = x2 is None
    b = a if same else x2.flatten(1)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"inputs have {a.shape[1]} and {b.shape[1]} features")
    d = a.shape[1]
    k = w_var * (_sym_gram(a) if same else a @ b.T) / d + b_var
    k1 = w_var * (a * a).sum(1) / d + b_var
    k2 = k1 if same else w_var * (b * b).sum(1) / d + b_var
    ntk = k
    eye = torch.eye(len(a), dtype=torch.bool, device=a.device) if same else None
    for _ in range(depth):
        norm = torch.sqrt(k1[:, None] * k2[None, :])
        c = k / norm
        if same:  # the diagonal is exactly c = 1; keeps rounding (and its gradient) out
            c = torch.where(eye, torch.ones_like(c), c)
        k_next = w_var * norm * _ReluCov.apply(c) / 2 + b_var
        if kind == "ntk":
            ntk = k_next + w_var * ntk * _ReluDerivCov.apply(c) / 2
        k = k_next
        k1 = w_var * k1 / 2 + b_var
        k2 = k1 if same else w_var * k2 / 2 + b_var
    return ntk if kind == "ntk" else k


@dataclass(frozen=True)
class FCKernel:
    """A fully-connected ReLU kernel with fixed hyper-parameters: ``FCKernel(...)(x1, x2)``."""

    kind: str = "ntk"
    depth: int = 1
    w_var: float = 2.0
    b_var: float = 0.01

    def __post_init__(self) -> None:
        _check(self.depth, self.w_var, self.b_var, self.kind)

    def __call__(self, x1: Tensor, x2: Tensor | None = None) -> Tensor:
        return fc_kernel(
            x1, x2, depth=self.depth, w_var=self.w_var, b_var=self.b_var, kind=self.kind
        )

    def diag(self, x: Tensor) -> Tensor:
        return fc_kernel_diag(
            x, depth=self.depth, w_var=self.w_var, b_var=self.b_var, kind=self.kind
        )

    def pair(self, x_t: Tensor, x_s: Tensor) -> tuple[Tensor, Tensor]:
        """``(K(x_t, x_s), K(x_s, x_s))``: what kernel ridge regression from ``x_s`` needs."""
        return self(x_t, x_s), self(x_s)


class ConvNetRFKernel:
    """The random-feature NNGP of ConvNet-``width``-``depth`` (instance norm, the evaluator's
    architecture): ``models`` networks drawn with PyTorch's default initialisation from
    ``seed`` (the global RNG is left untouched), frozen. ``K(x1, x2) = φ(x1) φ(x2)ᵀ / F``;
    differentiable with respect to the inputs. The networks run in float32 whatever the input
    dtype; the Gram matrix comes back in the input's dtype."""

    def __init__(
        self,
        channels: int,
        image_size: tuple[int, int],
        *,
        width: int = 32,
        depth: int = 3,
        models: int = 4,
        seed: int = 0,
    ) -> None:
        for name, value in (("width", width), ("depth", depth), ("models", models)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"convnet kernel: {name} must be an integer ≥ 1, got {value!r}")
        self.channels, self.image_size = channels, tuple(image_size)
        self.width, self.depth, self.models, self.seed = width, depth, models, seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            nets = [
                ConvNet(channels, 1, self.image_size, width=width, depth=depth, norm="instance")
                for _ in range(models)
            ]
        for net in nets:
            net.requires_grad_(False).eval()
        self._nets = nets

    def redraw(self, seed: int, models: int | None = None) -> ConvNetRFKernel:
        """The same kernel with networks drawn afresh from ``seed`` (``models`` of them, or as
        many as this draw has)."""
        return ConvNetRFKernel(
            self.channels,
            self.image_size,
            width=self.width,
            depth=self.depth,
            models=self.models if models is None else models,
            seed=seed,
        )

    def features(self, x: Tensor) -> Tensor:
        """``φ(x) / √F``: N×F, in ``x``'s dtype."""
        if next(self._nets[0].parameters()).device != x.device:
            self._nets = [net.to(x.device) for net in self._nets]
        x32 = x.float()
        phi = torch.cat([net.embed(x32) for net in self._nets], 1)
        return (phi / math.sqrt(phi.shape[1])).to(x.dtype)

    def __call__(self, x1: Tensor, x2: Tensor | None = None) -> Tensor:
        f1 = self.features(x1)
        return _sym_gram(f1) if x2 is None else f1 @ self.features(x2).T

    def diag(self, x: Tensor) -> Tensor:
        return self.features(x).pow(2).sum(1)

    def pair(self, x_t: Tensor, x_s: Tensor) -> tuple[Tensor, Tensor]:
        """``(K(x_t, x_s), K(x_s, x_s))`` with the support's features computed once."""
        f_s = self.features(x_s)
        return self.features(x_t) @ f_s.T, _sym_gram(f_s)


def krr_predict(k_ts: Tensor, k_ss: Tensor, y_s: Tensor, reg: float = 1e-6) -> Tensor:
    """Kernel ridge regression: ``K_ts (K_ss + reg · tr(K_ss)/n · I)⁻¹ y_s``.

    ``k_ts`` is T×n, ``k_ss`` n×n (symmetric PSD), ``y_s`` n×K (or n); differentiable in all
    three. ``k_ss`` is symmetrised first (its mean with its transpose), so the factorised matrix
    is symmetric whatever rounding produced it. Solved by Cholesky, falling back to a general
    solve if the matrix is not numerically positive definite (``reg = 0`` with duplicate support
    points)."""
    n = k_ss.shape[0]
    a = (k_ss + k_ss.T) / 2 + (abs(reg) * torch.trace(k_ss) / n) * torch.eye(
        n, dtype=k_ss.dtype, device=k_ss.device
    )
    rhs = y_s if y_s.ndim == 2 else y_s[:, None]
    chol, info = torch.linalg.cholesky_ex(a)
    alpha = torch.cholesky_solve(rhs, chol) if int(info) == 0 else torch.linalg.solve(a, rhs)
    pred = k_ts @ alpha
    return pred if y_s.ndim == 2 else pred[:, 0]
