"""A whole worker node lost mid-bench (its raylet and workers killed): the run moves to the other node and resumes.

A module of its own: the test takes a node out of this module's cluster.
"""

from __future__ import annotations

import pytest

from ray_cluster import check_interrupted_run_resumes, needs_ray

pytestmark = [pytest.mark.ray, needs_ray]


def _node_of(cluster, pid: int):
    """The worker node whose raylet is an ancestor of process ``pid`` (Ray's workers are the raylet's children)."""
    import psutil

    ancestors = {p.pid for p in psutil.Process(pid).parents()}
    for node in cluster.workers:
        if any(info.process.pid in ancestors for info in node.all_processes.get("raylet", [])):
            return node
    return None


def test_a_lost_node_moves_the_run_to_another_node_which_resumes_it(ray_cluster, tiny_mosi, tmp_path):
    def remove_its_node(pid: int) -> bool:
        node = _node_of(ray_cluster, pid)
        if node is not None:
            ray_cluster.cluster.remove_node(node, allow_graceful=False)  # raylet, object store, workers
        return node is not None

    check_interrupted_run_resumes(ray_cluster.address, tiny_mosi, tmp_path, remove_its_node)
