"""Wall time of ``hrlf bench`` with one run at a time (all torch threads) against ``--jobs N`` (one thread each).

Usage::

    .venv/bin/python benchmarks/bench_jobs.py --models backbone cubemlp --seeds 1111 1112 [--jobs 2]

Runs the same models x seeds twice into fresh temporary folders on the synthetic MOSI preset (written with
``hrlf synth`` if missing): ``--jobs 1`` with the process's default thread count, then ``--jobs N``. Prints both wall
times, the speed-up, the largest difference between the two runs' test metrics and each run's inter-modality Avg.
in both (the thread counts differ, so training takes a different float path: expect differences of the size of a
seed change, not only in the last digits). Run it on an otherwise idle machine; it reports the machine's cores and
torch threads.
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

ROOT = Path(__file__).resolve().parents[1]


def bench(args: argparse.Namespace, data: Path, out: Path, jobs: int) -> float:
    command = [sys.executable, "-m", "hrlf.cli", "bench", "--models", *args.models, "--seeds", *map(str, args.seeds)]
    command += ["--data", str(data), "--recipe", "mosi", "--config-dir", str(ROOT / "configs"), "--out", str(out)]
    command += ["--jobs", str(jobs), "--no-progress"]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def metric_values(runs_json: Path) -> dict[tuple[str, int, str, str, str], float]:
    out = {}
    for run in json.loads(runs_json.read_text()):
        for protocol, conditions in run["protocol"].items():
            for condition, metrics in conditions.items():
                for metric, value in metrics.items():
                    out[(run["model"], run["seed"], protocol, condition, metric)] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["backbone", "cubemlp"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1111, 1112])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--data", default=str(ROOT / "data" / "synth" / "mosi" / "aligned_50.pkl"))
    args = parser.parse_args()
    data = Path(args.data)
    if not data.is_file():
        subprocess.run([sys.executable, "-m", "hrlf.cli", "synth", "--preset", "mosi", "--out", str(data.parent)])
    import torch

    print(
        f"cores {os.cpu_count()}, torch threads {torch.get_num_threads()}, OMP_NUM_THREADS "
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}; {len(args.models)} models x {len(args.seeds)} seeds"
    )
    with tempfile.TemporaryDirectory() as tmp:
        one = bench(args, data, Path(tmp) / "jobs1", 1)
        print(f"--jobs 1: {one:.1f} s")
        many = bench(args, data, Path(tmp) / f"jobs{args.jobs}", args.jobs)
        print(f"--jobs {args.jobs}: {many:.1f} s  (speed-up {one / many:.2f}x)")
        a = metric_values(Path(tmp) / "jobs1" / "runs.json")
        b = metric_values(Path(tmp) / f"jobs{args.jobs}" / "runs.json")
        diffs = [abs(a[k] - b[k]) for k in a if a[k] == a[k] and b[k] == b[k]]
        print(f"largest test-metric difference between the two: {max(diffs):.2e} over {len(diffs)} values")
        for key in sorted(k for k in a if k[2:] == ("inter", "avg", "F1_non0")):
            print(f"  {key[0]} seed {key[1]}: inter Avg F1 Non0 {a[key] * 100:.2f} (--jobs 1) vs {b[key] * 100:.2f}")


if __name__ == "__main__":
    main()
