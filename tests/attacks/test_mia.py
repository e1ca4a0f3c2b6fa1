"""Threshold attacks (Yeom et al.) and the target pipelines they attack, on digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attacks.mia import example_scores, logit_confidence, query_views, threshold_attack
from attacks.targets import PipelineConfig, build_target, train_pipeline
from fedistill.data import LabeledImages
from fedistill.errors import ConfigError, UnknownNameError
from fedistill.evaluate import accuracy


@pytest.fixture(autouse=True)
def _one_thread(_two_threads):
    torch.set_num_threads(1)  # tiny models: a second thread only adds contention


# A deliberately overfit target: a small MLP, many epochs, no weight decay, no augmentation.
OVERFIT = PipelineConfig(
    model="mlp", epochs=300, lr=0.05, weight_decay=0.0, dsa=False, batch_size=64
)


def _all_digits(digits_train, digits_test) -> LabeledImages:
    return LabeledImages(
        torch.cat([digits_train.images, digits_test.images]),
        torch.cat([digits_train.labels, digits_test.labels]),
        digits_train.info,
    )


def test_logit_confidence_is_log_odds_of_the_true_class():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 10, generator=g) * 3
    y = torch.randint(0, 10, (50,), generator=g)
    p = F.softmax(logits.double(), 1).gather(1, y[:, None]).squeeze(1)
    assert torch.allclose(logit_confidence(logits, y), torch.log(p / (1 - p)), atol=1e-9)
    assert torch.allclose(
        example_scores(logits, y, "loss"),
        -F.cross_entropy(logits.double(), y, reduction="none"),
        atol=1e-12,
    )
    # far beyond float32 saturation the score still ranks (no inf, no nan, no ties)
    big = torch.tensor([[200.0, 0.0], [300.0, 0.0], [-300.0, 0.0]])
    phi = logit_confidence(big, torch.tensor([0, 0, 0]))
    assert torch.isfinite(phi).all() and phi[1] > phi[0] > phi[2]


def test_query_views_shift_without_flipping_digits(digits_train):
    x = digits_train.images[:4]
    assert len(query_views(x, digits_train.info, shift=0)) == 1
    views = query_views(x, digits_train.info, shift=1)
    assert len(views) == 5  # identity + 4 shifts; no flips for digits
    assert all(v.shape == x.shape for v in views)
    assert torch.equal(views[0], x)
    # the "down" view (dy = +1) reads the row below: interior rows move up by one
    assert torch.equal(views[2][..., 1:6, :], x[..., 2:7, :])
    assert len(query_views(x, digits_train.info, shift=1, flip=True)) == 10


def test_pipeline_config_rejects_what_it_cannot_run():
    with pytest.raises(ConfigError, match="no option"):
        PipelineConfig(method="random", method_options={"bogus": 1}).validate()
    with pytest.raises(ConfigError, match="real"):
        PipelineConfig(method="real", method_options={"init": "noise"}).validate()
    with pytest.raises(UnknownNameError):
        PipelineConfig(method="no-such-method").validate()


def test_build_target_records_pools_and_budget(digits_train):
    pool = digits_train.subset(np.arange(60))
    cfg = PipelineConfig(method="random", ipc=2, model="mlp", epochs=3, dsa=False)
    t = build_target(cfg, pool, np.arange(0, 60, 2), seed=0)
    assert len(t.members) == 30 and len(t.nonmembers) == 30
    assert not set(t.members) & set(t.nonmembers)
    assert t.member_mask.sum() == 30 and t.member_mask[0] and not t.member_mask[1]
    assert t.synthetic is not None and len(t.synthetic) == 20
    # exposed: the 20 pool images random copied into the set, all of them members
    assert t.exposed is not None and len(t.exposed) == 20 and set(t.exposed) <= set(t.members)
    x, r = t.synthetic.images.flatten(1), pool.images[t.exposed].flatten(1)
    assert (x[:, None] == r[None]).all(2).any(0).all()
    assert t.exposed_mask.sum() == 20 and not (t.exposed_mask & ~t.member_mask).any()
    assert t.budget["train_examples"] == 20 and t.budget["source_examples"] == 30
    assert t.budget["train_steps"] == 3 and t.budget["method"] == "random"
    assert cfg.label == "random-ipc2"
    assert PipelineConfig(method="random", name="baseline").label == "baseline"
    _, syn, budget = train_pipeline(PipelineConfig(model="mlp", epochs=2, dsa=False), pool, seed=1)
    assert syn is None and budget["train_examples"] == 60 and budget["ipc"] is None


def test_loss_attack_beats_an_overfit_model(digits_train, digits_test):
    """30 members memorised by a small MLP, 500 non-members from the same distribution."""
    rng = np.random.default_rng(0)
    order = rng.permutation(len(digits_train))
    pool = digits_train.subset(order[:530])
    target = build_target(OVERFIT, pool, np.arange(30), seed=0)
    members, nonmembers = pool.subset(target.members), pool.subset(target.nonmembers)
    assert accuracy(target.model, members) == 1.0  # it did memorise them
    res = threshold_attack(target.model, members, nonmembers, "loss")
    assert res.metrics.auc > 0.8
    assert res.metrics.balanced_accuracy > 0.7
    conf = threshold_attack(target.model, members, nonmembers, "confidence")
    assert conf.metrics.auc == pytest.approx(res.metrics.auc, abs=0.01)  # monotone in each other


def test_loss_attack_is_chance_on_a_model_that_never_saw_the_pools(digits_train, digits_test):
    """Train on 150 examples; 'members' and non-members are two disjoint unseen halves."""
    data = _all_digits(digits_train, digits_test)
    order = np.random.default_rng(1).permutation(len(data))
    train, rest = order[:150], order[150:]
    model, _, _ = train_pipeline(OVERFIT, data.subset(train), seed=0)
    half = len(rest) // 2  # ≈ 820 each: chance AUC has std ≈ 0.014
    res = threshold_attack(model, data.subset(rest[:half]), data.subset(rest[half:]), "loss")
    assert abs(res.metrics.auc - 0.5) < 0.05
    assert res.metrics.n_in >= 800 and res.metrics.n_out >= 800


def test_attacked_utility_is_measured_on_the_attacked_sets(digits_train, digits_test):
    """The accuracy of the target itself (random IPC 1 from its 200 members), beside the same
    pipeline on all 1,257 training images or a figure measured elsewhere."""
    from attacks.targets import attacked_utility

    pool = digits_train.subset(np.arange(400))
    cfg = PipelineConfig(method="random", ipc=1, model="mlp", epochs=30, dsa=False)
    t = build_target(cfg, pool, np.arange(0, 400, 2), seed=0)
    out = attacked_utility(t, digits_test, full_accuracy=0.97)
    assert out["attacked"]["source_examples"] == 200 and out["attacked"]["train_examples"] == 10
    assert 0.2 < out["attacked"]["accuracy"] < 0.9
    assert out["gap"] == pytest.approx(0.97 - out["attacked"]["accuracy"])
    full = attacked_utility(t, digits_test, full_data=digits_train)
    assert full["full_data"]["source_examples"] == len(digits_train)
    assert attacked_utility(t, digits_test)["full_data"] is None


def test_a_factorised_sets_target_trains_on_the_images_it_decodes_to(digits_train):
    """IDC stores f² sub-images per image: the attacked model trains on the decoded set (4× the
    stored images at f = 2), and the set kept for the set-level attack is what was uploaded."""
    cfg = PipelineConfig(
        method="idc",
        ipc=1,
        method_options={"iterations": 2, "batch_real": 8, "width": 8},
        model="mlp",
        epochs=2,
        dsa=False,
    )
    record: dict = {}
    _, syn, budget = train_pipeline(cfg, digits_train, seed=0, record=record)
    assert syn.meta["decoder"] == "multi-formation" and len(syn) == 10
    assert budget["train_examples"] == 4 * len(syn)
    assert len(record["exposed"]) == 4 * len(syn)  # the mix init: f² real images per tile
