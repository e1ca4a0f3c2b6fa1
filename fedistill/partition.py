"""Split a training set across federated clients.

Schemes follow the semantics of Flower's ``flwr-datasets`` partitioners so results compare with
other Flower work:

* ``iid`` — a random permutation cut into ``n`` near-equal parts (``IidPartitioner``).
* ``dirichlet`` — label skew: for every class, proportions over clients are drawn from
  Dirichlet(α); as in ``DirichletPartitioner`` (``self_balancing=True``) a client already holding
  more than the average is given no more, and draws are repeated until every client holds at
  least ``min_partition_size`` examples.
* ``shards`` — sort by label, cut into ``n × shards_per_partition`` shards, deal each client
  ``shards_per_partition`` random shards (``ShardPartitioner``, McMahan et al. 2017).

Every index lands in exactly one client; the same seed gives the same split.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedistill.errors import ConfigError, UnknownNameError

SCHEMES = ("iid", "dirichlet", "shards")


def partition(
    labels: Sequence[int] | np.ndarray,
    num_partitions: int,
    scheme: str = "iid",
    *,
    alpha: float = 0.5,
    shards_per_partition: int = 2,
    min_partition_size: int = 10,
    seed: int = 0,
    max_tries: int = 100,
) -> list[np.ndarray]:
    """Indices of each client's examples (sorted), one array per client."""
    y = np.asarray(labels)
    n = len(y)
    if num_partitions < 1:
        raise ConfigError(f"num_partitions must be ≥ 1, got {num_partitions}")
    if num_partitions > n:
        raise ConfigError(f"cannot split {n} examples into {num_partitions} partitions")
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        parts = np.array_split(rng.permutation(n), num_partitions)
    elif scheme == "dirichlet":
        parts = _dirichlet(y, num_partitions, alpha, min_partition_size, rng, max_tries)
    elif scheme == "shards":
        parts = _shards(y, num_partitions, shards_per_partition, rng)
    else:
        raise UnknownNameError(
            f"unknown partitioner '{scheme}'; choose one of {', '.join(SCHEMES)}"
        )
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _dirichlet(y, k, alpha, min_size, rng, max_tries) -> list[np.ndarray]:
    if alpha <= 0:
        raise ConfigError(f"Dirichlet alpha must be > 0, got {alpha}")
    n = len(y)
    min_size = min(min_size, n // k)
    classes = np.unique(y)
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(k)]
        for c in classes:
            idx = rng.permutation(np.nonzero(y == c)[0])
            p = rng.dirichlet(np.full(k, alpha))
            # self-balancing: clients already above the average size get no more
            sizes = np.array([len(q) for q in parts])
            p = np.where(sizes < n / k, p, 0.0)
            p = p / p.sum() if p.sum() > 0 else np.full(k, 1.0 / k)
            cuts = (np.cumsum(p) * len(idx)).astype(int)[:-1]
            for q, chunk in zip(parts, np.split(idx, cuts)):
                q.extend(chunk.tolist())
        if min(len(q) for q in parts) >= min_size:
            return [np.array(q) for q in parts]
    raise ConfigError(
        f"Dirichlet(α={alpha}) could not give all {k} clients ≥ {min_size} "
        f"examples in {max_tries} draws; raise α or lower min_partition_size"
    )


def _shards(y, k, per, rng) -> list[np.ndarray]:
    num_shards = k * per
    if num_shards > len(y):
        raise ConfigError(f"{num_shards} shards exceed {len(y)} examples")
    order = np.argsort(y, kind="stable")
    shards = np.array_split(order, num_shards)
    deal = rng.permutation(num_shards)
    return [np.concatenate([shards[s] for s in deal[i * per : (i + 1) * per]]) for i in range(k)]
