"""The attack matrix: chosen pipelines × attacks on one dataset, written as one report.

A *row* is a pipeline (:class:`attacks.targets.PipelineConfig`): plain training on the real data
(``real``, the reference), or a registry method (``random``, ``dm``, ``dc``, ``dsa``, ``kip``,
``psg``, …) with its IPC and options, followed by training the final model on the synthetic set.
For every row the matrix measures, each in its own *cell*:

* ``utility``  — test accuracy of the model trained on the row's set of the whole training split,
  and ε/δ where the set's provenance records them;
* ``mia``      — membership inference against the whole pipeline (:func:`attacks.lira.run_mia`):
  the loss attack and LiRA (online, offline) with K shadow pipelines on a candidate pool; AUC,
  TPR at 1% and 0.1% FPR, pooled over every model as the target;
* ``backdoor`` — NAIVE through the row's method (or DOORPING, on the ``dm`` rows; plain poisoned
  training on the ``real`` row): attack success rate and clean accuracy (:mod:`attacks.backdoor`);
* ``poisoning`` / ``poisoning_defended`` — one-shot FedDM with the row's method, ``m`` of ``n``
  clients malicious: the global accuracy drop without and with the robust filter, and the filter's
  false-rejection rate on honest clients (:func:`attacks.poisoning.run_poisoning`). A ``fedavg``
  row runs the FedAvg baseline (:func:`fedistill.federated.simulate_fedavg`) under label flipping;
* ``dp_audit`` — for the rows whose sets carry an ε: the canary audit's empirical lower bound
  next to the accountant's ε (:func:`attacks.dp_audit.run_dp_audit`).

Cells run one at a time, attack by attack. A cell that fails is recorded with its reason and the
matrix goes on; ``report.json`` is rewritten after every cell, so an interrupted run still leaves
what it measured. The package, one concern a module:

* :mod:`~attacks.matrix.config` — the TOML schema as dataclasses and its loader
  (:func:`load_config`; ``experiments/audit.toml`` documents every key), :func:`select`, :func:`quick`;
* :mod:`~attacks.matrix.runner` — :func:`run_matrix` and :class:`MatrixRun`, which keeps
  ``report.json`` up to date;
* :mod:`~attacks.matrix.cells` — the measurements, one method per cell kind;
* :mod:`~attacks.matrix.render` — ``report.md``;
* :mod:`~attacks.matrix.plots` — the plots.
"""

from attacks.matrix.config import AuditConfig, config_from_dict, load_config, quick, select
from attacks.matrix.plots import write_plots
from attacks.matrix.render import render_markdown
from attacks.matrix.runner import MatrixRun, run_matrix

__all__ = [
    "AuditConfig",
    "MatrixRun",
    "config_from_dict",
    "load_config",
    "quick",
    "render_markdown",
    "run_matrix",
    "select",
    "write_plots",
]
