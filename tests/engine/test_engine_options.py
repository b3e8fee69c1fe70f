"""``--engine ray`` without Ray, engine option mistakes, and the run lock across machines sharing a folder."""

from __future__ import annotations

import os
import socket
import sys
import time

import pytest

from hrlf.cli import main
from hrlf.engine import run as run_module
from hrlf.engine.run import RunDirError, run_lock


@pytest.fixture
def without_ray(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, installed or not


@pytest.mark.usefixtures("without_ray")
@pytest.mark.parametrize("command", ["bench", "tune", "extract"])
def test_engine_ray_without_ray_names_the_extra(command, tiny_mosi, tmp_path, capsys):
    argv = {
        "bench": ["bench", "--models", "backbone", "--seeds", "1", "--data", str(tiny_mosi)],
        "tune": ["tune", "--config", "configs/backbone/mosi.yaml", "--space", str(tmp_path / "space.yaml")],
        "extract": ["extract", "--labels", str(tmp_path / "label.csv")],
    }[command]
    (tmp_path / "space.yaml").write_text("train.lr: {loguniform: [1.0e-4, 1.0e-2]}\n")
    (tmp_path / "label.csv").write_text("video_id,clip_id,text,label,label_T,label_A,label_V,annotation,mode\n")
    out = tmp_path / ("out.pkl" if command == "extract" else "out")
    assert main([*argv, "--out", str(out), "--engine", "ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --engine ray needs Ray") and "hrlf[ray]" in err[0]
    assert not out.exists()  # refused before any work


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--address", "auto"], "--address needs --engine ray"),
        (["--engine", "ray", "--address", "head-node"], "expected auto or HOST:PORT"),
        (["--threads", "2"], "--threads needs --jobs > 1 or --engine ray"),
        (["--jobs", "2", "--threads", "0"], "--threads must be >= 1"),
        (["--gpus", "1"], "--gpus needs --engine ray"),
    ],
)
def test_engine_option_mistakes_are_one_line(extra, message, tiny_mosi, tmp_path, capsys):
    argv = ["bench", "--models", "backbone", "--seeds", "1", "--data", str(tiny_mosi), "--out", str(tmp_path / "b")]
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_a_lock_of_another_machine_is_respected_while_fresh_and_taken_over_when_stale(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lock = run_dir / ".lock"
    lock.write_text("4242 other-node")  # a pid means nothing here: only the heartbeat tells
    with pytest.raises(RunDirError, match="pid 4242 on other-node"), run_lock(run_dir):
        pass
    old = time.time() - run_module.LOCK_STALE_SECONDS - 1
    os.utime(lock, (old, old))  # its machine stopped refreshing it
    with run_lock(run_dir):
        assert lock.read_text().split()[:2] == [str(os.getpid()), socket.gethostname()]
    assert not lock.exists()


def test_a_retry_of_the_same_task_takes_over_at_once_and_others_do_not(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lock = run_dir / ".lock"
    lock.write_text("4242 other-node ray-task-abc")  # fresh: written just now
    with pytest.raises(RunDirError, match="another process"), run_lock(run_dir, owner="ray-task-xyz"):
        pass
    with run_lock(run_dir, owner="ray-task-abc"):  # Ray retries a task only once its attempt is dead
        assert lock.read_text().split()[2] == "ray-task-abc"


def test_the_holder_keeps_its_lock_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(run_module, "LOCK_HEARTBEAT_SECONDS", 0.05)
    run_dir = tmp_path / "run"
    with run_lock(run_dir):
        old = time.time() - 1000
        os.utime(run_dir / ".lock", (old, old))
        time.sleep(0.3)
        assert time.time() - (run_dir / ".lock").stat().st_mtime < 5
