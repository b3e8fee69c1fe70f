"""A local Ray cluster for the ``ray`` tests: a head (no CPUs: it only schedules) and two one-CPU workers.

Every node listens on 127.0.0.1 only (Ray otherwise advertises the machine's outward address) and keeps its files
in a temporary folder of its own; the cluster is shut down by the processes it started, never by ``ray stop``
(which would stop every Ray on the machine). Tests marked :data:`needs_ray` are skipped cleanly without Ray.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
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
def _children_take_sigint() -> Iterator[None]:
    """Processes started in the block get SIGINT at its default, as from a terminal.

    The nodes' processes (and the workers that run the tasks) inherit SIGINT from this process; where the suite
    runs in a background job of a non-interactive shell it is ignored, and a cancelled task (Ray cancels by
    SIGINT) could not stop cleanly. Python's own handler, set here for the block, is reset to the default by exec.
    """
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


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
    with _children_take_sigint():
        cluster = Cluster(initialize_head=True, head_node_args={**node, "num_cpus": 0})
    try:
        with _children_take_sigint():
            nodes = [cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1") for _ in range(workers)]
        cluster.wait_for_nodes()
        yield LocalCluster(cluster=cluster, workers=nodes)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def without_wall_time(results: dict) -> dict:
    """results.json less what depends on the machine's load: the stages' training seconds and the resources."""
    import json

    results = json.loads(json.dumps(results))
    for stage in results["selection"].values():
        stage.pop("seconds")
    results.pop("resources")
    return results


def without_cost_section(report: str) -> str:
    """A bench report less its "What the runs cost" section (wall times and memory, which depend on the load)."""
    import re

    return re.sub(r"## What the runs cost\n.*?(?=\n## )", "", report, flags=re.S)


def _rows(log: Any) -> int:
    try:
        return max(0, len(log.read_text().splitlines()) - 1)  # less the header
    except OSError:
        return 0


def check_interrupted_run_resumes(address: str, data: Any, out: Any, interrupt: Any) -> None:
    """A two-run cluster bench where ``interrupt(pid)`` strikes the second run's process after its third epoch
    (it returns False when it could not): the bench finishes, the struck run resumed from its saved epochs (its
    log never shrinks back) and equals an uninterrupted run of the same seed."""
    import threading
    import time

    from helpers import CONFIGS, SMALL_BENCH
    from hrlf.config import load_config
    from hrlf.engine.bench import PlannedRun, plan_bench
    from hrlf.engine.ray_engine import run_bench_ray

    long = [*SMALL_BENCH, "train.epochs=12", "train.patience=0"]
    entries = [("backbone", CONFIGS / "backbone" / "mosi.yaml")]
    plan = plan_bench(entries, seeds=[1, 2], data=data, out=out / "ray", overrides=long)
    target = plan[1].run_dir
    log = target / "train" / "log.csv"
    seen: dict[str, Any] = {"struck_after": 0, "least_after": None, "acted": None}

    def strike_after_a_few_epochs() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not seen["struck_after"]:
            if _rows(log) >= 3:
                pid = int((target / ".lock").read_text().split()[0])
                seen["struck_after"] = _rows(log)
                seen["acted"] = interrupt(pid)
                if not seen["acted"]:
                    return
            time.sleep(0.02)
        while time.monotonic() < deadline and not (target / "results.json").exists():  # the retry's progress
            rows = _rows(log)
            if rows and (seen["least_after"] is None or rows < seen["least_after"]):
                seen["least_after"] = rows
            time.sleep(0.02)

    watcher = threading.Thread(target=strike_after_a_few_epochs)
    watcher.start()
    results = run_bench_ray(plan, threads=1, address=address)
    watcher.join()
    assert seen["struck_after"] >= 3, "the run finished before it could be interrupted"
    assert seen["acted"], "the interruption could not be made"
    assert seen["least_after"] is None or seen["least_after"] >= seen["struck_after"]  # resumed, not restarted
    assert [r["seed"] for r in results] == [1, 2] and all(run.done for run in plan)
    assert not (target / ".lock").exists()
    cfg = load_config(CONFIGS / "backbone" / "mosi.yaml", [*long, f"data.path={data}", "train.seed=2"])
    fresh = PlannedRun(label="backbone", cfg=cfg, run_dir=out / "fresh")
    (uninterrupted,) = run_bench_ray([fresh], threads=1, address=address)
    assert without_wall_time(results[1]) == without_wall_time(uninterrupted)
