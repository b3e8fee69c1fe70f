"""A whole worker node lost mid-bench (its raylet and workers killed): the run moves to the other node and resumes.

A module of its own: the test takes a node out of this module's cluster.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from helpers import CONFIGS, SMALL_BENCH
from hrlf.config import load_config
from hrlf.engine.bench import PlannedRun, plan_bench
from hrlf.engine.ray_engine import run_bench_ray
from ray_cluster import needs_ray

pytestmark = [pytest.mark.ray, needs_ray]


def _without_wall_time(results: dict) -> dict:
    results = json.loads(json.dumps(results))
    for stage in results["selection"].values():
        stage.pop("seconds")
    return results


def _rows(log) -> int:
    try:
        return max(0, len(log.read_text().splitlines()) - 1)
    except OSError:
        return 0


def _node_of(cluster, pid: int):
    """The worker node whose raylet is an ancestor of process ``pid`` (Ray's workers are the raylet's children)."""
    import psutil

    ancestors = {p.pid for p in psutil.Process(pid).parents()}
    for node in cluster.workers:
        raylets = node.all_processes.get("raylet", [])
        if any(info.process.pid in ancestors for info in raylets):
            return node
    return None


def test_a_lost_node_moves_the_run_to_another_node_which_resumes_it(ray_cluster, tiny_mosi, tmp_path):
    long = [*SMALL_BENCH, "train.epochs=12", "train.patience=0"]
    entries = [("backbone", CONFIGS / "backbone" / "mosi.yaml")]
    plan = plan_bench(entries, seeds=[1, 2], data=tiny_mosi, out=tmp_path / "ray", overrides=long)
    target = plan[1].run_dir
    log = target / "train" / "log.csv"
    seen: dict[str, object] = {"killed_after": 0, "least_after_kill": None, "node": None}

    def remove_its_node_after_a_few_epochs() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not seen["killed_after"]:
            if _rows(log) >= 3:
                pid = int((target / ".lock").read_text().split()[0])
                node = _node_of(ray_cluster, pid)
                seen["node"] = node
                if node is None:
                    return
                seen["killed_after"] = _rows(log)
                ray_cluster.cluster.remove_node(node, allow_graceful=False)  # raylet, object store, workers
            time.sleep(0.02)
        while time.monotonic() < deadline and not (target / "results.json").exists():
            rows = _rows(log)
            if rows and (seen["least_after_kill"] is None or rows < seen["least_after_kill"]):
                seen["least_after_kill"] = rows
            time.sleep(0.02)

    watcher = threading.Thread(target=remove_its_node_after_a_few_epochs)
    watcher.start()
    results = run_bench_ray(plan, threads=1, address=ray_cluster.address)
    watcher.join()
    assert seen["node"] is not None, "the run's worker process was not found under a worker node's raylet"
    assert seen["killed_after"] >= 3, "the run finished before its node could be removed"
    assert seen["least_after_kill"] is None or seen["least_after_kill"] >= seen["killed_after"]  # resumed
    assert [r["seed"] for r in results] == [1, 2] and all(run.done for run in plan)
    assert not (target / ".lock").exists()
    cfg = load_config(CONFIGS / "backbone" / "mosi.yaml", [*long, f"data.path={tiny_mosi}", "train.seed=2"])
    fresh = PlannedRun(label="backbone", cfg=cfg, run_dir=tmp_path / "fresh")
    (uninterrupted,) = run_bench_ray([fresh], threads=1, address=ray_cluster.address)
    assert _without_wall_time(results[1]) == _without_wall_time(uninterrupted)
