"""The server's view: membership inference on the synthetic set itself, and memorisation.

The server — and anyone a set is shared with — sees the synthetic *images*, not only a model
trained on them. When a pipeline copies real images into its set (``random``) or starts from
them and moves them little (real-initialised DM / DC / DSA / KIP), the set itself says who was
a member (Carlini, Feldman & Nasr, "No Free Lunch in 'Privacy for Free'", 2022). The attack:

    for every candidate x:  d(x) = min_{s ∈ S} dist(x, s)         score = −d(x)

with three distances:

* ``"l2"``: Euclidean distance in the dataset's normalised pixel space;
* ``"l2_shift"``: the same after undoing a per-class shift of the set. DM's updates move all
  images of a class much the same way (on digits, IPC 10, 50 iterations, the class-mean drift
  carries about half of each image's squared drift), so the attacker estimates each class's
  shift as the mean of ``s − NN(s)`` over the set (``NN``: nearest candidate of the class),
  subtracts it, and repeats (:func:`unshift`). On a copy (``random``) the shift is 0;
* ``"embed"``: a perceptual distance, ``1 − cos`` between the features of a fixed, randomly
  initialised ConvNet (seeded, instance norm; the kind of network DM matches under).

**Views** of a factorised set (IDC, HaBa: :mod:`fedistill.factorised`): the attack runs on
the ``"decoded"`` images the set stands for (what a model trains on), and on the
``"received"`` one — what actually travelled, at its stored resolution, without the library's
decoder (:func:`received_view`): for multi-formation (IDC) the f×f tiles of every stored image,
each with its stored image's label, against the candidates area-downsampled by f (what IDC's
"mix" init writes into a tile); for HaBa the stored bases (the hallucinators' weights are no
images) against the candidates as they are. An ordinary set is received as it decodes: one
view.

**Calibration** (optional, ``num_shadows > 0``): some candidates lie near *any* set (typical
digits). Shadow pipelines distil random halves of the pool; per candidate, the distances to
shadow sets that did not contain it give ``μ_out(x)``, and the calibrated score is
``(μ_out(x) − d(x)) / σ`` (σ pooled over candidates): an offline LiRA on the distance.

**Memorisation report** (:func:`memorisation_report`): the share of synthetic images within
distance ``d*`` of a real training image, where ``d*`` is a low percentile (1% by default) of
the within-class nearest-neighbour distances between *distinct* real images — "closer to a
training image than almost any two different digits of one class are to each other" — and a
picture of every synthetic image beside its nearest real one.

Results are per population (:func:`attacks.metrics.population_report`): ``"all"`` pipeline
members and the ``"exposed"`` members the method recorded, against the same non-members.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from attacks.lira import balanced_keep
from attacks.metrics import plot_roc, population_report, summarize
from attacks.targets import PipelineConfig, random_half
from fedistill.data import LabeledImages
from fedistill.distill import distill
from fedistill.errors import ConfigError
from fedistill.factorised import (
    HABA,
    MULTI_FORMATION,
    decode,
    decoded_count,
    downsample,
    is_factorised,
    split,
)
from fedistill.models import build_model
from fedistill.synthetic import SyntheticSet

log = logging.getLogger(__name__)

DISTANCES = ("l2", "l2_shift", "embed")
VIEWS = ("decoded", "received")  # what a model trains on; what the server receives


@dataclass
class SetMIAConfig:
    distances: tuple[str, ...] = DISTANCES
    embed_width: int = 128  # the random ConvNet's width
    embed_seed: int = 0  # its initialisation: fixed, so every set is measured the same way
    same_class: bool = True  # nearest synthetic image of the candidate's own class
    num_shadows: int = 0  # 0: uncalibrated −distance; else shadow pipelines (distil only)
    num_targets: int = 1  # independent target sets; their trials are pooled
    n_boot: int = 1000  # bootstrap replicates for the intervals
    memorisation_percentile: float = 1.0  # d* = this percentile of within-class NN distances

    def validate(self) -> None:
        bad = [d for d in self.distances if d not in DISTANCES]
        if bad or not self.distances:
            raise ConfigError(f"distances must be among {DISTANCES}, got {self.distances}")
        if self.num_shadows < 0 or self.num_shadows == 1:
            raise ConfigError("num_shadows must be 0 (no calibration) or ≥ 2")
        if self.num_targets < 1:
            raise ConfigError("num_targets must be ≥ 1")
        if not 0 < self.memorisation_percentile < 100:
            raise ConfigError("memorisation_percentile must lie in (0, 100)")


# --------------------------------------------------------------------------- distances


def _flat(x: Tensor) -> Tensor:
    return x.detach().to(torch.float64).flatten(1)


@torch.no_grad()
def random_embedding(
    images: Tensor, info: Any, width: int = 128, seed: int = 0, batch: int = 1024
) -> Tensor:
    """Unit-norm features of a fixed random ConvNet (seeded; depth 2 under 16 px, else 3)."""
    depth = 3 if min(info.height, info.width) >= 16 else 2
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        net = build_model("convnet", info, width=width, depth=depth).eval()
    finally:
        torch.random.set_rng_state(state)
    feats = torch.cat(
        [net.embed(images[i : i + batch].float()) for i in range(0, len(images), batch)]
    )
    return torch.nn.functional.normalize(feats.double(), dim=1)


def nearest(
    a: Tensor,
    b: Tensor,
    a_labels: Tensor | None = None,
    b_labels: Tensor | None = None,
    chunk: int = 2048,
) -> tuple[Tensor, Tensor]:
    """For each row of ``a``, the Euclidean distance to its nearest row of ``b``, and which.

    With labels, only rows of ``b`` of the same label count (all of ``b`` for a label that
    ``b`` lacks). Exact arithmetic (no ``‖a‖² + ‖b‖² − 2ab`` shortcut): a copy is at 0."""
    ds, ix = [], []
    have = None if b_labels is None else torch.zeros(int(b_labels.max()) + 1, dtype=torch.bool)
    if have is not None:
        have[b_labels] = True
    for i in range(0, len(a), chunk):
        d = torch.cdist(a[i : i + chunk], b, compute_mode="donot_use_mm_for_euclid_dist")
        if a_labels is not None and b_labels is not None and have is not None:
            la = a_labels[i : i + chunk]
            known = la < len(have)
            known[known.clone()] = have[la[known]]
            other = (la[:, None] != b_labels[None]) & known[:, None]
            d = d.masked_fill(other, float("inf"))
        v, j = d.min(1)
        ds.append(v)
        ix.append(j)
    return torch.cat(ds), torch.cat(ix)


def set_distances(
    syn: SyntheticSet,
    candidates: LabeledImages,
    kind: str = "l2",
    *,
    same_class: bool = True,
    width: int = 128,
    seed: int = 0,
) -> np.ndarray:
    """Per candidate: its distance to the nearest synthetic image (``"l2"`` or ``"embed"``),
    among those of its own class when ``same_class`` (the set's labels are public to whoever
    holds it; soft labels count by their argmax)."""
    la, lb = (candidates.labels, syn.hard_labels()) if same_class else (None, None)
    if kind == "l2":
        d, _ = nearest(_flat(candidates.images), _flat(syn.images), la, lb)
    elif kind == "l2_shift":
        x = _flat(candidates.images)
        d, _ = nearest(
            x, unshift(_flat(syn.images), syn.hard_labels(), x, candidates.labels), la, lb
        )
    elif kind == "embed":
        e_c = random_embedding(candidates.images, candidates.info, width, seed)
        e_s = random_embedding(syn.images, candidates.info, width, seed)
        d, _ = nearest(e_c, e_s, la, lb)
        d = d**2 / 2  # ‖u − v‖²/2 = 1 − cos for unit vectors
    else:
        raise ConfigError(f"unknown distance '{kind}'; choose one of {DISTANCES}")
    return d.numpy()


def unshift(
    syn: Tensor, syn_labels: Tensor, cand: Tensor, cand_labels: Tensor, rounds: int = 3
) -> Tensor:
    """The set with a per-class shift removed: ``δ_c = mean_{s ∈ S_c} (s − δ_c) − NN(s − δ_c)``
    iterated ``rounds`` times from ``δ_c = 0`` (``NN``: the nearest candidate of class ``c``).
    Flattened float64 rows in, the same out."""
    shift = torch.zeros_like(syn)
    for _ in range(rounds):
        _, j = nearest(syn - shift, cand, syn_labels, cand_labels)
        diff = syn - cand[j]
        for c in syn_labels.unique():
            m = syn_labels == c
            shift[m] = diff[m].mean(0)
    return syn - shift


# --------------------------------------------------------------------------- views


def received_view(
    syn: SyntheticSet, candidates: LabeledImages
) -> tuple[SyntheticSet, LabeledImages] | None:
    """What the server receives of a factorised ``syn``, as plain images beside the candidates
    brought to the same form; ``None`` for an ordinary set (received as it decodes).

    * multi-formation, factor f: the f×f tiles of every stored image (image-major, each with
      its stored image's label) against the candidates area-downsampled by f, with a
      :class:`~fedistill.data.DatasetInfo` of the tile size (the ``"embed"`` net's geometry);
    * haba: the bases against the candidates as they are (the hallucinators are no images).
    """
    decoder = syn.meta.get("decoder")
    if decoder is None:
        return None
    meta = copy.deepcopy(syn.meta)
    for key in ("decoder", "factor", "haba"):
        meta.pop(key, None)
    meta["received_from"] = {"decoder": decoder, "stored_images": len(syn)}
    if decoder == MULTI_FORMATION:
        f = int(syn.meta["factor"])
        tiles = split(syn.images, f)
        info = candidates.info
        tile_info = dataclasses.replace(info, height=info.height // f, width=info.width // f)
        cands = LabeledImages(downsample(candidates.images, f), candidates.labels, tile_info)
        return SyntheticSet(tiles, syn.labels.repeat_interleave(f * f, dim=0), meta), cands
    if decoder == HABA:
        return SyntheticSet(syn.images, syn.labels, meta), candidates
    raise ConfigError(f"no received view for decoder {decoder!r}")


def view_of(
    syn: SyntheticSet, candidates: LabeledImages, view: str = "decoded"
) -> tuple[SyntheticSet, LabeledImages]:
    """The set and the candidates as ``view`` compares them: ``"decoded"`` (:func:`decode`;
    candidates as they are) or ``"received"`` (:func:`received_view`; an ordinary set: the
    decoded view)."""
    if view not in VIEWS:
        raise ConfigError(f"unknown view '{view}'; choose one of {VIEWS}")
    if view == "received":
        got = received_view(syn, candidates)
        if got is not None:
            return got
    return decode(syn), candidates


def calibrate(target_d: np.ndarray, shadow_d: np.ndarray, shadow_in: np.ndarray) -> np.ndarray:
    """Offline calibration: ``log μ_out(x) − log d(x)``, ``μ_out(x)`` the mean distance of
    ``x`` to the shadow sets (K×N) whose pipelines were not given ``x``.

    A ratio, not a difference: a candidate's distance to sets that lack it scales with how
    far it sits from its class's mode (on DM real-init, digits IPC 10: 0.92 exposed TPR@1%FPR
    with 8 shadows against 0.69 for ``μ_out − d`` and 0.89 uncalibrated). A candidate with no
    OUT shadow takes the median ``μ_out`` of the others."""
    out = np.where(~shadow_in, shadow_d, np.nan)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mu = np.nanmean(out, axis=0)
    mu = np.where(np.isfinite(mu), mu, np.nanmedian(mu))
    floor = 1e-6 * max(float(np.nanmedian(mu)), 1e-12)
    return np.log(np.maximum(mu, floor)) - np.log(np.maximum(target_d, floor))


def set_scores(
    syn: SyntheticSet,
    candidates: LabeledImages,
    config: SetMIAConfig | None = None,
    *,
    view: str = "decoded",
    shadow_sets: list[SyntheticSet] | None = None,
    shadow_in: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per distance, every candidate's membership score against ``syn`` seen in ``view``
    (:func:`view_of`; higher: member): ``−d``, or calibrated on ``shadow_sets`` seen the same
    way (``shadow_in``, K×N: who each was given)."""
    config = config or SetMIAConfig()
    if shadow_sets is not None and (
        shadow_in is None or shadow_in.shape != (len(shadow_sets), len(candidates))
    ):
        raise ValueError("shadow_in must be K×N beside K shadow sets")
    kw = {"width": config.embed_width, "seed": config.embed_seed, "same_class": config.same_class}
    seen, cands = view_of(syn, candidates, view)
    shadows = [view_of(s, candidates, view) for s in shadow_sets or ()]
    out = {}
    for kind in config.distances:
        d = set_distances(seen, cands, kind, **kw)
        if shadow_sets is None:
            out[kind] = -d
        else:
            sd = np.stack([set_distances(s, c, kind, **kw) for s, c in shadows])
            out[kind] = calibrate(d, sd, shadow_in)
    return out


def set_attack(
    syn: SyntheticSet,
    candidates: LabeledImages,
    is_member: np.ndarray,
    exposed: np.ndarray | None = None,
    config: SetMIAConfig | None = None,
    *,
    view: str = "decoded",
    shadow_sets: list[SyntheticSet] | None = None,
    shadow_in: np.ndarray | None = None,
) -> dict[str, Any]:
    """The set-level attack on one set seen in ``view`` (``"decoded"`` or ``"received"``:
    :func:`view_of`), every distance, both populations.

    ``is_member``/``exposed`` are boolean masks over ``candidates``. With ``shadow_sets`` (and
    ``shadow_in``, K×N: which candidates each shadow pipeline was given) the scores are
    calibrated. Returns ``{distance: {"all": cell, "exposed": cell}}`` with the cells of
    :func:`attacks.metrics.metrics_dict`, plus ``"view"``, ``"calibrated"`` (bool) and
    ``"scores"``.
    """
    config = config or SetMIAConfig()
    config.validate()
    scores = set_scores(
        syn, candidates, config, view=view, shadow_sets=shadow_sets, shadow_in=shadow_in
    )
    out: dict[str, Any] = {"view": view, "calibrated": shadow_sets is not None, "scores": scores}
    for kind, score in scores.items():
        out[kind] = population_report(score, is_member, exposed, n_boot=config.n_boot)
    return out


# --------------------------------------------------------------------------- the experiment


def _distil(
    cfg: PipelineConfig, data: LabeledImages, seed: int, device: torch.device | str
) -> tuple[SyntheticSet, np.ndarray | None]:
    record: dict[str, Any] = {}
    syn = distill(
        cfg.method, data, cfg.ipc, seed=seed, device=device, record=record, **cfg.method_options
    )
    return syn, record.get("exposed")  # as stored: a factorised set is seen in both views


def run_set_mia(
    pool: LabeledImages,
    cfg: PipelineConfig,
    config: SetMIAConfig | None = None,
    *,
    pool_size: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    memorisation_png: str | Path | None = None,
    plot: str | Path | None = None,
) -> dict[str, Any]:
    """The server's view against one pipeline. The candidates are ``pool`` (or a random
    ``pool_size`` subset of it, drawn as :func:`attacks.lira.run_mia` draws its pool). Each of
    ``config.num_targets`` independent targets distils its own random half of the candidates
    (only the distillation runs, no model is trained); every candidate is scored against each
    target set and the trials of all targets are pooled (independent pipelines). With
    ``config.num_shadows`` shadow pipelines (each on a balanced half) the scores are
    calibrated. A factorised set is attacked in both views (:func:`view_of`): ``"attacks"``
    holds the decoded view, ``"received"`` the received one (``None`` for an ordinary set,
    whose received view is the decoded one). The memorisation report is the first target's
    (decoded images). ``plot``: a log-log ROC of every distance and view on all members and
    on the exposed ones.

    Returns a JSON-ready dict: ``{"pipeline", "pool_size", "num_targets", "members",
    "exposed", "calibrated", "num_shadows", "attacks": {distance: {"all": cell, "exposed":
    cell}}, "received": same or None, "set_images": {"stored", "decoded", "received"},
    "memorisation", "plot", "seconds"}`` — a cell has ``auc``, ``tpr_at_fpr`` (``"0.01"``,
    ``"0.001"``), ``ci95``, ``tpr_at_fpr_text``, ``fpr_resolution``, ``n_in``, ``n_out``;
    ``members``/``exposed`` are totals over targets; ``set_images`` counts the first target's
    images in each form (``"received"``: ``None`` for an ordinary set).
    """
    config = config or SetMIAConfig()
    config.validate()
    if cfg.method == "real":
        raise ConfigError("the set-level attack needs a distillation method, not 'real'")
    t0 = time.perf_counter()
    if pool_size is not None and pool_size < len(pool):
        pick = np.random.default_rng(seed + 1).choice(len(pool), pool_size, replace=False)
        pool = pool.subset(np.sort(pick))
    rng = np.random.default_rng(seed)
    n = len(pool)
    shadow_sets, keep = None, None
    if config.num_shadows:
        keep = balanced_keep(config.num_shadows, n, rng)
        shadow_sets = [
            _distil(cfg, pool.subset(np.nonzero(k)[0]), seed * 100_003 + 1 + i, device)[0]
            for i, k in enumerate(keep)
        ]
    scores: dict[str, dict[str, list[np.ndarray]]] = {}  # view → distance → per target
    member_masks, exposed_masks = [], []
    recorded = True
    mem: dict[str, Any] = {}
    sizes: dict[str, int | None] = {}
    for t in range(config.num_targets):
        members = random_half(n, rng)
        syn, local = _distil(cfg, pool.subset(members), seed * 100_003 + 50_000 + t, device)
        is_member = np.zeros(n, bool)
        is_member[members] = True
        exposed = np.zeros(n, bool)
        if local is None:
            recorded = False
        else:
            exposed[members[np.asarray(local, dtype=np.int64)]] = True
        for view in VIEWS if is_factorised(syn) else VIEWS[:1]:
            got = set_scores(syn, pool, config, view=view, shadow_sets=shadow_sets, shadow_in=keep)
            for k, v in got.items():
                scores.setdefault(view, {}).setdefault(k, []).append(v)
        member_masks.append(is_member)
        exposed_masks.append(exposed)
        if t == 0:
            received = received_view(syn, pool)
            sizes = {
                "stored": len(syn),
                "decoded": decoded_count(len(syn), syn.meta),
                "received": None if received is None else len(received[0]),
            }
            mem = memorisation_report(
                decode(syn),
                pool.subset(members),
                percentile=config.memorisation_percentile,
                png=memorisation_png,
            )
    truth = np.concatenate(member_masks)
    exp = np.concatenate(exposed_masks) if recorded else None
    reports = {
        view: {
            k: population_report(np.concatenate(v), truth, exp, n_boot=config.n_boot)
            for k, v in by_distance.items()
        }
        for view, by_distance in scores.items()
    }
    plot_path = None
    if plot is not None:
        curves = {}
        for view, by_distance in scores.items():
            prefix = "set" if len(scores) == 1 else view  # a factorised set: both views
            for k, v in by_distance.items():
                flat = np.concatenate(v)
                curves[f"{prefix} {k}"] = summarize(flat, truth)
                if exp is not None and exp.any():
                    sel = exp | ~truth
                    curves[f"{prefix} {k} · exposed"] = summarize(flat[sel], exp[sel])
        plot_path = str(
            plot_roc(curves, plot, title=f"{cfg.label} · server's view · {n} candidates")
        )
    return {
        "pipeline": cfg.to_dict(),
        "pool_size": n,
        "num_targets": config.num_targets,
        "members": int(truth.sum()),
        "exposed": None if exp is None else int(exp.sum()),
        "calibrated": shadow_sets is not None,
        "num_shadows": config.num_shadows,
        "attacks": reports["decoded"],
        "received": reports.get("received"),
        "set_images": sizes,
        "memorisation": mem,
        "plot": plot_path,
        "seconds": time.perf_counter() - t0,
    }


# --------------------------------------------------------------------------- memorisation


def within_class_nn_distances(real: LabeledImages) -> np.ndarray:
    """For every real image, the L2 distance to its nearest *distinct* image of its class
    (distance 0 — a duplicate — is skipped; a class of one image contributes nothing)."""
    out = []
    for idx in real.class_indices():
        if len(idx) < 2:
            continue
        x = _flat(real.images[idx])
        d = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
        d[d == 0] = float("inf")  # itself and exact duplicates
        v = d.min(1).values
        out.append(v[torch.isfinite(v)])
    return torch.cat(out).numpy() if out else np.zeros(0)


def memorisation_report(
    syn: SyntheticSet,
    real: LabeledImages,
    *,
    percentile: float = 1.0,
    threshold: float | None = None,
    png: str | Path | None = None,
    max_images: int = 100,
) -> dict[str, Any]:
    """How many synthetic images are near-copies of a real training image.

    ``real`` is the data the set was distilled from. ``d*`` (``threshold``) defaults to the
    ``percentile``-th percentile of :func:`within_class_nn_distances` of ``real``. Returns
    ``share_within`` (of synthetic images whose nearest real image lies within ``d*``),
    ``n_within``, ``n_synthetic``, ``threshold``, ``threshold_rule``, the median nearest-real
    distance of the synthetic images beside the median within-class NN distance of the real
    ones, per-image ``nearest_distance`` and ``nearest_index`` (into ``real``), and ``png``.
    """
    nn_real = within_class_nn_distances(real)
    if threshold is None:
        if len(nn_real) == 0:
            raise ValueError("need two distinct real images of one class to set d*")
        threshold = float(np.percentile(nn_real, percentile))
        rule = f"{percentile:g}th percentile of within-class NN distances of distinct real images"
    else:
        rule = "given"
    d, j = nearest(_flat(syn.images), _flat(real.images))
    within = d.numpy() <= threshold
    out: dict[str, Any] = {
        "threshold": threshold,
        "threshold_rule": rule,
        "distance": "l2 (normalised pixels)",
        "share_within": float(within.mean()),
        "n_within": int(within.sum()),
        "n_synthetic": len(syn),
        "median_nearest_real": float(d.median()),
        "median_real_nn": float(np.median(nn_real)) if len(nn_real) else None,
        "nearest_distance": d.tolist(),
        "nearest_index": j.tolist(),
    }
    if png is not None:
        out["png"] = str(plot_nearest_pairs(syn, real, j, d, threshold, png, max_images=max_images))
    log.info(
        "memorisation %s: %d of %d synthetic images within d* = %.3g of a real one",
        syn.meta.get("method"),
        out["n_within"],
        len(syn),
        threshold,
    )
    return out


def plot_nearest_pairs(
    syn: SyntheticSet,
    real: LabeledImages,
    index: Tensor,
    dist: Tensor,
    threshold: float,
    path: str | Path,
    *,
    max_images: int = 100,
    pairs_per_row: int = 10,
) -> Path:
    """Every synthetic image (left) beside its nearest real image (right), the distance above;
    a red frame and red text mark a pair within ``threshold``. One mosaic, one ``imshow``."""
    from matplotlib.patches import Rectangle

    from fedistill.data import denormalise
    from fedistill.plots import pyplot

    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = min(len(syn), max_images)
    mean, std = tuple(syn.meta["mean"]), tuple(syn.meta["std"])
    s_img = denormalise(syn.images[:n], mean, std).clamp(0, 1)
    r_img = denormalise(real.images[index[:n]], mean, std).clamp(0, 1)
    c, h, w = s_img.shape[1:]
    gap = max(1, h // 4)
    rows = (n + pairs_per_row - 1) // pairs_per_row
    cols = min(n, pairs_per_row)
    cell_w, cell_h = 2 * w + 3 * gap, h + 2 * gap
    canvas = torch.ones(c, rows * cell_h, cols * cell_w)
    for i in range(n):
        r, k = divmod(i, pairs_per_row)
        y0, x0 = r * cell_h + gap, k * cell_w + gap
        canvas[:, y0 : y0 + h, x0 : x0 + w] = s_img[i]
        canvas[:, y0 : y0 + h, x0 + w + gap : x0 + 2 * w + gap] = r_img[i]
    fig, ax = plt.subplots(figsize=(cols * 1.0 + 0.4, rows * 0.6 + 0.6))
    if c == 1:
        ax.imshow(canvas[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(canvas.permute(1, 2, 0).numpy(), interpolation="nearest")
    for i in range(n):
        r, k = divmod(i, pairs_per_row)
        y0, x0 = r * cell_h + gap, k * cell_w + gap
        close = float(dist[i]) <= threshold
        color = "red" if close else "black"
        ax.text(
            x0 + w + gap / 2,
            y0 - 0.2,
            f"{float(dist[i]):.2g}",
            fontsize=5,
            color=color,
            ha="center",
            va="bottom",
        )
        if close:
            ax.add_patch(
                Rectangle((x0 - 0.5, y0 - 0.5), 2 * w + gap, h, fill=False, edgecolor="red", lw=0.6)
            )
    ax.axis("off")
    m = syn.meta
    ax.set_title(
        f"{m.get('method')} ipc {m.get('ipc')}: synthetic | nearest real "
        f"(red: within d* = {threshold:.3g})",
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
