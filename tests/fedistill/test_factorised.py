"""Factorised sets: the multi-formation decoder round-trips its packing; haba files load
without unpickling, with exactly the tensors their metadata declares; the server's decoded
check."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedistill import factorised
from fedistill.errors import SyntheticSetError
from fedistill.synthetic import SyntheticSet

META = {
    "dataset": "digits",
    "mean": [0.5],
    "std": [0.25],
    "method": "t",
    "ipc": 2,
    "seed": 0,
    "iterations": 0,
    "num_classes": 10,
}


def _set(images, labels=None, extras=None, **meta):
    labels = torch.arange(len(images)) % 10 if labels is None else labels
    return SyntheticSet(images, labels, {**META, **meta}, extras or {})


# --------------------------------------------------------------------------- multi-formation


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_split_inverts_pack_exactly(factor):
    sub = torch.randn(3 * factor * factor, 2, 7, 5)
    packed = factorised.pack(sub, factor)
    assert packed.shape == (3, 2, 7 * factor, 5 * factor)
    assert torch.equal(factorised.split(packed, factor), sub)


def test_factor_one_decodes_to_the_stored_images():
    x = torch.randn(4, 1, 8, 8)
    syn = _set(x, decoder="multi-formation", factor=1)
    out = factorised.decode(syn)
    assert torch.equal(out.images, x) and torch.equal(out.labels, syn.labels)
    assert "decoder" not in out.meta and out.meta["decoded_from"]["per_stored"] == 1


def test_decode_of_packed_downsampled_images_returns_them():
    """Pack four 28-px images downsampled ×2 into one stored image; decoding returns each image
    (bilinear upsampling of its tile). Exact where the upsampling is exact: images constant on
    4×4 blocks come back exactly away from block edges, constant images exactly everywhere."""
    torch.manual_seed(0)
    blocks = torch.randn(4, 1, 7, 7)
    x = F.interpolate(blocks, scale_factor=4, mode="nearest")  # 4 × 1 × 28 × 28
    stored = factorised.pack(factorised.downsample(x, 2), 2)
    out = factorised.decode(
        _set(stored, labels=torch.tensor([3]), decoder="multi-formation", factor=2)
    )
    assert out.images.shape == (4, 1, 28, 28) and out.labels.tolist() == [3, 3, 3, 3]
    pos = torch.arange(28) % 4
    keep = (pos == 1) | (pos == 2)  # rows/columns not beside a 4-px block edge
    mask = keep[:, None] & keep[None, :]
    assert torch.allclose(out.images[..., mask], x[..., mask], atol=1e-6)
    const = torch.full((4, 1, 28, 28), 0.7)
    back = factorised.decode(
        _set(
            factorised.pack(factorised.downsample(const, 2), 2),
            labels=torch.tensor([1]),
            decoder="multi-formation",
            factor=2,
        )
    )
    assert torch.allclose(back.images, const, atol=1e-6)
    # and in general it is exactly the bilinear upsampling of each tile
    ref = F.interpolate(
        factorised.downsample(x, 2), size=(28, 28), mode="bilinear", align_corners=False
    )
    assert torch.allclose(out.images, ref, atol=1e-6)


def test_multi_formation_metadata_is_checked():
    x = torch.randn(2, 1, 8, 8)
    for bad in ({"factor": 5}, {"factor": 3}, {"factor": "2"}, {}):
        with pytest.raises(SyntheticSetError):
            _set(x, decoder="multi-formation", **bad)
    with pytest.raises(SyntheticSetError, match="unknown decoder"):
        _set(x, decoder="pickle")
    with pytest.raises(SyntheticSetError, match="multi-formation"):
        _set(x, factor=2)  # a factor without a decoder


def test_a_multi_formation_file_round_trips(tmp_path):
    syn = _set(torch.randn(2, 1, 8, 8), decoder="multi-formation", factor=2)
    back = SyntheticSet.load(syn.save(tmp_path / "s.safetensors"))
    assert torch.equal(back.images, syn.images) and back.meta["factor"] == 2
    assert torch.equal(factorised.decode(back).images, factorised.decode(syn).images)


def test_pooling_a_factorised_set_needs_decoding():
    syn = _set(torch.randn(2, 1, 8, 8), decoder="multi-formation", factor=2)
    with pytest.raises(SyntheticSetError, match="decode"):
        SyntheticSet.concat([syn])
    assert len(SyntheticSet.concat([factorised.decode(syn)])) == 8


# --------------------------------------------------------------------------- haba


def _haba(n_bases=3, h=2, c=4, k=3, channels=1, size=8):
    torch.manual_seed(0)
    meta = {"decoder": "haba", "haba": {"hallucinators": h, "channels": c, "kernel": k}}
    shapes = factorised.extra_shapes(meta, channels)
    extras = {name: torch.randn(shape) * 0.1 for name, shape in shapes.items()}
    return _set(torch.randn(n_bases, channels, size, size), extras=extras, **meta)


def test_a_haba_file_loads_without_unpickling_and_decodes_to_the_declared_count(
    tmp_path, monkeypatch
):
    import pickle

    syn = _haba(n_bases=3, h=5)
    path = syn.save(tmp_path / "h.safetensors")

    def refuse(*a, **k):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    back = SyntheticSet.load(path)
    assert set(back.extras) == set(factorised.HABA_TENSORS)
    out = factorised.decode(back)
    assert len(out) == 15 == factorised.decoded_count(3, back.meta)
    assert out.labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert torch.equal(out.images, factorised.decode(syn).images)
    assert back.nbytes() == syn.nbytes() > syn.images.numel() * 4 + 3 * 8


def test_hallucinator_is_the_per_hallucinator_conv_scale_shift_conv():
    syn = _haba(n_bases=2, h=3)
    e = syn.extras
    out = factorised.decode(syn).images
    for j in range(3):
        z = F.conv2d(syn.images, e["haba.enc_weight"][j], e["haba.enc_bias"][j], padding=1)
        z = torch.relu(z) * e["haba.scale"][j][:, None, None] + e["haba.shift"][j][:, None, None]
        ref = F.conv2d(z, e["haba.dec_weight"][j], e["haba.dec_bias"][j], padding=1)
        assert torch.allclose(out[j::3], ref, atol=1e-5)


@pytest.mark.parametrize("change", ["missing", "extra", "shape", "dtype", "nan", "no_decoder"])
def test_haba_files_with_wrong_tensors_are_refused(tmp_path, change):
    from safetensors.torch import save_file

    syn = _haba()
    tensors = {"images": syn.images, "labels": syn.labels, **syn.extras}
    meta = dict(syn.meta)
    if change == "missing":
        del tensors["haba.scale"]
    elif change == "extra":
        tensors["haba.payload"] = torch.zeros(3)
    elif change == "shape":
        tensors["haba.enc_weight"] = torch.zeros(2, 4, 1, 5, 5)
    elif change == "dtype":
        tensors["haba.shift"] = tensors["haba.shift"].double()
    elif change == "nan":
        tensors["haba.dec_bias"] = torch.full_like(tensors["haba.dec_bias"], float("nan"))
    elif change == "no_decoder":
        meta.pop("decoder")
        meta.pop("haba")
    import json

    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path), metadata={"fedistill": json.dumps(meta)})
    with pytest.raises(SyntheticSetError):
        SyntheticSet.load(path)


def test_haba_architecture_is_capped():
    for arch in (
        {"hallucinators": 17, "channels": 4, "kernel": 3},
        {"hallucinators": 2, "channels": 4, "kernel": 4},
    ):
        with pytest.raises(SyntheticSetError):
            factorised.extra_shapes({"decoder": "haba", "haba": arch}, 1)


# --------------------------------------------------------------------------- the server's check


def test_check_decoded_refuses_decoded_images_out_of_range():
    syn = _haba()
    lo, hi = -100.0, 100.0
    assert len(factorised.check_decoded(syn, lo, hi)) == 6
    loud = dict(syn.extras)
    loud["haba.dec_bias"] = torch.full_like(loud["haba.dec_bias"], 1e6)  # stored bases look honest
    bad = SyntheticSet(syn.images, syn.labels, syn.meta, loud)
    with pytest.raises(SyntheticSetError, match="decoded images"):
        factorised.check_decoded(bad, lo, hi)
    plain = _set(torch.randn(2, 1, 8, 8))
    assert factorised.check_decoded(plain, lo, hi) is plain
