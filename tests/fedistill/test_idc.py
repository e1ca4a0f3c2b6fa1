"""IDC (multi-formation): its loss falls on both bases, its init is the exposed real images
downsampled into tiles, its file decodes the same everywhere (evaluation, the FedDM server)."""

from __future__ import annotations

import pytest
import torch

from fedistill import factorised
from fedistill.distill import distill
from fedistill.engine import FedDMServer, FederationConfig
from fedistill.errors import ConfigError
from fedistill.evaluate import EvalConfig, evaluate_set
from fedistill.synthetic import SyntheticSet


@pytest.fixture(autouse=True)
def _one_thread(_two_threads):
    torch.set_num_threads(1)


def test_idc_on_dm_loss_falls_and_the_set_is_multi_formation(digits_train):
    syn = distill("idc", digits_train, 2, seed=0, iterations=30, batch_real=16)
    loss = syn.meta["idc_loss"]
    # measured (digits, IPC 2, f 2, 30 networks, seeds 0-2): 6.4-6.9 → 4.5-4.6 per class
    assert loss["last"] < 0.85 * loss["first"], loss
    assert syn.meta["decoder"] == "multi-formation" and syn.meta["factor"] == 2
    assert syn.images.shape == (20, 1, 8, 8)  # what is uploaded: IPC stored images per class
    out = factorised.decode(syn)
    assert out.images.shape == (80, 1, 8, 8)
    assert torch.equal(torch.bincount(out.labels), torch.full((10,), 8))


def _dc_objective(real, images, seeds=(11, 12, 13)):
    """IDC's matching loss on fixed networks (fresh, seeded) and fixed real batches."""
    from fedistill.distill.dc import synthetic_gradient
    from fedistill.distill.idc import conv_weights, gradient_distance
    from fedistill.models import build_model

    total = 0.0
    by_class = real.class_indices()
    for s in seeds:
        torch.manual_seed(s)
        net = build_model("convnet", real.info, width=128, depth=2, norm="instance")
        params = conv_weights(net)
        for c in range(10):
            xr = real.images[by_class[c][:64]]
            yr = torch.full((len(xr),), c)
            g_real = [g.detach() for g in synthetic_gradient(net, params, xr, yr)]
            xs = factorised.multi_formation(images[c : c + 1], 2)
            g_syn = synthetic_gradient(net, params, xs, torch.full((len(xs),), c))
            total += float(gradient_distance(list(g_syn), g_real, "l1").detach())
    return total


def test_idc_on_dc_loss_falls(digits_train):
    """IDC's gradient-matching objective, measured on three held-out networks, falls from the
    mix init to the distilled set (digits, IPC 1, 3 networks × 4 rounds)."""
    init = distill("idc", digits_train, 1, seed=0, base="dc", iterations=0)
    syn = distill("idc", digits_train, 1, seed=0, base="dc", iterations=3, inner_loop=4)
    before, after = (
        _dc_objective(digits_train, init.images),
        _dc_objective(digits_train, syn.images),
    )
    # measured (seeds 0, 1): 56,174 → 49,147 and 58,289 → 52,021 (ratios 0.875, 0.892)
    assert after < 0.95 * before, (before, after)
    lo = (0 - digits_train.info.mean[0]) / digits_train.info.std[0]
    hi = (1 - digits_train.info.mean[0]) / digits_train.info.std[0]
    assert lo - 1e-5 <= float(syn.images.min()) and float(syn.images.max()) <= hi + 1e-5  # clamped


def test_mix_init_tiles_are_the_exposed_real_images_downsampled(digits_train):
    record: dict = {}
    syn = distill("idc", digits_train, 1, seed=3, iterations=0, record=record)
    exposed = torch.from_numpy(record["exposed"])
    assert len(exposed) == 40  # 1 stored image × 2² tiles × 10 classes
    tiles = factorised.split(syn.images, 2)  # 40 × 1 × 4 × 4
    small = factorised.downsample(digits_train.images[exposed], 2)
    for t, lab in zip(tiles, syn.labels.repeat_interleave(4), strict=True):
        hit = ((small - t).abs().flatten(1).max(1).values < 1e-6).nonzero()
        assert len(hit) and int(digits_train.labels[exposed[hit[0, 0]]]) == int(lab)
    noise: dict = {}
    distill("idc", digits_train, 1, seed=3, iterations=0, init="noise", record=noise)
    assert len(noise["exposed"]) == 0


def test_the_loss_reaches_the_stored_images_through_the_decoder():
    """∇ of a loss on D(S) w.r.t. S is the adjoint of the upsampling applied per tile."""
    torch.manual_seed(0)
    s = torch.randn(2, 1, 8, 8, requires_grad=True)
    w = torch.randn(8, 1, 8, 8)
    (factorised.multi_formation(s, 2) * w).sum().backward()
    tiles = factorised.split(s.detach(), 2).requires_grad_(True)
    up = torch.nn.functional.interpolate(tiles, size=(8, 8), mode="bilinear", align_corners=False)
    (up * w).sum().backward()
    assert torch.allclose(s.grad, factorised.pack(tiles.grad, 2), atol=1e-6)


def test_idc_refuses_what_it_cannot_do(digits_train):
    with pytest.raises(ConfigError, match="divide"):
        distill("idc", digits_train, 1, factor=3)
    with pytest.raises(ConfigError):
        distill("idc", digits_train, 1, base="kip")
    net = torch.nn.Linear(1, 1)
    with pytest.raises(ConfigError, match="base 'dm'"):
        distill("idc", digits_train, 1, base="dc", model=net)


def test_evaluation_and_the_server_train_on_the_decoded_images(digits_train, digits_test):
    syn = distill("idc", digits_train, 1, seed=0, iterations=5, batch_real=16)
    ev = EvalConfig(epochs=2, num_models=1, dsa=False)
    assert len(evaluate_set(syn, digits_test, ev).accuracies) == 1  # decodes before training
    server = FedDMServer(digits_train.info, digits_test, FederationConfig(eval=ev, max_ipc=1))
    # client 2 ships honest-looking stored images whose decoding is not finite
    bad = SyntheticSet(syn.images.clone(), syn.labels, dict(syn.meta))
    bad.images[0, 0, 0, 0] = 1e4  # within no plausible range once decoded, nor stored
    record = server.aggregate(1, {1: syn, 2: bad})
    assert record.kept == [1] and "invalid set" in record.dropped[2]
    assert server.checked[1] is syn  # what travelled, for bytes up and the set-level attack
    assert len(server.sets[1]) == 40 and "decoder" not in server.sets[1].meta  # pooled decoded


def test_a_factorised_set_whose_decoding_leaves_the_range_is_dropped(digits_train, digits_test):
    """A haba set whose bases pass the stored-image check but whose hallucinators blow the
    decoded images up is refused by the decoded check."""
    ev = EvalConfig(epochs=1, num_models=1, dsa=False)
    meta = {
        "dataset": "digits",
        "mean": list(digits_train.info.mean),
        "std": list(digits_train.info.std),
        "method": "haba",
        "ipc": 1,
        "seed": 0,
        "iterations": 0,
        "num_classes": 10,
        "decoder": "haba",
        "haba": {"hallucinators": 2, "channels": 2, "kernel": 1},
    }
    shapes = factorised.extra_shapes(meta, 1)
    extras = {k: torch.zeros(v) for k, v in shapes.items()}
    extras["haba.dec_bias"] = torch.full(shapes["haba.dec_bias"], 1e5)
    bases = digits_train.images[:10]
    syn = SyntheticSet(bases, torch.arange(10), meta, extras)
    server = FedDMServer(digits_train.info, digits_test, FederationConfig(eval=ev))
    ok, dropped = server.check({7: syn})
    assert not ok and "decoded images" in dropped[7]


@pytest.mark.slow
def test_idc_beats_dm_at_ipc_1_on_mnist(mnist_root):
    """IDC-on-DM against DM at IPC 1 with the same budget (100 networks, 64 real images per
    class), on the MNIST subset (28 px: 14-px tiles), evaluated with 100 epochs, DSA, 2
    models. Measured: IDC 0.926, DM 0.869 (the mix init alone 0.859, random 0.645); a 3-point
    margin. (On 8-px digits the 4-px tiles lose too much: IDC 0.55 against DM 0.86.)"""
    from fedistill.data import load_dataset

    train = load_dataset("mnist", mnist_root, train=True)
    test = load_dataset("mnist", mnist_root, train=False)
    ev = EvalConfig(epochs=100, num_models=2)
    budget = {"iterations": 100, "batch_real": 64}
    dm = evaluate_set(distill("dm", train, 1, seed=0, **budget), test, ev).mean
    idc = evaluate_set(distill("idc", train, 1, seed=0, **budget), test, ev).mean
    assert idc >= dm + 0.03, (idc, dm)
