"""The generic trainer: determinism, resume equals uninterrupted, selection on valid, atomic state."""

from __future__ import annotations

import json
import os

import pytest
import torch

from hrlf.config import load_config
from hrlf.engine.run import RunDirError, load_run, run_experiment

TINY_MODEL = ["model.d_model=16", "model.num_heads=2", "model.num_layers=1"]


def tiny_cfg(path, *extra):
    cfg = load_config(
        None,
        [*TINY_MODEL, f"data.path={path}", "train.epochs=3", "train.batch_size=16", "train.patience=0", *extra],
    )
    cfg.train.progress = False
    cfg.eval.rates = [0.0, 0.5, 1.0]
    return cfg


def test_same_seed_same_metrics_different_seed_different(tiny_mosi, tmp_path):
    a = run_experiment(tiny_cfg(tiny_mosi), run_dir=tmp_path / "a")
    b = run_experiment(tiny_cfg(tiny_mosi), run_dir=tmp_path / "b")
    c = run_experiment(tiny_cfg(tiny_mosi, "train.seed=7"), run_dir=tmp_path / "c")
    assert a["protocol"] == b["protocol"]
    assert a["protocol"]["inter"]["lav"]["MAE"] != c["protocol"]["inter"]["lav"]["MAE"]


def test_resume_after_interruption_equals_uninterrupted(tiny_mosi, tmp_path, monkeypatch):
    full = run_experiment(tiny_cfg(tiny_mosi), run_dir=tmp_path / "full")

    # interrupt the second run in the middle of epoch 2, as a kill would
    import hrlf.engine.trainer as trainer

    calls = {"n": 0}
    real_step = trainer.TrainingSystem.training_step

    def dying_step(self, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # 3 batches per epoch: this is inside epoch 2
            raise KeyboardInterrupt
        return real_step(self, **kwargs)

    monkeypatch.setattr(trainer.TrainingSystem, "training_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(tiny_cfg(tiny_mosi), run_dir=tmp_path / "resumed")
    monkeypatch.setattr(trainer.TrainingSystem, "training_step", real_step)
    state = torch.load(tmp_path / "resumed" / "train" / "state.pt", weights_only=True)
    assert state["epoch"] == 1
    assert not (tmp_path / "resumed" / "results.json").exists()

    with pytest.raises(RunDirError, match="--resume"):
        run_experiment(tiny_cfg(tiny_mosi), run_dir=tmp_path / "resumed")
    resumed = run_experiment(tiny_cfg(tiny_mosi), run_dir=tmp_path / "resumed", resume=True)
    assert resumed["protocol"] == full["protocol"]
    assert resumed["selection"] == {
        k: {**v, "seconds": resumed["selection"][k]["seconds"]} for k, v in full["selection"].items()
    }


def test_resume_refuses_a_different_config(tiny_mosi, tmp_path):
    run_experiment(tiny_cfg(tiny_mosi), run_dir=tmp_path / "r")
    with pytest.raises(RunDirError, match="different configuration"):
        run_experiment(tiny_cfg(tiny_mosi, "train.lr=0.5"), run_dir=tmp_path / "r", resume=True)


def test_run_directory_contents_and_strict_reload(tiny_mosi, tmp_path):
    results = run_experiment(tiny_cfg(tiny_mosi), run_dir=tmp_path / "r")
    run_dir = tmp_path / "r"
    for name in ("config.yaml", "model.safetensors", "checkpoint.json", "results.json", "train/log.csv"):
        assert (run_dir / name).is_file(), name
    assert not list(run_dir.rglob("*.tmp"))
    meta = json.loads((run_dir / "checkpoint.json").read_text())
    assert len(meta["data"]["sha256"]) == 64
    assert meta["config"]["model"]["name"] == "backbone"
    log_lines = (run_dir / "train" / "log.csv").read_text().strip().splitlines()
    assert len(log_lines) == 1 + 3  # header + one row per epoch
    assert set(results["protocol"]["inter"]) == {"l", "a", "v", "la", "lv", "av", "lav", "avg"}
    assert set(results["protocol"]["intra"]) == {"0.0", "0.5", "1.0", "auc"}
    assert results["protocols"]["eval"]["inter.l"]["name"].startswith("modality_drop")
    assert results["protocols"]["train"]["name"] == (
        "msm(ratio_dist='discrete', ratio_step=0.1, subset_prob=0.5, per_modality_ratio=False)"
    )
    assert results["protocols"]["eval"]["intra.0.5"]["name"] == "frame_drop(rate=0.5, seed=0)"

    # the reloaded model reproduces the selected checkpoint's test predictions
    from hrlf.data.datamodule import DataModule
    from hrlf.data.features import load_features
    from hrlf.engine.evaluate import evaluate_protocols

    run = load_run(run_dir)
    scores, _ = evaluate_protocols(run.model, DataModule(load_features(tiny_mosi)), "test", which="inter")
    assert scores["inter"] == results["protocol"]["inter"]
    # and the validation split's modality subsets, recorded for choosing recipes without the test split
    valid, _ = evaluate_protocols(run.model, DataModule(load_features(tiny_mosi)), "valid", which="inter")
    assert results["valid_protocol"] == {"inter": valid["inter"]} and valid["inter"] != scores["inter"]


def test_selection_uses_validation_only(tiny_mosi, tmp_path):
    results = run_experiment(tiny_cfg(tiny_mosi, "train.epochs=4"), run_dir=tmp_path / "r")
    history = (tmp_path / "r" / "train" / "log.csv").read_text().splitlines()
    header = history[0].split(",")
    losses = [float(line.split(",")[header.index("valid_loss")]) for line in history[1:]]
    best = results["selection"]["train"]["best_epoch"]
    assert losses[best - 1] == pytest.approx(min(losses), rel=1e-5)
    assert "test" not in ",".join(header)


def test_early_stopping(tiny_mosi, tmp_path):
    results = run_experiment(
        tiny_cfg(tiny_mosi, "train.epochs=30", "train.patience=1", "train.lr=0.05"), run_dir=tmp_path / "r"
    )
    sel = results["selection"]["train"]
    assert sel["stopped_early"] and sel["epochs_run"] < 30
    assert sel["epochs_run"] == sel["best_epoch"] + 1


def test_emotions_run_end_to_end(tiny_iemocap, tmp_path):
    results = run_experiment(tiny_cfg(tiny_iemocap, "train.select_metric=f1"), run_dir=tmp_path / "r")
    lav = results["protocol"]["inter"]["lav"]
    assert {"Happy_F1", "Sad_F1", "Angry_F1", "Neutral_F1", "Mean_F1"} <= set(lav)


def test_two_stage_system_saves_student_and_teacher_apart(tiny_mosi, tmp_path):
    from safetensors.torch import load_file

    cfg = load_config(
        None,
        [
            "model.name=hrlf",
            *TINY_MODEL,
            f"data.path={tiny_mosi}",
            "train.epochs=2",
            "train.batch_size=16",
            "model.teacher_epochs=1",
            "train.progress=false",
            "eval.rates=[0.0,1.0]",
        ],
    )
    results = run_experiment(cfg, run_dir=tmp_path / "r")
    assert set(results["selection"]) == {"teacher", "student"}
    assert results["selection"]["teacher"]["epochs_run"] == 1
    student = load_file(str(tmp_path / "r" / "model.safetensors"))
    teacher = load_file(str(tmp_path / "r" / "teacher.safetensors"))
    assert set(student) == set(teacher)  # same architecture, separate files: inference needs only the student
    assert any(not torch.equal(student[k], teacher[k]) for k in student)
    run = load_run(tmp_path / "r")
    assert run.cfg.model_name == "hrlf"


def test_kill_9_then_resume_equals_uninterrupted(tiny_mosi, tmp_path):
    """A real SIGKILL in the middle of training, then --resume: the same results and log as a clean run."""
    import signal
    import subprocess
    import sys
    import time

    args = [
        "train",
        "--data",
        str(tiny_mosi),
        "--set",
        "model.d_model=16",
        "--set",
        "model.num_heads=2",
        "--set",
        "model.num_layers=1",
        "--set",
        "train.epochs=6",
        "--set",
        "train.batch_size=8",
        "--set",
        "train.patience=0",
        "--set",
        "eval.rates=[0.0,1.0]",
    ]
    exe = [sys.executable, "-m", "hrlf.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*exe, *args, "--out", str(tmp_path / "clean")], check=True, capture_output=True, env=env)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [*exe, *args, "--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    state = killed / "train" / "state.pt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and torch.load(state, weights_only=True)["epoch"] >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.json").exists(), "the run finished before it could be killed"
    subprocess.run([*exe, *args, "--out", str(killed), "--resume"], check=True, capture_output=True, env=env)
    clean = json.loads((tmp_path / "clean" / "results.json").read_text())
    resumed = json.loads((killed / "results.json").read_text())
    assert resumed["protocol"] == clean["protocol"]
    assert (killed / "train" / "log.csv").read_text().count("\n") == (
        tmp_path / "clean" / "train" / "log.csv"
    ).read_text().count("\n")


def test_schedulers_step_once_per_epoch_and_resume_with_their_state(tiny_mosi, tmp_path, monkeypatch):
    """An objective's learning-rate schedule advances after each validation and continues after a resume."""
    from hrlf.engine.system import TaskSystem as TaskObjective

    def halving(_self, optimizers):
        return {"step": torch.optim.lr_scheduler.StepLR(optimizers["main"], step_size=1, gamma=0.5)}

    monkeypatch.setattr(TaskObjective, "schedulers", halving)
    run_experiment(tiny_cfg(tiny_mosi, "train.epochs=2", "train.lr=0.008"), run_dir=tmp_path / "r")
    state = torch.load(tmp_path / "r" / "train" / "state.pt", weights_only=True)
    assert state["optimizers"]["main"]["param_groups"][0]["lr"] == pytest.approx(0.002)
    assert state["schedulers"]["step"]["last_epoch"] == 2

    # resume a 2-epoch state into a 3-epoch run: the schedule continues (config differs only in epochs)
    import shutil

    shutil.copytree(tmp_path / "r", tmp_path / "r3")
    cfg = tiny_cfg(tiny_mosi, "train.epochs=3", "train.lr=0.008")
    (tmp_path / "r3" / "results.json").unlink()
    (tmp_path / "r3" / "config.yaml").unlink()
    run_experiment(cfg, run_dir=tmp_path / "r3", resume=True)
    state = torch.load(tmp_path / "r3" / "train" / "state.pt", weights_only=True)
    assert state["epoch"] == 3
    assert state["optimizers"]["main"]["param_groups"][0]["lr"] == pytest.approx(0.001)


def test_stage_seconds_add_up_across_resumes(tiny_mosi, tmp_path, monkeypatch):
    import hrlf.engine.trainer as trainer

    # a finished stage resumed (killed after training, before results.json): its time is kept, not 0.0
    full = run_experiment(tiny_cfg(tiny_mosi), run_dir=tmp_path / "full")
    (tmp_path / "full" / "results.json").unlink()
    again = run_experiment(tiny_cfg(tiny_mosi), run_dir=tmp_path / "full", resume=True)
    assert full["selection"]["train"]["seconds"] > 0
    assert again["selection"]["train"]["seconds"] == full["selection"]["train"]["seconds"]

    # interrupted in epoch 2: the resumed total includes epoch 1's time from the first session
    calls = {"n": 0}
    real_step = trainer.TrainingSystem.training_step

    def dying_step(self, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # 3 batches per epoch: inside epoch 2
            raise KeyboardInterrupt
        return real_step(self, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(trainer.TrainingSystem, "training_step", dying_step)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(tiny_cfg(tiny_mosi), run_dir=tmp_path / "resumed")
    first_session = torch.load(tmp_path / "resumed" / "train" / "state.pt", weights_only=True)["seconds"]
    resumed = run_experiment(tiny_cfg(tiny_mosi), run_dir=tmp_path / "resumed", resume=True)
    assert first_session > 0 and resumed["selection"]["train"]["seconds"] > first_session


def test_results_record_what_the_run_cost(tiny_mosi, tmp_path):
    results = run_experiment(tiny_cfg(tiny_mosi), run_dir=tmp_path / "r")
    cost = results["resources"]
    assert cost["train_seconds"] == results["selection"]["train"]["seconds"] > 0
    assert cost["evaluate_seconds"] > 0
    import resource

    # this process's peak so far (KiB on Linux): at least what the run reported (to its rounding to 0.1 MiB), and
    # a process that holds torch is above 100 MiB
    assert 100 < cost["peak_rss_mb"] <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 + 0.05
    assert json.loads((tmp_path / "r" / "results.json").read_text())["resources"] == cost


def test_one_progress_line_per_epoch_when_the_bar_is_off(tiny_mosi, tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="hrlf.progress")
    cfg = tiny_cfg(tiny_mosi, "train.select_metric=mae")
    cfg.train.progress = True  # a bar on a terminal; pytest captures stderr, so tqdm turns it off
    run_experiment(cfg, run_dir=tmp_path / "r")
    lines = [r.getMessage() for r in caplog.records if r.name == "hrlf.progress"]
    assert len(lines) == 3, lines
    assert lines[0].startswith("train epoch 1/3: train loss ") and "| valid loss " in lines[0] and ", MAE " in lines[0]
    assert " s, ETA " in lines[0] and lines[2].endswith(", done")
    caplog.clear()
    run_experiment(tiny_cfg(tiny_mosi), run_dir=tmp_path / "quiet")  # progress=False: quiet
    assert not [r for r in caplog.records if r.name == "hrlf.progress"]


def test_a_parameter_group_s_step_schedule_sets_its_lr_before_every_training_step(tiny_mosi, tmp_path, monkeypatch):
    """Warm-up and linear decay (a fine-tuned text encoder's) follow the planned steps of the stage, step by step;
    groups without a schedule keep their lr."""
    from hrlf.engine.schedule import step_lr_factor
    from hrlf.engine.system import TaskSystem

    plain_optimizers, plain_step = TaskSystem.optimizers, TaskSystem.training_step
    seen: list[tuple[float, float]] = []

    def scheduled(self, model, cfg):
        opts = plain_optimizers(self, model, cfg)
        params = opts["main"].param_groups[0]["params"]
        half = len(params) // 2
        opts["main"].param_groups[0]["params"] = params[:half]
        schedule = {"base_lr": 0.01, "warmup": 0.25, "decay": "linear"}
        opts["main"].add_param_group({"params": params[half:], "lr": 0.01, "step_schedule": schedule})
        return opts

    def recording(self, *, optimizers, **kwargs):
        seen.append(tuple(g["lr"] for g in optimizers["main"].param_groups))
        return plain_step(self, optimizers=optimizers, **kwargs)

    monkeypatch.setattr(TaskSystem, "optimizers", scheduled)
    monkeypatch.setattr(TaskSystem, "training_step", recording)
    run_experiment(tiny_cfg(tiny_mosi, "train.lr=0.002"), run_dir=tmp_path / "r")
    total = len(seen)
    assert total >= 6  # 3 epochs of at least 2 batches
    expected = [0.01 * step_lr_factor(i, total, warmup=0.25, decay="linear") for i in range(total)]
    assert [lr for _, lr in seen] == pytest.approx(expected)
    assert {lr for lr, _ in seen} == {0.002}
    assert expected[0] < expected[round(0.25 * total)] == pytest.approx(0.01) and expected[-1] < 0.01 / 2


def test_step_lr_factor_rises_over_the_warm_up_then_stays_or_falls_to_zero():
    from hrlf.engine.schedule import step_lr_factor

    linear = [step_lr_factor(s, 10, warmup=0.2, decay="linear") for s in range(10)]
    assert linear[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert linear[2:] == pytest.approx([(10 - s) / 8 for s in range(2, 10)])
    assert [step_lr_factor(s, 10, warmup=0.2, decay="constant") for s in range(10)] == [0.5] + [1.0] * 9
    assert [step_lr_factor(s, 4, warmup=0.0, decay="constant") for s in range(4)] == [1.0] * 4
