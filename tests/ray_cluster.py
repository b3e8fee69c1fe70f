"""A local Ray cluster for the ``ray`` tests: a head (no CPUs: it only schedules) and two one-CPU workers.

Every node listens on 127.0.0.1 only (Ray otherwise advertises the machine's outward address) and keeps its files
in a temporary folder of its own; the cluster is shut down by the processes it started, never by ``ray stop``
(which would stop every Ray on the machine). Tests marked :data:`needs_ray` are skipped cleanly without Ray.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

# read by Ray when it is imported: loopback addresses for every node, and no usage report
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def ray_installed() -> bool:
    """The ray package is importable (a bare folder named ray on sys.path, such as Ray's /tmp/ray, is not it)."""
    spec = importlib.util.find_spec("ray")
    return spec is not None and spec.origin is not None


#: on every test that needs a cluster: skipped cleanly where the ray extra is not installed
needs_ray = pytest.mark.skipif(not ray_installed(), reason="needs the ray extra (make ray)")


@dataclass
class LocalCluster:
    cluster: Any  # ray.cluster_utils.Cluster
    workers: list[Any]  # the two worker nodes, in the order they were added

    @property
    def address(self) -> str:
        return self.cluster.address


@contextmanager
def local_cluster(workers: int = 2) -> Iterator[LocalCluster]:
    """Started for the block, stopped after it (also when a test failed)."""
    import ray
    from ray.cluster_utils import Cluster

    # short: Ray's unix sockets live below it and their paths may not exceed 107 characters
    temp = tempfile.mkdtemp(prefix="hrlf-ray-")
    # Cluster() writes the head's address to <system temp>/ray/ray_current_cluster whatever temp_dir the head was
    # given, without creating that folder: on a machine where Ray never ran before, the cluster would not start
    os.makedirs(os.path.join(tempfile.gettempdir(), "ray"), exist_ok=True)
    node = {"node_ip_address": "127.0.0.1", "temp_dir": temp, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "num_cpus": 0})
    try:
        nodes = [cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1") for _ in range(workers)]
        cluster.wait_for_nodes()
        yield LocalCluster(cluster=cluster, workers=nodes)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
