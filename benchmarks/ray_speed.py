"""Wall time of ``hrlf bench --engine ray`` on a local Ray cluster of one worker against two (docs/scaling.md).

Usage::

    OMP_NUM_THREADS=1 .venv-ray/bin/python benchmarks/ray_speed.py --seeds 1111 1112 1113 1114 [--epochs 3]

For each worker count, starts a cluster on 127.0.0.1 (a head without CPUs, that only schedules, and N workers of
one CPU each), runs the same bench of the backbone on the synthetic MOSI preset (written if missing) into a fresh
folder with ``--threads 1``, and stops the cluster again. Prints the wall times, their ratio and whether the two
benches' results are identical (they must be: one thread per run in both). It reports the load average before
each bench, because on a shared machine only ratios mean something.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# read by Ray when it is imported: loopback addresses for every node, no usage report
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ROOT = Path(__file__).resolve().parents[1]


def bench(args: argparse.Namespace, data: Path, out: Path, workers: int) -> tuple[float, list[dict]]:
    from ray.cluster_utils import Cluster

    from hrlf.cli import main as hrlf

    temp = tempfile.mkdtemp(prefix="hrlf-ray-")
    node = {"node_ip_address": "127.0.0.1", "temp_dir": temp, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "num_cpus": 0})
    try:
        for _ in range(workers):
            cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        argv = ["bench", "--models", "backbone", "--seeds", *map(str, args.seeds), "--data", str(data)]
        argv += ["--config-dir", str(ROOT / "configs"), "--out", str(out), "--no-progress"]
        argv += ["--set", f"train.epochs={args.epochs}", "--set", "train.patience=0"]
        argv += ["--engine", "ray", "--address", cluster.address, "--threads", "1"]
        started = time.perf_counter()
        code = hrlf(argv)
        wall = time.perf_counter() - started
    finally:
        cluster.shutdown()
    if code:
        raise SystemExit(f"hrlf bench failed with exit code {code}")
    runs = json.loads((out / "runs.json").read_text())
    for run in runs:
        for stage in run["selection"].values():
            stage.pop("seconds")  # training time: the one field that differs
    return wall, runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1111, 1112, 1113, 1114])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data", default=str(ROOT / "data" / "synth" / "mosi" / "aligned_50.pkl"))
    args = parser.parse_args()
    data = Path(args.data)
    if not data.is_file():
        subprocess.run([sys.executable, "-m", "hrlf.cli", "synth", "--preset", "mosi", "--out", str(data.parent)])
    print(f"cores {os.cpu_count()}; backbone x {len(args.seeds)} seeds, {args.epochs} epochs, 1 thread per run")
    walls, results = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            load = os.getloadavg()[0]
            walls[workers], results[workers] = bench(args, data, Path(tmp) / f"w{workers}", workers)
            print(
                f"{workers} worker{'s' if workers > 1 else ''}: {walls[workers]:.1f} s (load average before {load:.2f})"
            )
    print(f"speed-up with 2 workers: {walls[1] / walls[2]:.2f}x; results identical: {results[1] == results[2]}")


if __name__ == "__main__":
    main()
