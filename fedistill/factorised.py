"""Factorised synthetic sets: what is stored (and uploaded) is not the images a model trains
on, but a smaller code the library decodes into them. One function, :func:`decode`, turns any
set into plain images; evaluation, the FedDM engine and the attacks call it, so they all see
the same images. An ordinary set decodes to itself.

A factorised set names its decoder in its metadata (``meta["decoder"]``):

* ``"multi-formation"`` (IDC, Kim et al. ICML 2022), with ``meta["factor"] = f`` in
  ``1 … MAX_FACTOR``: every stored H×W image holds an f×f grid of (H/f)×(W/f) sub-images
  (row-major tiles); decoding splits the tiles and upsamples each to H×W (bilinear, as IDC),
  so N stored images decode to N·f² images, each with its stored image's label, in stored order
  (image-major: the f² images of stored image 0 first).
* ``"haba"`` (HaBa, Liu et al. NeurIPS 2022), with ``meta["haba"] = {"hallucinators": H,
  "channels": c, "kernel": k}``: the stored images are the bases; the set carries H small
  hallucinators as extra tensors (:data:`HABA_TENSORS`, stacked over the H hallucinators).
  Hallucinator j maps a base b to ``dec_j(σ_j ⊙ relu(enc_j(b)) + μ_j)`` (``enc_j``: a k×k
  conv C→c; ``dec_j``: a k×k conv c→C; σ_j, μ_j: c-vectors, the per-hallucinator scale and
  shift); N bases decode to N·H images, base-major, each with its base's label.

The extra tensors are plain float32 arrays whose shapes follow exactly from the metadata
(:func:`extra_shapes`); the file loader (:mod:`fedistill.synthetic`) refuses a missing, extra or
misshapen one, and nothing is ever unpickled: decoding runs this module's code, never code from
the file.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fedistill.errors import SyntheticSetError

MULTI_FORMATION = "multi-formation"
HABA = "haba"
DECODERS = (MULTI_FORMATION, HABA)
MAX_FACTOR = 4  # f² ≤ 16 decoded images per stored image
MAX_HALLUCINATORS = 16
MAX_HABA_CHANNELS = 64
HABA_KERNELS = (1, 3, 5)
MAX_DECODED_IMAGES = 200_000  # a server never pools more decoded images than this from one set
HABA_TENSORS = (
    "haba.enc_weight",
    "haba.enc_bias",
    "haba.scale",
    "haba.shift",
    "haba.dec_weight",
    "haba.dec_bias",
)


# --------------------------------------------------------------------------- multi-formation


def split(images: Tensor, factor: int) -> Tensor:
    """N×C×H×W → (N·f²)×C×(H/f)×(W/f): the f×f tiles of every image, row-major, image-major."""
    n, c, h, w = images.shape
    if h % factor or w % factor:
        raise SyntheticSetError(f"factor {factor} does not divide the image size {h}×{w}")
    s, t = h // factor, w // factor
    tiles = images.reshape(n, c, factor, s, factor, t).permute(0, 2, 4, 1, 3, 5)
    return tiles.reshape(n * factor * factor, c, s, t)


def pack(sub: Tensor, factor: int) -> Tensor:
    """The inverse of :func:`split`: (N·f²)×C×h×w → N×C×(f·h)×(f·w)."""
    m, c, h, w = sub.shape
    if m % (factor * factor):
        raise SyntheticSetError(f"{m} sub-images do not fill stored images of {factor}² tiles")
    n = m // (factor * factor)
    grid = sub.reshape(n, factor, factor, c, h, w).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(n, c, factor * h, factor * w)


def multi_formation(images: Tensor, factor: int) -> Tensor:
    """IDC's decoder, differentiable: split into f² tiles, upsample each back to H×W
    (bilinear, ``align_corners=False``). Factor 1 is the identity."""
    if factor == 1:
        return images
    h, w = images.shape[-2:]
    return F.interpolate(split(images, factor), size=(h, w), mode="bilinear", align_corners=False)


def downsample(images: Tensor, factor: int) -> Tensor:
    """Area-average ``images`` by ``factor`` (what the IDC initialisation puts in a tile)."""
    return F.avg_pool2d(images, factor) if factor > 1 else images


# --------------------------------------------------------------------------- HaBa hallucinators


def haba_arch(meta: dict[str, Any]) -> tuple[int, int, int]:
    """(hallucinators, channels, kernel) from ``meta["haba"]``, checked."""
    arch = meta.get("haba")
    if not isinstance(arch, dict) or set(arch) != {"hallucinators", "channels", "kernel"}:
        raise SyntheticSetError(
            f"a 'haba' set needs meta 'haba' = {{hallucinators, channels, kernel}}, got {arch!r}"
        )
    h, c, k = arch["hallucinators"], arch["channels"], arch["kernel"]
    for name, v, hi in (
        ("hallucinators", h, MAX_HALLUCINATORS),
        ("channels", c, MAX_HABA_CHANNELS),
    ):
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= hi:
            raise SyntheticSetError(f"haba {name} must be an integer in 1..{hi}, got {v!r}")
    if k not in HABA_KERNELS or isinstance(k, bool):
        raise SyntheticSetError(f"haba kernel must be one of {HABA_KERNELS}, got {k!r}")
    return h, c, k


def extra_shapes(meta: dict[str, Any], channels: int) -> dict[str, tuple[int, ...]]:
    """The exact extra tensors (name → shape) a set with this metadata must carry (none for an
    ordinary or a multi-formation set)."""
    if meta.get("decoder") != HABA:
        return {}
    h, c, k = haba_arch(meta)
    return {
        "haba.enc_weight": (h, c, channels, k, k),
        "haba.enc_bias": (h, c),
        "haba.scale": (h, c),
        "haba.shift": (h, c),
        "haba.dec_weight": (h, channels, c, k, k),
        "haba.dec_bias": (h, channels),
    }


def hallucinate(bases: Tensor, params: dict[str, Tensor]) -> Tensor:
    """Every hallucinator applied to every base, differentiable in both: (N·H)×C×Hh×W,
    base-major (the H images of base 0 first)."""
    enc_w, enc_b = params["haba.enc_weight"], params["haba.enc_bias"]
    dec_w, dec_b = params["haba.dec_weight"], params["haba.dec_bias"]
    n_h, c_h, pad = enc_w.shape[0], enc_w.shape[1], enc_w.shape[-1] // 2
    n, ch, hh, ww = bases.shape
    # all hallucinators at once as grouped convolutions over H copies of the bases
    x = bases.repeat(1, n_h, 1, 1)  # N × (H·C) × Hh × W
    z = F.conv2d(
        x,
        enc_w.reshape(n_h * c_h, ch, *enc_w.shape[-2:]),
        enc_b.reshape(-1),
        padding=pad,
        groups=n_h,
    )
    z = torch.relu(z) * params["haba.scale"].reshape(1, -1, 1, 1) + params["haba.shift"].reshape(
        1, -1, 1, 1
    )
    out = F.conv2d(
        z,
        dec_w.reshape(n_h * ch, c_h, *dec_w.shape[-2:]),
        dec_b.reshape(-1),
        padding=pad,
        groups=n_h,
    )
    return out.reshape(n, n_h, ch, hh, ww).reshape(n * n_h, ch, hh, ww)


# --------------------------------------------------------------------------- the set


def check_layout(images: Tensor, meta: dict[str, Any], extras: dict[str, Tensor]) -> None:
    """The decoder named in ``meta`` is known, its parameters are in range and ``extras`` hold
    exactly the tensors it needs (float32, exact shapes). An ordinary set carries no extras.
    Raises SyntheticSetError naming the first violation."""
    decoder = meta.get("decoder")
    if decoder is not None and decoder not in DECODERS:
        raise SyntheticSetError(f"unknown decoder {decoder!r}; known: {', '.join(DECODERS)}")
    if decoder == MULTI_FORMATION:
        f = meta.get("factor")
        if not isinstance(f, int) or isinstance(f, bool) or not 1 <= f <= MAX_FACTOR:
            raise SyntheticSetError(
                f"multi-formation factor must be an integer in 1..{MAX_FACTOR}, got {f!r}"
            )
        h, w = images.shape[-2:]
        if h % f or w % f:
            raise SyntheticSetError(
                f"multi-formation factor {f} does not divide the image size {h}×{w}"
            )
    elif "factor" in meta:
        raise SyntheticSetError("'factor' belongs to a multi-formation set only")
    if decoder != HABA and "haba" in meta:
        raise SyntheticSetError("'haba' metadata belongs to a haba set only")
    want = extra_shapes(meta, images.shape[1])
    if set(extras) != set(want):
        raise SyntheticSetError(
            f"expected extra tensors {sorted(want) or 'none'}, found {sorted(extras) or 'none'}"
        )
    for name, shape in want.items():
        t = extras[name]
        if t.dtype != torch.float32 or tuple(t.shape) != shape:
            raise SyntheticSetError(
                f"extra tensor '{name}' must be float32 {shape}, got {t.dtype} {tuple(t.shape)}"
            )
        if not torch.isfinite(t).all():
            raise SyntheticSetError(f"extra tensor '{name}' contains NaN or infinite values")
    decoded = decoded_count(len(images), meta)
    if decoded > MAX_DECODED_IMAGES:
        raise SyntheticSetError(
            f"decodes to {decoded} images, over the cap of {MAX_DECODED_IMAGES}"
        )


def decoded_count(stored: int, meta: dict[str, Any]) -> int:
    """How many images ``stored`` stored images decode to."""
    decoder = meta.get("decoder")
    if decoder == MULTI_FORMATION:
        return stored * int(meta["factor"]) ** 2
    if decoder == HABA:
        return stored * haba_arch(meta)[0]
    return stored


def decode_images(images: Tensor, meta: dict[str, Any], extras: dict[str, Tensor]) -> Tensor:
    """The decoded images of stored ``images`` (differentiable; the methods train through it)."""
    decoder = meta.get("decoder")
    if decoder == MULTI_FORMATION:
        return multi_formation(images, int(meta["factor"]))
    if decoder == HABA:
        return hallucinate(images, extras)
    return images


def is_factorised(syn) -> bool:
    return syn.meta.get("decoder") is not None


def decode(syn):
    """The plain set a factorised ``syn`` stands for (``syn`` itself if it is not factorised):
    decoded images, each stored image's label repeated for the images it decodes to, and the
    metadata without the decoder's keys plus ``decoded_from`` (decoder, stored images)."""
    from fedistill.synthetic import SyntheticSet

    if not is_factorised(syn):
        return syn
    with torch.no_grad():
        images = decode_images(syn.images, syn.meta, syn.extras)
    per = len(images) // len(syn.images)
    labels = syn.labels.repeat_interleave(per, dim=0)
    meta = copy.deepcopy(syn.meta)
    decoder = meta.pop("decoder")
    meta.pop("factor", None)
    meta.pop("haba", None)
    meta["decoded_from"] = {"decoder": decoder, "stored_images": len(syn.images), "per_stored": per}
    return SyntheticSet(images, labels, meta)


def check_decoded(syn, lo: float, hi: float):
    """The server's check of a factorised upload after the stored set passed its own: decode
    it and require the decoded images to be finite and inside ``[lo, hi]`` (the dataset's
    plausible range). Returns the decoded set; raises SyntheticSetError."""
    if not is_factorised(syn):
        return syn
    out = decode(syn)  # the constructor refuses non-finite images
    x_min, x_max = float(out.images.min()), float(out.images.max())
    if not (math.isfinite(x_min) and math.isfinite(x_max)) or x_min < lo or x_max > hi:
        raise SyntheticSetError(
            f"decoded images span [{x_min:.3g}, {x_max:.3g}], outside the plausible range "
            f"[{lo:.3g}, {hi:.3g}]"
        )
    return out
