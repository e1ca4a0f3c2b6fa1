"""Shared fixtures: the embedded digits data, and the optional offline MNIST subset."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
MNIST_SUBSET = REPO.parent / "shared" / "data" / "mnist-subset"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Markers that follow from what a test uses, so they cannot be forgotten: every test
    under tests/deployment/ starts Flower processes (``deployment``, and ``slow``), every test
    that reads the MNIST subset needs ../shared (``mnist``)."""
    for item in items:
        if "tests/deployment/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.deployment)
            item.add_marker(pytest.mark.slow)  # 45-80 s each on 2 cores
        if "mnist_root" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.mnist)


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits_train():
    from fedistill.data import load_dataset

    return load_dataset("digits", train=True)


@pytest.fixture(scope="session")
def digits_test():
    from fedistill.data import load_dataset

    return load_dataset("digits", train=False)


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """Root of the real MNIST subset; skips the test when this checkout has no ../shared."""
    if not (MNIST_SUBSET / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip(
            f"MNIST subset not found at {MNIST_SUBSET} (only present beside the team's "
            "checkout); the digits tests cover the same code"
        )
    return MNIST_SUBSET
