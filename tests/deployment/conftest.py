"""Fixtures for the Deployment Engine tests: a staged copy of the app, and deployments whose
processes are always ended (and checked to be ended) when a test finishes, pass or fail."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import VENV_BIN, Deployment, TlsFiles

from server.staging import stage_app

REPO = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip with a reason where a real deployment cannot run at all."""
    reason = None
    if not Path("/proc/self/stat").exists():
        reason = "needs Linux /proc to track and end Flower's processes"
    elif not all(
        (VENV_BIN / exe).exists() for exe in ("flower-superlink", "flower-supernode", "flwr")
    ):
        reason = f"Flower CLIs not found next to {sys.executable}"
    if reason:
        for item in items:
            if "deployment" in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def staged_app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Flower app copied out of the checkout (``flwr run`` rewrites the pyproject it reads)."""
    return stage_app(REPO, tmp_path_factory.mktemp("app"))


@pytest.fixture
def make_deployment(tmp_path: Path) -> Iterator[Callable[..., Deployment]]:
    """Factory for :class:`Deployment`; at teardown every deployment is closed and the test
    fails if any process it started (or any descendant of one) still runs."""
    made: list[Deployment] = []

    def make(tls: TlsFiles | None = None) -> Deployment:
        dep = Deployment(tmp_path / f"deployment-{len(made)}", tls=tls)
        made.append(dep)
        return dep

    yield make
    leftovers = []
    for dep in made:
        dep.close()
        leftovers += dep.procs.still_running()
    assert not leftovers, f"processes still running after teardown (pid, start): {leftovers}"
    if not leftovers:
        # keep failing runs' logs for inspection (pytest keeps tmp_path), drop the heavy bits
        for dep in made:
            shutil.rmtree(dep.flwr_home / "apps", ignore_errors=True)
