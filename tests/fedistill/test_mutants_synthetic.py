"""The set format where mutation testing found it under-tested (mutants of fedistill/synthetic.py
that survived the other tests: experiments/results/mutation/synthetic.txt). Each test states
behaviour: the exact reason a file is refused, the exact byte count of a set, the caps
inclusive and the next value refused, bytes that do not depend on the metadata's key order."""

from __future__ import annotations

import json
import math
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from test_synthetic import META  # the smallest valid provenance, shared with the unit tests

from fedistill import factorised
from fedistill.errors import SyntheticSetError
from fedistill.synthetic import SyntheticSet

# the caps as documented, written out: a test reading the module's constant would follow a
# changed constant and prove nothing about it
MAX_HEADER_BYTES = 1 << 20  # 1 MiB of JSON header
MAX_FILE_BYTES = 1 << 31  # 2 GiB of file


def _set(n: int = 2, **meta) -> SyntheticSet:
    return SyntheticSet(torch.zeros(n, 1, 4, 4), torch.arange(n) % 3, META | meta)


def _refused(blob: bytes, match: str) -> str:
    with pytest.raises(SyntheticSetError, match=match) as info:
        SyntheticSet.from_bytes(blob)
    return str(info.value)


def _blob(header: dict, data: bytes, header_len: int | None = None) -> bytes:
    """A safetensors file by hand: 8-byte length, the JSON header (space-padded), the data."""
    raw = json.dumps(header).encode()
    if header_len is not None:
        assert len(raw) <= header_len
        raw += b" " * (header_len - len(raw))
    return struct.pack("<Q", len(raw)) + raw + data


def _header(meta: dict) -> tuple[dict, bytes]:
    images = np.zeros((2, 1, 4, 4), dtype=np.float32).tobytes()
    labels = np.array([0, 1], dtype=np.int64).tobytes()
    header = {
        "__metadata__": {"fedistill": json.dumps(meta)},
        "images": {"dtype": "F32", "shape": [2, 1, 4, 4], "data_offsets": [0, len(images)]},
        "labels": {
            "dtype": "I64",
            "shape": [2],
            "data_offsets": [len(images), len(images) + len(labels)],
        },
    }
    return header, images + labels


def test_nbytes_is_the_bytes_of_every_tensor_the_set_holds():
    syn = _set(3)
    assert syn.nbytes() == 3 * 16 * 4 + 3 * 8
    soft = SyntheticSet(torch.zeros(2, 1, 4, 4), torch.full((2, 3), 1 / 3), dict(META))
    assert soft.nbytes() == 2 * 16 * 4 + 2 * 3 * 4
    meta = META | {
        "num_classes": 10,
        "method": "haba",
        "decoder": "haba",
        "haba": {"hallucinators": 2, "channels": 2, "kernel": 1},
    }
    extras = {k: torch.zeros(v) for k, v in factorised.extra_shapes(meta, 1).items()}
    haba = SyntheticSet(torch.zeros(10, 1, 4, 4), torch.arange(10), meta, extras)
    extra = sum(t.numel() * t.element_size() for t in extras.values())
    assert extra > 0
    assert haba.nbytes() == 10 * 16 * 4 + 10 * 8 + extra


def test_bytes_do_not_depend_on_the_metadatas_key_order(tmp_path):
    a = _set(method="dm", ipc=2)
    b = SyntheticSet(a.images, a.labels, dict(reversed(list(a.meta.items()))))
    assert list(a.meta) != list(b.meta)
    assert a.to_bytes() == b.to_bytes()
    assert (
        a.save(tmp_path / "a.st").read_bytes()
        == b.save(tmp_path / "new" / "dir" / "b.st").read_bytes()
    )


def test_a_written_set_declares_format_version_1():
    # readers key on it: a later format change bumps it, a file of today must say 1
    blob = _set().to_bytes()
    (hlen,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + hlen])
    assert json.loads(header["__metadata__"]["fedistill"])["format_version"] == 1


def test_pooled_sets_take_the_first_sets_metadata():
    a, b = _set(method="dm"), _set(method="dc")
    assert SyntheticSet.concat([a, b]).meta["method"] == "dm"
    assert SyntheticSet.concat([b, a, a]).meta["method"] == "dc"


@pytest.mark.parametrize("shape", [(0, 1, 4, 4), (2, 1, 0, 4), (2, 1, 4, 0)])
def test_empty_images_are_refused_whichever_side_is_zero(shape):
    with pytest.raises(SyntheticSetError, match="images are empty"):
        SyntheticSet(torch.zeros(shape), torch.zeros(shape[0], dtype=torch.int64), dict(META))


@pytest.mark.parametrize("bad", [[math.nan], [math.inf], ["0.3"], [None]])
def test_a_mean_that_is_not_a_finite_number_is_refused(bad):
    with pytest.raises(SyntheticSetError, match="must list 1 finite numbers"):
        _set(mean=bad)


def test_a_header_of_exactly_the_cap_is_read_and_one_byte_more_is_not():
    header, data = _header(META)
    blob = _blob(header, data, header_len=MAX_HEADER_BYTES)
    assert len(SyntheticSet.from_bytes(blob)) == 2
    _refused(_blob(header, data, header_len=MAX_HEADER_BYTES + 1), "not a safetensors file")


def test_a_header_of_one_byte_is_no_safetensors_file():
    _refused(struct.pack("<Q", 1) + b"{" + b"\0" * 64, "not a safetensors file")


@pytest.mark.parametrize("keep", [0.5, 1.0])
def test_a_file_cut_inside_its_header_says_truncated(keep):
    blob = _set().to_bytes()
    (hlen,) = struct.unpack("<Q", blob[:8])
    cut = 8 + int(hlen * keep) - 1  # the last cut drops only the header's trailing padding
    message = _refused(blob[:cut], "truncated")
    assert "header length" in message


def test_the_smallest_header_is_read():
    # "{}": two bytes, parsed; the file is then refused for what it lacks
    _refused(struct.pack("<Q", 2) + b"{}", "expected tensors 'images' and 'labels', found \\[\\]")


def test_a_padded_file_states_both_sizes():
    blob = _set().to_bytes()
    (hlen,) = struct.unpack("<Q", blob[:8])
    data = len(blob) - 8 - hlen
    _refused(blob + b"\0" * 24, f"data is {data + 24} bytes, header says {data}")


def test_a_file_with_no_tensors_is_refused_for_that():
    header = {"__metadata__": {"fedistill": json.dumps(META)}}
    _refused(_blob(header, b""), "expected tensors 'images' and 'labels'")


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickles_of_every_protocol_are_named_as_such(protocol):
    _refused(pickle.dumps({"images": [0.0] * 8}, protocol=protocol), "looks like a pickle")


@pytest.mark.parametrize("head", [b"PK\x03\x04", b"\x1f\x8b\x08\x00"])
def test_zip_and_gzip_files_are_named_as_such(head):
    _refused(head + b"\0" * 64, "looks like a pickle/zip/gzip")


@pytest.mark.parametrize("head", [b"\x80\x06", b"A\x03", b"\x03\x80", b"P\x00"])
def test_other_junk_is_not_called_a_pickle(head):
    message = _refused(head + b"\0" * 64, "not a safetensors file")
    assert "pickle" not in message


def test_a_file_over_the_size_cap_is_refused_before_it_is_read(tmp_path, monkeypatch):
    path = tmp_path / "huge.st"
    with open(path, "wb") as f:  # sparse: no disk space, no memory
        f.truncate(MAX_FILE_BYTES + 1)

    def never(self):
        raise AssertionError(f"{self} was read although it is over the cap")

    monkeypatch.setattr(Path, "read_bytes", never)
    with pytest.raises(SyntheticSetError, match=f"over the {MAX_FILE_BYTES} byte cap"):
        SyntheticSet.load(path)


class _Read(Exception):
    pass


def test_a_file_of_exactly_the_size_cap_is_read(tmp_path, monkeypatch):
    path = tmp_path / "at-cap.st"
    with open(path, "wb") as f:
        f.truncate(MAX_FILE_BYTES)

    def read(self):
        raise _Read  # reading is what a file within the cap gets; its content is not the point

    monkeypatch.setattr(Path, "read_bytes", read)
    with pytest.raises(_Read):
        SyntheticSet.load(path)


@pytest.mark.parametrize("which", ["x", "y"])
def test_arrays_that_are_not_numpy_arrays_are_refused(which):
    x, y = np.zeros((2, 1, 4, 4), dtype=np.float32), np.array([0, 1])
    args = {"x": x, "y": y} | {which: [[0.0]] if which == "x" else [0, 1]}
    with pytest.raises(SyntheticSetError, match="images and labels must be arrays"):
        SyntheticSet.from_arrays(args["x"], args["y"], dict(META))


def test_files_shorter_than_the_length_field_and_a_bare_length_field_are_told_apart():
    _refused(b"\x10" * 7, r"truncated file \(7 bytes\)")
    message = _refused(struct.pack("<Q", 16), "not a safetensors file")
    assert "file 8 bytes" in message
