"""``SyntheticSet``: what a client shares, and its file format.

A set is images (float32 N×C×H×W in the dataset's normalised space), labels (int64 class ids N,
or float32 N×K soft labels) and provenance. It is saved as a safetensors file: two tensors,
``images`` and ``labels``, and a JSON document in the safetensors metadata under the key
``fedistill``. Loading parses the header itself before any tensor is read, never unpickles, and
refuses anything malformed with one :class:`~fedistill.errors.SyntheticSetError`.

A factorised set (:mod:`fedistill.factorised`) names its decoder in the metadata; a ``haba``
set also carries its hallucinators' weights as extra float32 tensors (``extras``), whose names
and shapes the metadata fixes exactly: any other extra tensor, or a missing one, is refused.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fedistill.errors import SyntheticSetError

FORMAT_VERSION = 1
META_KEY = "fedistill"
REQUIRED_META = ("dataset", "mean", "std", "method", "ipc", "seed", "iterations", "num_classes")
MAX_HEADER_BYTES = 1 << 20  # 1 MiB of JSON header is far beyond any honest set
MAX_FILE_BYTES = 1 << 31
LABEL_KINDS = ("hard", "soft", "targets")  # soft: rows are probabilities; targets: KRR regression


@dataclass
class SyntheticSet:
    """A distilled set with its provenance (``meta``: dataset, mean, std, method, ipc, seed,
    iterations, num_classes, hyperparameters, and ``privacy`` where a method has it)."""

    images: Tensor
    labels: Tensor
    meta: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Tensor] = field(default_factory=dict)  # a factorised set's decoder weights

    def __post_init__(self) -> None:
        self.images = self.images.detach().to("cpu", torch.float32).contiguous()
        if self.labels.is_floating_point():
            self.labels = self.labels.detach().to("cpu", torch.float32).contiguous()
        else:
            self.labels = self.labels.detach().to("cpu", torch.int64).contiguous()
        self.meta.setdefault("format_version", FORMAT_VERSION)
        self.meta.setdefault(
            "label_kind", "hard" if not self.labels.is_floating_point() else "soft"
        )
        self.extras = {k: v.detach().to("cpu").contiguous() for k, v in self.extras.items()}
        validate(self.images, self.labels, self.meta)
        from fedistill.factorised import check_layout

        check_layout(self.images, self.meta, self.extras)

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def privacy(self) -> dict[str, Any] | None:
        return self.meta.get("privacy")

    def hard_labels(self) -> Tensor:
        """Class ids (argmax of soft labels)."""
        return self.labels if not self.labels.is_floating_point() else self.labels.argmax(1)

    def nbytes(self) -> int:
        extra = sum(t.numel() * t.element_size() for t in self.extras.values())
        return self.images.numel() * 4 + self.labels.numel() * self.labels.element_size() + extra

    def _tensors(self) -> dict[str, Tensor]:
        return {"images": self.images, "labels": self.labels, **self.extras}

    # ------------------------------------------------------------------ file
    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(
            self._tensors(),
            str(path),
            metadata={META_KEY: json.dumps(self.meta, sort_keys=True)},
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> SyntheticSet:
        """Load and validate a set file. Raises SyntheticSetError with the reason."""
        path = Path(path)
        if not path.is_file():
            raise SyntheticSetError(f"synthetic set file not found: {path}")
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise SyntheticSetError(f"{path}: {size} bytes is over the {MAX_FILE_BYTES} byte cap")
        return cls.from_bytes(path.read_bytes(), source=str(path))

    @classmethod
    def from_bytes(cls, blob: bytes, source: str = "<bytes>") -> SyntheticSet:
        header = _parse_header(blob, source)
        from safetensors.torch import load as st_load

        try:
            tensors = st_load(blob)
        except Exception as exc:  # safetensors' parser (Rust) never executes code
            raise SyntheticSetError(f"{source}: not a valid safetensors file ({exc})") from None
        if not {"images", "labels"} <= set(tensors):
            raise SyntheticSetError(
                f"{source}: expected tensors 'images' and 'labels', found {sorted(tensors)}"
            )
        meta = _parse_meta(header, source)
        extras = {k: v for k, v in tensors.items() if k not in ("images", "labels")}
        if extras and meta.get("decoder") != "haba":
            raise SyntheticSetError(
                f"{source}: expected tensors 'images' and 'labels', found {sorted(tensors)}"
            )
        if tensors["images"].dtype != torch.float32:
            raise SyntheticSetError(
                f"{source}: images must be float32, got {tensors['images'].dtype}"
            )
        if tensors["labels"].dtype not in (torch.int64, torch.float32):
            raise SyntheticSetError(
                f"{source}: labels must be int64 or float32, got {tensors['labels'].dtype}"
            )
        try:
            return cls(tensors["images"], tensors["labels"], meta, extras)
        except SyntheticSetError as exc:
            raise SyntheticSetError(f"{source}: {exc}") from None

    def to_bytes(self) -> bytes:
        from safetensors.torch import save

        return save(
            self._tensors(),
            metadata={META_KEY: json.dumps(self.meta, sort_keys=True)},
        )

    # ------------------------------------------------------------------ arrays (Flower transport)
    def to_arrays(self) -> dict[str, np.ndarray]:
        """The arrays a client uploads: ``x`` (images), ``y`` (labels) and a factorised set's
        extra tensors under their own names (``haba.*``)."""
        out = {"x": self.images.numpy(), "y": self.labels.numpy()}
        return out | {k: v.numpy() for k, v in self.extras.items()}

    @classmethod
    def from_arrays(
        cls,
        x: np.ndarray,
        y: np.ndarray,
        meta: dict[str, Any],
        extras: dict[str, np.ndarray] | None = None,
    ) -> SyntheticSet:
        """Build from untrusted arrays (validated like a file; ``extras``: a factorised set's
        decoder tensors, accepted only as its metadata declares them)."""
        if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
            raise SyntheticSetError("images and labels must be arrays")
        extras = extras or {}
        if any(not isinstance(v, np.ndarray) or v.dtype != np.float32 for v in extras.values()):
            raise SyntheticSetError("extra tensors must be float32 arrays")
        if x.dtype != np.float32:
            raise SyntheticSetError(f"images must be float32, got {x.dtype}")
        if y.dtype not in (np.int64, np.float32):
            raise SyntheticSetError(f"labels must be int64 or float32, got {y.dtype}")
        return cls(
            torch.from_numpy(np.ascontiguousarray(x)),
            torch.from_numpy(np.ascontiguousarray(y)),
            dict(meta),
            {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in extras.items()},
        )

    @staticmethod
    def concat(sets: list[SyntheticSet], meta: dict[str, Any] | None = None) -> SyntheticSet:
        """Pool several sets of the same dataset (soft and hard labels mix as soft)."""
        if not sets:
            raise SyntheticSetError("cannot pool an empty list of synthetic sets")
        if any(s.meta.get("decoder") is not None for s in sets):
            raise SyntheticSetError("decode factorised sets (fedistill.factorised.decode) to pool")
        k = sets[0].num_classes
        if any(s.num_classes != k for s in sets):
            found = sorted({s.num_classes for s in sets})
            raise SyntheticSetError(f"cannot pool sets of different class counts {found}")
        soft = any(s.labels.is_floating_point() for s in sets)
        labels = [
            (
                torch.nn.functional.one_hot(s.labels, k).float()
                if soft and not s.labels.is_floating_point()
                else s.labels
            )
            for s in sets
        ]
        base = dict(meta or sets[0].meta)
        base["num_classes"] = k
        base["label_kind"] = "soft" if soft else "hard"
        return SyntheticSet(torch.cat([s.images for s in sets]), torch.cat(labels), base)


# --------------------------------------------------------------------------- validation


def validate(images: Tensor, labels: Tensor, meta: dict[str, Any]) -> None:
    """Check shapes, dtypes, finiteness, label range and provenance. Raises SyntheticSetError."""
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise SyntheticSetError(f"metadata lacks {', '.join(missing)}")
    if images.dtype != torch.float32 or images.ndim != 4:
        raise SyntheticSetError(
            f"images must be float32 N×C×H×W, got {images.dtype} {tuple(images.shape)}"
        )
    n, c, h, w = images.shape
    if n == 0 or h == 0 or w == 0:
        raise SyntheticSetError(f"images are empty: shape {tuple(images.shape)}")
    k = meta["num_classes"]
    if not isinstance(k, int) or k < 2:
        raise SyntheticSetError(f"num_classes must be an integer ≥ 2, got {k!r}")
    for key in ("mean", "std"):
        v = meta[key]
        if not (
            isinstance(v, list | tuple)
            and len(v) == c
            and all(isinstance(t, int | float) and math.isfinite(t) for t in v)
        ):
            raise SyntheticSetError(f"metadata '{key}' must list {c} finite numbers, got {v!r}")
    if any(s <= 0 for s in meta["std"]):
        raise SyntheticSetError("metadata 'std' must be positive")
    if not torch.isfinite(images).all():
        raise SyntheticSetError("images contain NaN or infinite values")
    kind = meta.get("label_kind", "hard")
    if kind not in LABEL_KINDS:
        raise SyntheticSetError(f"label_kind must be one of {LABEL_KINDS}, got {kind!r}")
    if labels.dtype == torch.int64:
        if labels.shape != (n,):
            raise SyntheticSetError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
        if kind != "hard":
            raise SyntheticSetError(f"integer labels need label_kind 'hard', got {kind!r}")
        if labels.min() < 0 or labels.max() >= k:
            raise SyntheticSetError(
                f"labels must lie in 0..{k - 1}, found {int(labels.min())}..{int(labels.max())}"
            )
    elif labels.dtype == torch.float32:
        if labels.shape != (n, k):
            raise SyntheticSetError(
                f"soft labels must have shape ({n}, {k}), got {tuple(labels.shape)}"
            )
        if not torch.isfinite(labels).all():
            raise SyntheticSetError("labels contain NaN or infinite values")
        if kind == "hard":
            raise SyntheticSetError("float labels need label_kind 'soft' or 'targets'")
        if kind == "soft" and ((labels < -1e-6).any() or (labels.sum(1) - 1).abs().max() > 1e-3):
            raise SyntheticSetError("soft labels must be probability rows (≥ 0, summing to 1)")
    else:
        raise SyntheticSetError(f"labels must be int64 or float32, got {labels.dtype}")


def _parse_header(blob: bytes, source: str) -> dict[str, Any]:
    """Read the safetensors header by hand: refuses pickles, truncation and odd layouts early."""
    if len(blob) < 8:
        raise SyntheticSetError(f"{source}: truncated file ({len(blob)} bytes)")
    (hlen,) = struct.unpack("<Q", blob[:8])
    header = None
    if 2 <= hlen <= MAX_HEADER_BYTES and 8 + hlen <= len(blob) and blob[8:9] == b"{":
        try:
            header = json.loads(blob[8 : 8 + hlen].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise SyntheticSetError(f"{source}: header is not valid JSON") from None
    if header is None:
        if _looks_like_pickle(blob):
            raise SyntheticSetError(
                f"{source}: looks like a pickle/zip/gzip file, which is never "
                "loaded; expected a safetensors synthetic set"
            )
        raise SyntheticSetError(
            f"{source}: not a safetensors file, or truncated (header length "
            f"{hlen}, file {len(blob)} bytes)"
        )
    if not isinstance(header, dict):
        raise SyntheticSetError(f"{source}: header is not a JSON object")
    end = 0
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(spec["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError):
            raise SyntheticSetError(f"{source}: tensor '{name}' has no valid offsets") from None
    if 8 + hlen + end != len(blob):
        raise SyntheticSetError(
            f"{source}: truncated or padded: data is {len(blob) - 8 - hlen} "
            f"bytes, header says {end}"
        )
    return header


def _parse_meta(header: dict[str, Any], source: str) -> dict[str, Any]:
    raw = (header.get("__metadata__") or {}).get(META_KEY)
    if raw is None:
        raise SyntheticSetError(f"{source}: no '{META_KEY}' metadata: not a fedistill set")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise SyntheticSetError(f"{source}: '{META_KEY}' metadata is not valid JSON") from None
    if not isinstance(meta, dict):
        raise SyntheticSetError(f"{source}: '{META_KEY}' metadata is not a JSON object")
    return meta


def _looks_like_pickle(blob: bytes) -> bool:
    """Pickle (protocol 2+ starts with 0x80 and a protocol byte), torch.save zip, or gzip."""
    return (blob[:1] == b"\x80" and blob[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")) or blob[
        :2
    ] in (b"PK", b"\x1f\x8b")
