"""Benchmark runs in worker processes: same results as in-process, checks before work, errors, resume."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers import CONFIGS, SMALL_BENCH, start_interruptible
from hrlf.cli import main
from hrlf.data.features import DataFileError
from hrlf.engine.bench import BenchError, auto_jobs, plan_bench, run_bench, usable_cpus
from hrlf.engine.run import LockHolder, RunDirError, same_config


def _plan(data, out, *, seeds=(1, 2), models=("backbone",), extra=()):
    entries = [(m, CONFIGS / m.partition(":")[0] / "mosi.yaml") for m in models]
    return plan_bench(entries, seeds=seeds, data=data, out=out, overrides=[*SMALL_BENCH, *extra])


def test_parallel_runs_match_in_process_runs(tiny_mosi, tmp_path):
    # the test process has one torch thread and two jobs get one each: identical arithmetic, identical results
    sequential = run_bench(_plan(tiny_mosi, tmp_path / "a", seeds=(1, 2, 3)), jobs=1)
    finished = []
    plan = _plan(tiny_mosi, tmp_path / "b", seeds=(1, 2, 3))
    parallel = run_bench(plan, jobs=2, threads=1, on_done=lambda run, _res: finished.append(run.cfg.train.seed))
    assert [r["seed"] for r in parallel] == [1, 2, 3]  # plan order, whatever order they finished in
    assert sorted(finished) == [1, 2, 3]
    for a, b in zip(sequential, parallel, strict=True):
        assert a["torch_threads"] == b["torch_threads"] == 1  # recorded with the results
        assert a["protocol"] == b["protocol"]
        assert a["selection"]["train"]["valid"] == b["selection"]["train"]["valid"]
    # the workers ran without a progress bar; the folder is still reused by a run that shows one
    saved = (tmp_path / "b" / "runs" / "backbone" / "seed1" / "config.yaml").read_text()
    assert "progress: false" in saved
    again = run_bench(_plan(tiny_mosi, tmp_path / "b", seeds=(1, 2, 3), extra=["train.progress=true"]), jobs=2)
    assert [r["protocol"] for r in again] == [r["protocol"] for r in parallel]


def test_plan_refuses_a_folder_of_another_config_before_any_work(tiny_mosi, tmp_path):
    run_bench(_plan(tiny_mosi, tmp_path, seeds=(2,)), jobs=1)
    trained = sorted(p.name for p in (tmp_path / "runs" / "backbone").iterdir())
    with pytest.raises(RunDirError, match="different configuration"):
        _plan(tiny_mosi, tmp_path, seeds=(1, 2), extra=["train.lr=0.01"])
    assert sorted(p.name for p in (tmp_path / "runs" / "backbone").iterdir()) == trained  # seed 1 not started


def test_same_config_ignores_only_presentation():
    a = {"train": {"progress": True, "lr": 0.001}, "model": {"name": "backbone"}}
    assert same_config(a, {"train": {"progress": False, "lr": 0.001}, "model": {"name": "backbone"}})
    assert not same_config(a, {"train": {"progress": True, "lr": 0.002}, "model": {"name": "backbone"}})


def test_worker_error_is_raised_in_the_parent_with_its_type(tmp_path):
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(DataFileError, match="junk.pkl"):
        run_bench(_plan(junk, tmp_path / "b"), jobs=2, threads=1)


def test_a_killed_worker_stops_the_bench_and_the_rerun_finishes(tiny_mosi, tmp_path):
    long = ["train.epochs=30", "train.patience=0"]
    run_bench(_plan(tiny_mosi, tmp_path, seeds=(1,), extra=long), jobs=1)  # a finished run, reused below
    kept = (tmp_path / "runs" / "backbone" / "seed1" / "results.json").read_text()
    plan = _plan(tiny_mosi, tmp_path, seeds=(1, 2), extra=long)
    started = plan[1].run_dir / "train" / "log.csv"

    def kill_once_training():  # from outside, as the OOM killer would: once seed 2 has finished an epoch
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            workers = [p for p in multiprocessing.active_children() if p.name.startswith("bench-")]
            if workers and started.is_file():
                for process in workers:
                    process.kill()
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_once_training)
    killer.start()
    with pytest.raises(BenchError, match="died"):
        run_bench(plan, jobs=2, threads=1)
    killer.join()
    assert not multiprocessing.active_children()  # nothing left running
    assert [run.done for run in plan] == [True, False]
    results = run_bench(plan, jobs=2, threads=1)  # the rerun resumes seed 2 from its last epoch
    assert [r["seed"] for r in results] == [1, 2] and all(run.done for run in plan)
    assert (tmp_path / "runs" / "backbone" / "seed1" / "results.json").read_text() == kept  # reused, not retrained


def test_jobs_must_be_positive(tiny_mosi, tmp_path):
    with pytest.raises(ValueError, match="jobs"):
        run_bench(_plan(tiny_mosi, tmp_path), jobs=0)


def test_auto_jobs_is_one_run_per_core_and_counts_every_planned_run():
    assert [auto_jobs(runs, cpus=2) for runs in (0, 1, 2, 5)] == [1, 1, 2, 2]
    assert auto_jobs(3, cpus=16) == 3
    assert 1 <= usable_cpus() <= (os.cpu_count() or 1)


def test_bench_defaults_to_one_thread_runs_side_by_side(tiny_mosi, tmp_path, capsys, monkeypatch):
    import torch

    import hrlf.engine.bench as bench

    monkeypatch.setattr(bench, "usable_cpus", lambda: 2)  # the CI machine's two cores, on any machine
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # and torch's default of one thread per core
    out = tmp_path / "b"
    argv = ["bench", "--models", "backbone", "--seeds", "1", "2", "--data", str(tiny_mosi), "--out", str(out)]
    argv += ["--config-dir", str(CONFIGS), "--no-progress", *[x for s in SMALL_BENCH for x in ("--set", s)]]
    assert main(argv) == 0
    assert "with --jobs 2 (auto)" in capsys.readouterr().out
    timing = json.loads((out / "timing.json").read_text())
    assert timing["jobs"] == 2 and timing["jobs_auto"] is True
    results = [json.loads((out / "runs" / "backbone" / f"seed{s}" / "results.json").read_text()) for s in (1, 2)]
    assert [r["torch_threads"] for r in results] == [1, 1]  # two workers of one thread each
    assert main([*argv, "--jobs", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "expected a whole number or auto, got 'x'" in err[0], err


def test_a_lone_run_still_trains_in_a_worker_with_the_jobs_thread_count(tiny_mosi, tmp_path):
    # resuming a bench with one run left must not change that run's thread count (and so its numbers)
    (result,) = run_bench(_plan(tiny_mosi, tmp_path, seeds=(1,)), jobs=2, threads=2)
    assert result["torch_threads"] == 2  # this test process has 1 thread: the run trained in a worker


def _alive(pid: int) -> bool:
    """A process that still runs (a zombie, waiting for a parent to collect its exit, counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _training_bench(tiny_mosi: Path, out: Path) -> tuple[subprocess.Popen[str], list[int]]:
    """A two-job bench as a user starts it, both runs training (far more epochs than the test waits for); returns
    the process and its workers' pids (from their run locks)."""
    sets = [x for s in [*SMALL_BENCH, "train.epochs=100000", "train.patience=0"] for x in ("--set", s)]
    argv = [sys.executable, "-m", "hrlf.cli", "bench", "--models", "backbone", "--seeds", "1", "2", "--data"]
    argv += [str(tiny_mosi), "--config-dir", str(CONFIGS), "--out", str(out), "--no-progress", "--jobs", "2", *sets]
    bench = start_interruptible(argv)
    runs = [out / "runs" / "backbone" / f"seed{seed}" for seed in (1, 2)]
    deadline = time.monotonic() + 120
    while not all((r / "train" / "log.csv").is_file() for r in runs) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert bench.poll() is None, "the bench should still be running"
    return bench, [LockHolder.parse((r / ".lock").read_text()).pid for r in runs]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_stops_the_bench_and_its_workers_as_ctrl_c_does(tiny_mosi, tmp_path):
    bench, workers = _training_bench(tiny_mosi, tmp_path / "b")
    assert all(_alive(pid) for pid in workers) and bench.pid not in workers
    bench.send_signal(signal.SIGTERM)  # `kill PID`: the bench alone, not its process group
    _, err = bench.communicate(timeout=60)
    assert bench.returncode == 128 + signal.SIGTERM
    # (multiprocessing's resource tracker may add a warning about the stopped workers' semaphores after it)
    assert any(line.startswith("error: terminated by SIGTERM (finished runs are kept") for line in err.splitlines())
    assert not any(_alive(pid) for pid in workers)  # before, they trained on, holding their run locks


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal and /proc are Linux's")
def test_workers_end_when_the_bench_is_killed(tiny_mosi, tmp_path):
    bench, workers = _training_bench(tiny_mosi, tmp_path / "b")
    bench.kill()  # SIGKILL: no clean-up of its own can run
    bench.communicate(timeout=30)
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in workers)
