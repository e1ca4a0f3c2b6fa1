"""The fedistill ServerApp: run the configured strategy, then (optionally) the FedAvg baseline.

Strategy (run config ``strategy``):

* ``feddm`` — clients send synthetic sets; the server validates them, pools them and trains
  the global model on the pool (one-shot with ``rounds = 1``; with more rounds the server sends
  the global model back and the clients distill against it, as in FedDM);
* ``feddm-robust`` — the same, with a server-side filter of the sets (fedistill.robust);
* ``fedavg`` — Flower's FedAvg with local SGD on the clients' real data.

With ``baseline = "fedavg"`` the FedAvg baseline runs afterwards on the same nodes and
partitions. Results go to ``<results-dir>/<run-name>/results.json`` (rewritten after each
round) with PNG plots, and the summary table is logged at the end.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedistill.errors import FedistillError
from fedistill.wire import RunSettings, load_split
from server.results import RunResults, format_table, write_plots
from server.strategies import run_fedavg, run_feddm, unreachable

log = logging.getLogger("flwr.fedistill.server")

app = ServerApp()


def default_run_name(s: RunSettings) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{s.strategy}-{s.dataset}-{s.method}"


@app.main()
def main(grid: Grid, context: Context) -> None:
    s = RunSettings.from_run_config(context.run_config)
    name = s.run_name or default_run_name(s)
    results = RunResults(Path(s.results_dir).expanduser(), name, s.to_dict(), s.strategy)
    log.info("fedistill: %s on %s, results in %s", s.strategy, s.dataset, results.path)
    pool = None
    try:
        test = load_split(s.dataset, s.data_root, False)
        if s.strategy == "fedavg":
            run_fedavg(
                grid,
                s,
                test,
                results.main,
                aggregator=s.aggregator,
                num_malicious=s.num_malicious,
            )
        else:
            outcome = run_feddm(
                grid,
                s,
                test,
                results.main,
                robust=s.strategy == "feddm-robust",
                sanitise=s.sanitise,
            )
            pool = outcome.pool
        results.main.finish()
        if s.run_baseline:
            section = results.baseline("fedavg")
            lost = unreachable(results.data["dropped"])
            run_fedavg(grid, s, test, section, exclude=lost)
            section.finish()
    except Exception as exc:
        results.finish("failed", f"{type(exc).__name__}: {exc}")
        if isinstance(exc, FedistillError):  # a bad setting: its message says it all
            log.error("run failed: %s", exc)
        else:
            log.error("run failed: %s\n%s", exc, traceback.format_exc())
        raise
    results.finish("completed")
    try:
        write_plots(results, pool)
    except Exception as exc:  # a plot must not fail a finished run
        log.warning("plots not written: %s", exc)
    if os.environ.get("FEDISTILL_LOG_TABLE", "1") != "0":  # `fedistill run` prints it itself
        for line in format_table(results.data).splitlines():
            log.info("%s", line)
    log.info("results: %s", results.path)
