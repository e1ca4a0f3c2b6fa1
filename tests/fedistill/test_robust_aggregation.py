"""The pairwise filter's aggregation, on a stub scorer: exactly the accuracies we choose, so the
rule itself is under test (a pair agrees only if *both* directions do)."""

from __future__ import annotations

import torch

import fedistill.robust as robust
from fedistill.robust import ClientScore, FilterConfig
from fedistill.synthetic import SyntheticSet

K, PER_CLASS, HONEST, ATTACKER = 4, 6, (0, 1, 2, 3), 4
META = {
    "dataset": "digits",
    "mean": [0.0],
    "std": [1.0],
    "method": "random",
    "ipc": PER_CLASS,
    "seed": 0,
    "iterations": 0,
    "num_classes": K,
}


def _set(client: int) -> SyntheticSet:
    """Images that say whose they are (pixel 0) and their label (pixel 1)."""
    labels = torch.arange(K).repeat_interleave(PER_CLASS)
    images = torch.zeros(len(labels), 1, 8, 8)
    images[:, 0, 0, 0] = client
    images[:, 0, 0, 1] = labels.float()
    return SyntheticSet(images, labels, dict(META))


def _agrees(images_of: int, model_of: int) -> bool:
    """The asymmetric attacker: its model accepts everyone's images, nobody's model accepts
    its images."""
    return images_of != ATTACKER


def _stub(monkeypatch):
    monkeypatch.setattr(
        robust, "_train_scorer", lambda x, y, info, cfg, seed, device: int(x[0, 0, 0, 0])
    )

    def predict(model, images, device):
        owner = int(images[0, 0, 0, 0])
        labels = images[:, 0, 0, 1].long()
        guess = labels if _agrees(owner, model) else (labels + 1) % K
        return torch.nn.functional.one_hot(guess, K).float()

    monkeypatch.setattr(robust, "predict", predict)


def test_a_client_whose_images_no_other_model_accepts_is_rejected_whatever_its_model_accepts(
    monkeypatch, digits_train
):
    _stub(monkeypatch)
    sets = {c: _set(c) for c in (*HONEST, ATTACKER)}
    scores = {c: ClientScore() for c in sets}
    cfg = FilterConfig(per_class=False, feature_stats=False)
    robust._pairwise_test(sets, digits_train.info, cfg, scores, seed=0, device="cpu")
    # one direction of every pair with the attacker is perfect, the other is zero: the pair
    # agrees only if both do (min), so the attacker scores 0 and is named; taking the max of the
    # two directions would score it 1 and let it through
    assert scores[ATTACKER].agreement == 0.0 and scores[ATTACKER].reasons
    for c in HONEST:
        assert scores[c].agreement == 1.0 and not scores[c].reasons, (c, scores[c])
