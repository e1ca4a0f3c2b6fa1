"""The closed-form FC ReLU kernels against wide random networks, and kernel ridge regression.

Tolerances are on the normalised error ``|K̂ − K| / √(K(x,x) K(x',x'))`` (max over pairs). Over
five Monte-Carlo seeds the estimates below measured 1.0–1.7 % (NNGP, depth 1), 1.2–2.7 % (NNGP,
depth 2) and 1.0–3.8 % (empirical NTK, width 256, 64 networks); a wrong kernel (one layer deeper,
NNGP for NTK) is off by 20–70 %.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import jacrev

from fedistill.errors import ConfigError
from fedistill.kernels import ConvNetRFKernel, FCKernel, fc_kernel, krr_predict

W_VAR, B_VAR = 2.0, 0.1
NTK_TOL = 0.06


def _inputs(digits_train, n=10) -> torch.Tensor:
    x = digits_train.images[:n].flatten(1).double()
    # opposite and rescaled inputs exercise c = −1 and c = 1 off the diagonal
    return torch.cat([x, -x[:2], 0.5 * x[:1]])


def _err(est: torch.Tensor, ref: torch.Tensor) -> float:
    s = ref.diag().sqrt()
    return float(((est - ref).abs() / (s[:, None] * s[None, :])).max())


def _mc_nngp(x: torch.Tensor, depth: int, width: int, draws: int, seed: int = 1) -> torch.Tensor:
    """E[f(x) f(x')] over random finite networks (standard normal weights scaled by
    √(w_var/fan_in), biases by √b_var); the readout's expectation is taken exactly."""
    g = torch.Generator().manual_seed(seed)
    est = torch.zeros(len(x), len(x), dtype=torch.float64)
    for _ in range(draws):
        a, fan = x, x.shape[1]
        for _ in range(depth):
            w = torch.randn(fan, width, generator=g, dtype=torch.float64)
            b = torch.randn(width, generator=g, dtype=torch.float64)
            a = torch.relu(math.sqrt(W_VAR / fan) * a @ w + math.sqrt(B_VAR) * b)
            fan = width
        est += W_VAR * a @ a.T / fan + B_VAR
    return est / draws


@pytest.mark.parametrize("depth,width,draws,tol", [(1, 16384, 8, 0.03), (2, 256, 400, 0.045)])
def test_nngp_matches_monte_carlo_of_wide_relu_networks(digits_train, depth, width, draws, tol):
    x = _inputs(digits_train)
    k = fc_kernel(x, depth=depth, w_var=W_VAR, b_var=B_VAR, kind="nngp")
    est = _mc_nngp(x, depth, width, draws)
    assert _err(est, k) < tol
    # the comparison has power: the kernel of another depth is far outside the tolerance
    wrong = fc_kernel(x, depth=depth + 1, w_var=W_VAR, b_var=B_VAR, kind="nngp")
    assert _err(est, wrong) > 3 * tol


def _finite_net(depth: int, width: int, din: int, g: torch.Generator) -> dict:
    params, fan = {}, din
    for layer in range(depth + 1):
        out = 1 if layer == depth else width
        params[f"w{layer}"] = torch.randn(fan, out, generator=g, dtype=torch.float64)
        params[f"b{layer}"] = torch.randn(out, generator=g, dtype=torch.float64)
        fan = out
    return params


def _forward(params: dict, x: torch.Tensor, depth: int) -> torch.Tensor:
    """NTK parameterisation: h = √(w_var/fan_in) · a ω + √b_var · β."""
    a = x
    for layer in range(depth + 1):
        w = params[f"w{layer}"]
        h = math.sqrt(W_VAR / w.shape[0]) * a @ w + math.sqrt(B_VAR) * params[f"b{layer}"]
        a = torch.relu(h)
    return h[:, 0]


@pytest.mark.parametrize("depth", [1, 2])
def test_ntk_matches_empirical_ntk_of_wide_network(digits_train, depth):
    x = _inputs(digits_train, n=8)
    theta = fc_kernel(x, depth=depth, w_var=W_VAR, b_var=B_VAR, kind="ntk")
    g = torch.Generator().manual_seed(0)
    draws, width = 64, 256
    est = torch.zeros_like(theta)
    for _ in range(draws):
        params = _finite_net(depth, width, x.shape[1], g)
        jac = jacrev(_forward)(params, x, depth)  # per-input gradients w.r.t. every parameter
        est += sum(j.flatten(1) @ j.flatten(1).T for j in jac.values())
    est /= draws
    assert _err(est, theta) < NTK_TOL
    nngp = fc_kernel(x, depth=depth, w_var=W_VAR, b_var=B_VAR, kind="nngp")
    assert _err(est, nngp) > 3 * NTK_TOL


@pytest.mark.parametrize("kind", ["nngp", "ntk"])
@pytest.mark.parametrize("depth", [0, 1, 3])
def test_kernel_is_symmetric_psd_and_consistent(digits_train, kind, depth):
    x = digits_train.images[:40].double()
    y = digits_train.images[40:55].double()
    kern = FCKernel(kind, depth, W_VAR, B_VAR)
    k = kern(x)
    assert torch.equal(k, k.T)
    assert torch.linalg.eigvalsh(k).min() > -1e-10 * k.trace()
    torch.testing.assert_close(k.diag(), kern.diag(x))
    # the cross kernel agrees with the self kernel and is transposed by swapping inputs
    torch.testing.assert_close(kern(x, x.clone()), k)
    torch.testing.assert_close(kern(x, y), kern(y, x).T)
    # float32 agrees with float64
    torch.testing.assert_close(
        kern(x.float(), y.float()).double(), kern(x, y), rtol=1e-4, atol=1e-5
    )


def test_gradients_are_finite_and_correct(digits_train):
    x = digits_train.images[:6].flatten(1).double()
    y = digits_train.images[6:10].flatten(1).double()
    for kind in ("nngp", "ntk"):
        f = FCKernel(kind, 2, W_VAR, B_VAR)
        # analytic derivatives of the arc-cosine terms against finite differences
        assert torch.autograd.gradcheck(f, (x.clone().requires_grad_(), y.clone().requires_grad_()))
        # identical rows (c = 1) in the self and the cross kernel: finite gradients
        for dtype in (torch.float32, torch.float64):
            a = x.detach().to(dtype).requires_grad_()
            (f(a).sum() + f(a, a.detach()[:3]).sum() + f(a, -a.detach()[:2]).sum()).backward()
            assert torch.isfinite(a.grad).all()


def test_bad_kernel_parameters_are_rejected():
    with pytest.raises(ConfigError):
        fc_kernel(torch.ones(2, 3), kind="rbf")
    with pytest.raises(ConfigError):
        fc_kernel(torch.ones(2, 3), depth=-1)
    with pytest.raises(ConfigError):
        FCKernel("ntk", 1, 0.0, 0.1)


def test_krr_interpolates_and_scales_ridge_by_trace(digits_train):
    x = digits_train.images[:30].double()
    y = torch.nn.functional.one_hot(digits_train.labels[:30], 10).double() - 0.1
    k = fc_kernel(x, kind="ntk")
    torch.testing.assert_close(krr_predict(k, k, y, reg=0.0), y, rtol=0, atol=1e-6)
    reg = 0.3
    ref = k @ torch.linalg.solve(k + reg * k.trace() / 30 * torch.eye(30, dtype=k.dtype), y)
    torch.testing.assert_close(krr_predict(k, k, y, reg=reg), ref)
    torch.testing.assert_close(krr_predict(k, k, y[:, 0], reg=reg), ref[:, 0])


def test_krr_on_digits_beats_chance(digits_train, digits_test):
    idx = torch.cat([c[:5] for c in digits_train.class_indices()])  # 5 per class
    xs, ys = digits_train.images[idx].double(), digits_train.labels[idx]
    xt = digits_test.images.double()
    kern = FCKernel("ntk", 1, W_VAR, 0.01)
    pred = krr_predict(kern(xt, xs), kern(xs), torch.nn.functional.one_hot(ys, 10).double())
    acc = float((pred.argmax(1) == digits_test.labels).float().mean())
    assert acc > 0.7  # chance is 0.1


def _rf(models: int, seed: int) -> ConvNetRFKernel:
    return ConvNetRFKernel(1, (8, 8), width=16, depth=3, models=models, seed=seed)


def test_convnet_kernel_is_a_seeded_psd_gram_and_leaves_global_rng_alone(digits_train):
    x = digits_train.images[:12].double()
    state = torch.get_rng_state()
    k = _rf(2, seed=5)(x)
    assert torch.equal(torch.get_rng_state(), state)  # drawing the networks used its own seed
    assert torch.equal(k, _rf(2, seed=5)(x))  # the seed fixes the draw ...
    assert not torch.allclose(k, _rf(2, seed=6)(x))  # ... and another seed is another draw
    assert torch.equal(_rf(2, seed=5).redraw(6)(x), _rf(2, seed=6)(x))
    assert k.dtype == torch.float64 and torch.equal(k, k.T)  # symmetric by construction
    assert torch.linalg.eigvalsh(k).min() > -1e-8
    assert torch.allclose(_rf(2, seed=5).diag(x), k.diag())
    cross = _rf(2, seed=5)(x[:4], x)
    assert torch.allclose(cross, k[:4], atol=1e-6)
    k_ts, k_ss = _rf(2, seed=5).pair(x[:4], x)  # the support's features computed once
    assert torch.allclose(k_ts, cross) and torch.allclose(k_ss, k)


def test_convnet_kernel_draws_converge_as_networks_are_added(digits_train):
    """A Monte-Carlo estimate of one kernel: two independent draws disagree less and less.
    Measured (seeds 0-3 against 10-13, relative Frobenius gap): 1 network 2.6-9.1 % apart
    (mean 5.3 %), 16 networks 0.6-1.3 % (mean 1.1 %); Monte-Carlo error shrinks as 1/√models."""
    x = digits_train.images[:16].double()

    def gap(models: int, a: int, b: int) -> float:
        ka, kb = _rf(models, a)(x), _rf(models, b)(x)
        return float((ka - kb).norm() / ka.norm())

    few = sum(gap(1, s, 10 + s) for s in range(4)) / 4
    many = sum(gap(16, s, 10 + s) for s in range(4)) / 4
    assert many < 0.4 * few  # 1/√16 = 0.25 expected


def test_convnet_kernel_is_differentiable_in_its_inputs(digits_train):
    x = digits_train.images[:6].double().requires_grad_(True)
    kern = _rf(2, seed=1)
    kern(x, digits_train.images[6:30].double()).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_convnet_kernel_rejects_bad_shapes_of_network():
    with pytest.raises(ConfigError):
        ConvNetRFKernel(1, (8, 8), models=0)
    with pytest.raises(ConfigError):
        ConvNetRFKernel(1, (8, 8), width=-3)
