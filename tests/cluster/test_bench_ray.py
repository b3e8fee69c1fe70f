"""``hrlf bench --engine ray`` on a local cluster: the same numbers as ``--jobs``, and a killed worker's run resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import CONFIGS, SMALL_BENCH, start_interruptible
from hrlf.cli import main
from ray_cluster import check_interrupted_run_resumes, needs_ray, without_cost_section, without_wall_time

pytestmark = [pytest.mark.ray, needs_ray]


def _bench(out: Path, data: Path, *engine: str) -> int:
    sets = [x for s in SMALL_BENCH for x in ("--set", s)]
    argv = ["bench", "--models", "backbone", "--seeds", "1", "2", "--data", str(data), "--out", str(out)]
    return main([*argv, *sets, "--no-progress", "--threads", "1", *engine])


def test_a_cluster_bench_equals_the_jobs_bench(ray_cluster, tiny_mosi, tmp_path, capsys):
    assert _bench(tmp_path / "jobs", tiny_mosi, "--jobs", "2") == 0
    assert _bench(tmp_path / "ray", tiny_mosi, "--engine", "ray", "--address", ray_cluster.address) == 0
    assert "with --engine ray" in capsys.readouterr().out
    for seed in (1, 2):
        run = Path("runs") / "backbone" / f"seed{seed}"
        local = json.loads((tmp_path / "jobs" / run / "results.json").read_text())
        remote = json.loads((tmp_path / "ray" / run / "results.json").read_text())
        assert remote["torch_threads"] == local["torch_threads"] == 1
        assert without_wall_time(remote) == without_wall_time(local)
        assert not (tmp_path / "ray" / run / ".lock").exists()  # released by the task
    for name in ("results.csv", "report.md"):  # collected into the same report (less what the runs cost)
        ray, jobs = ((tmp_path / where / name).read_text() for where in ("ray", "jobs"))
        assert without_cost_section(ray) == without_cost_section(jobs)
        assert ("## What the runs cost" in ray) == (name == "report.md")
    assert json.loads((tmp_path / "ray" / "timing.json").read_text())["engine"] == "ray"


def test_a_killed_worker_is_retried_and_its_run_resumes(ray_cluster, tiny_mosi, tmp_path):
    def kill(pid: int) -> bool:  # from outside, as the OOM killer would, by the lock's pid
        os.kill(pid, signal.SIGKILL)
        return True

    check_interrupted_run_resumes(ray_cluster.address, tiny_mosi, tmp_path, kill)


@pytest.mark.parametrize(
    ("signum", "code", "message"),
    [(signal.SIGINT, 130, "error: interrupted"), (signal.SIGTERM, 143, "error: terminated by SIGTERM")],
    ids=["ctrl-c", "sigterm"],
)
def test_ctrl_c_cancels_the_tasks_and_they_release_their_locks(ray_cluster, tiny_mosi, tmp_path, signum, code, message):
    out = tmp_path / "b"
    # far more epochs than the test waits for: the runs are still training when Ctrl-C comes (with 60 epochs a
    # loaded machine let them finish first, and the bench then rightly exited 0)
    sets = [x for s in [*SMALL_BENCH, "train.epochs=100000", "train.patience=0"] for x in ("--set", s)]
    argv = [sys.executable, "-X", "faulthandler", "-m", "hrlf.cli", "bench", "--models", "backbone", "--seeds", "1"]
    argv += ["2", "--data", str(tiny_mosi), "--config-dir", str(CONFIGS), "--out", str(out), "--no-progress", *sets]
    argv += ["--engine", "ray", "--address", ray_cluster.address, "--threads", "1"]
    bench = start_interruptible(argv)
    logs = [out / "runs" / "backbone" / f"seed{seed}" / "train" / "log.csv" for seed in (1, 2)]
    deadline = time.monotonic() + 120
    while not all(log.is_file() for log in logs) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(log.is_file() for log in logs), "both runs should be training on the two workers"
    time.sleep(1.0)  # a few epochs in
    assert bench.poll() is None, "the bench should still be running"
    bench.send_signal(signum)
    try:
        _, err = bench.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # where it hangs: faulthandler prints every thread's stack on SIGABRT
        bench.send_signal(signal.SIGABRT)
        _, err = bench.communicate(timeout=30)
        pytest.fail(f"the bench did not exit within 60 s of {signum.name}; its stacks:\n{err[-6000:]}")
    assert bench.returncode == code and err.strip().splitlines()[-1].startswith(message), err[-2000:]
    assert not list(out.glob("runs/*/*/.lock"))  # each task was stopped as by Ctrl-C and released its lock
    assert not list(out.glob("runs/*/*/results.json"))


def test_gpus_the_cluster_lacks_or_runs_on_cpu_are_refused_at_once(ray_cluster, tiny_mosi, tmp_path, capsys):
    base = ["--engine", "ray", "--address", ray_cluster.address, "--gpus", "1"]
    assert _bench(tmp_path / "cpu", tiny_mosi, *base) == 2  # the recipe trains on train.device=cpu
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.device=cpu; add --set train.device=cuda" in err[0], err
    assert _bench(tmp_path / "gpu", tiny_mosi, *base, "--set", "train.device=auto") == 2  # cuda: not in a CPU torch
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--gpus 1 per run, but the Ray cluster has 0 GPUs" in err[0], err
    assert not list((tmp_path / "gpu").glob("runs/*/*/results.json"))
