"""The FedDM server's sanitiser step (feddm-robust with sanitise=True)."""

from __future__ import annotations

from flwr.supercore.task_identity import TaskIdentity
from test_simulation import setup  # the simulated grid of the server tests

from fedistill.synthetic import SyntheticSet
from server.strategies import run_feddm


def test_sanitised_sets_are_what_the_server_trains_on(tmp_path, monkeypatch):
    import fedistill.robust

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0

    def keep_all(sets, info, *, seed, device):
        return sorted(sets), {}

    def sanitise(sets, info, *, seed, device):
        out = {}
        for k, syn in sets.items():
            if k == 1000:  # one image outvoted
                out[k] = SyntheticSet(syn.images[1:], syn.labels[1:], dict(syn.meta))
            elif k != 1001:  # every image outvoted: the client is gone
                out[k] = syn
        return out, {k: (1 if k == 1000 else len(sets[k]) if k == 1001 else 0) for k in sets}

    monkeypatch.setattr(fedistill.robust, "filter_sets", keep_all)
    monkeypatch.setattr(fedistill.robust, "sanitise_sets", sanitise)
    s, grid, results, test = setup(tmp_path, 3, strategy="feddm-robust")
    outcome = run_feddm(grid, s, test, results.main, robust=True, sanitise=True)
    rnd = results.data["rounds"][0]
    assert rnd["kept"] == [1000, 1002]
    assert rnd["sanitised"]["1000"] == 1 and rnd["sanitised"]["1002"] == 0
    assert any(d["node_id"] == 1001 and d["reason"].startswith("sanitised") for d in rnd["dropped"])
    assert len(outcome.pool) == sum(len(outcome.sets[k]) for k in (1000, 1002))
