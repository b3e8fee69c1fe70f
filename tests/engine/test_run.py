"""The run folder lock: one process trains a folder at a time; stale locks are taken over."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hrlf.engine.run import RunDirError, run_lock


def test_a_live_holder_refuses_a_second_trainer(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run_dir.mkdir()
        (run_dir / ".lock").write_text(str(holder.pid))
        with pytest.raises(RunDirError, match=f"pid {holder.pid}"), run_lock(run_dir):
            pass
        assert (run_dir / ".lock").read_text() == str(holder.pid)  # the holder's lock is left alone
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over_and_released(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".lock").write_text(gone.stdout.strip())
    (run_dir / "config.yaml").write_text("x: 1\n")
    with run_lock(run_dir):
        assert (run_dir / ".lock").read_text().strip() != gone.stdout.strip()
    assert not (run_dir / ".lock").exists() and (run_dir / "config.yaml").exists()


def test_a_folder_created_for_a_failed_run_is_removed(tmp_path):
    run_dir = tmp_path / "new"
    with pytest.raises(RuntimeError), run_lock(run_dir):
        raise RuntimeError("failed before writing anything")
    assert not run_dir.exists()


def test_two_commands_on_one_folder(tiny_mosi, tmp_path):
    from hrlf.config import load_config
    from hrlf.engine.run import run_experiment

    cfg = load_config(
        None,
        ["model.d_model=16", "model.num_heads=2", "model.num_layers=1", "train.epochs=1", f"data.path={tiny_mosi}"],
    )
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / ".lock").write_text(str(holder.pid))
        with pytest.raises(RunDirError, match="another process"):
            run_experiment(cfg, run_dir=tmp_path / "run")
    finally:
        holder.kill()
        holder.wait()
    results = run_experiment(cfg, run_dir=tmp_path / "run")  # the holder is gone: its lock is stale
    assert results["seed"] == cfg.train.seed and not (tmp_path / "run" / ".lock").exists()


def test_a_folder_that_never_finished_an_epoch_blocks_no_later_run(tiny_mosi, tmp_path, monkeypatch):
    import hrlf.engine.trainer as trainer
    from hrlf.config import load_config
    from hrlf.engine.run import run_experiment

    base = ["model.d_model=16", "model.num_heads=2", "model.num_layers=1", "train.epochs=1", "train.progress=false"]
    base += [f"data.path={tiny_mosi}", "eval.rates=[0.0,1.0]"]

    def dying_step(_self, **_kwargs):
        raise KeyboardInterrupt  # the first step: no epoch finishes

    with monkeypatch.context() as patch:
        patch.setattr(trainer.TrainingSystem, "training_step", dying_step)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(load_config(None, [*base, "train.lr=0.5"]), run_dir=tmp_path / "run")
    assert (tmp_path / "run" / "config.yaml").is_file()  # written before training started
    # another configuration, without --resume: nothing was trained there, so the folder is free
    results = run_experiment(load_config(None, base), run_dir=tmp_path / "run")
    assert results["selection"]["train"]["epochs_run"] == 1
    assert "lr: 0.001" in (tmp_path / "run" / "config.yaml").read_text()
    with pytest.raises(RunDirError, match="different configuration"):  # now it has: refused as before
        run_experiment(load_config(None, [*base, "train.lr=0.5"]), run_dir=tmp_path / "run", resume=True)


def test_every_weights_file_is_hashed_and_checked_on_load(tiny_mosi, tmp_path):
    from helpers import tiny_run_cfg
    from hrlf.engine.checkpoint import sha256_file
    from hrlf.engine.run import load_run, run_experiment

    run_dir = tmp_path / "run"
    run_experiment(tiny_run_cfg("corrkd", tiny_mosi, "train.epochs=1"), run_dir=run_dir)  # teacher, then student
    recorded = json.loads((run_dir / "checkpoint.json").read_text())["weights_sha256"]
    files = sorted(p.name for p in run_dir.glob("*.safetensors"))
    assert sorted(recorded) == files and len(files) == 2
    assert all(recorded[name] == sha256_file(run_dir / name) for name in files)
    load_run(run_dir)
    with (run_dir / "model.safetensors").open("r+b") as f:  # one flipped byte at the end: header still valid
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    with pytest.raises(RunDirError, match="expected SHA-256"):
        load_run(run_dir)


def test_a_run_directory_that_cannot_be_created_is_a_run_dir_error(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for run_dir in (a_file / "run", Path("/proc/hrlf-x")):
        with pytest.raises(RunDirError, match="cannot create the run directory"), run_lock(run_dir):
            pass


def _tiny(data, *extra):
    from hrlf.config import load_config

    base = ["model.d_model=16", "model.num_heads=2", "model.num_layers=1", "train.batch_size=16"]
    base += ["train.progress=false", f"data.path={data}", "eval.rates=[0.0,1.0]", "train.patience=0"]
    return load_config(None, [*base, *extra])


def test_a_different_config_names_the_keys_that_differ(tiny_mosi, tmp_path):
    from hrlf.engine.run import run_experiment

    def resume(*extra):
        run_experiment(_tiny(tiny_mosi, *extra), run_dir=tmp_path / "r", resume=True)

    run_experiment(_tiny(tiny_mosi, "train.epochs=2"), run_dir=tmp_path / "r")
    with pytest.raises(RunDirError, match=r"\(model\.d_model: 16 there, 8 now; train\.lr: 0\.001 there, 0\.5 now\)"):
        resume("train.epochs=2", "train.lr=0.5", "model.d_model=8")
    with pytest.raises(RunDirError, match=r"train\.epochs: 2 there, 1 now.*--resume may only raise train\.epochs"):
        resume("train.epochs=1")
    with pytest.raises(RunDirError, match=r"train\.patience: 0 there, 3 now"):  # 0 = never stop: 3 is a cut
        resume("train.epochs=2", "train.patience=3")
    with pytest.raises(RunDirError, match="pass --resume to continue it"):  # a raise, but without --resume
        run_experiment(_tiny(tiny_mosi, "train.epochs=3"), run_dir=tmp_path / "r")


def test_a_run_from_before_a_setting_existed_is_reused_while_the_setting_keeps_its_default(tiny_mosi, tmp_path):
    import yaml

    from hrlf.engine.run import run_experiment

    first = run_experiment(_tiny(tiny_mosi, "train.epochs=1"), run_dir=tmp_path / "r")
    path = tmp_path / "r" / "config.yaml"
    stored = yaml.safe_load(path.read_text())
    assert stored["model"]["ffn_mult"] == 4  # the default: as if ffn_mult had been added after this run
    del stored["model"]["ffn_mult"]
    path.write_text(yaml.safe_dump(stored, sort_keys=False))
    assert run_experiment(_tiny(tiny_mosi, "train.epochs=1"), run_dir=tmp_path / "r", resume=True) == first
    with pytest.raises(RunDirError, match=r"model\.ffn_mult: '<unset>' there, 2 now"):  # away from the default
        run_experiment(_tiny(tiny_mosi, "train.epochs=1", "model.ffn_mult=2"), run_dir=tmp_path / "r", resume=True)


@pytest.mark.parametrize(
    ("model_section", "named"),
    [
        ({"name": "backbone", "later_knob": 3}, r"model\.later_knob: 3 there, '<unset>' now"),
        ({"name": "no_such_model"}, r"model\.name: 'no_such_model' there, 'backbone' now"),
        ({"name": "backbone", "d_model": "wide"}, r"model\.d_model: 'wide' there, 40 now"),
        ("backbone", r"model: 'backbone' there, '<unset>' now"),
    ],
)
def test_a_stored_config_this_version_cannot_read_is_compared_as_stored(tmp_path, model_section, named):
    import yaml

    from hrlf.config import load_config, to_dict
    from hrlf.engine.run import check_run_config

    resolved = to_dict(load_config(None))
    (tmp_path / "results.json").write_text("{}")  # a finished run, so its config is checked
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**resolved, "model": model_section}, sort_keys=False))
    with pytest.raises(RunDirError, match=named):
        check_run_config(tmp_path, resolved)


def test_resume_with_more_epochs_continues_a_finished_run(tiny_mosi, tmp_path):
    from hrlf.engine.run import run_experiment

    straight = run_experiment(_tiny(tiny_mosi, "train.epochs=3"), run_dir=tmp_path / "straight")
    run_experiment(_tiny(tiny_mosi, "train.epochs=2"), run_dir=tmp_path / "r")
    more = run_experiment(_tiny(tiny_mosi, "train.epochs=3"), run_dir=tmp_path / "r", resume=True)
    assert more["selection"]["train"]["epochs_run"] == 3
    assert more["protocol"] == straight["protocol"]  # as if it had been trained for 3 epochs from the start
    assert "epochs: 3" in (tmp_path / "r" / "config.yaml").read_text()
    # and a finished run resumed with the same (new) config is reused as it is
    assert run_experiment(_tiny(tiny_mosi, "train.epochs=3"), run_dir=tmp_path / "r", resume=True) == more


def test_more_epochs_for_a_teacher_restart_the_student(tiny_mosi, tmp_path):
    from helpers import tiny_run_cfg
    from hrlf.engine.run import run_experiment

    straight = run_experiment(tiny_run_cfg("corrkd", tiny_mosi, "train.epochs=2"), run_dir=tmp_path / "straight")
    run_experiment(tiny_run_cfg("corrkd", tiny_mosi, "train.epochs=1"), run_dir=tmp_path / "r")
    more = run_experiment(tiny_run_cfg("corrkd", tiny_mosi, "train.epochs=2"), run_dir=tmp_path / "r", resume=True)
    assert {k: v["epochs_run"] for k, v in more["selection"].items()} == {k: 2 for k in straight["selection"]}
    assert more["protocol"] == straight["protocol"]  # the student learnt from the longer-trained teacher


def test_resume_with_more_patience_continues_a_run_that_stopped_early(tiny_mosi, tmp_path):
    from hrlf.engine.run import run_experiment

    first = run_experiment(_tiny(tiny_mosi, "train.epochs=6", "train.patience=1"), run_dir=tmp_path / "r")
    assert first["selection"]["train"]["stopped_early"] and first["selection"]["train"]["epochs_run"] < 6
    straight = run_experiment(_tiny(tiny_mosi, "train.epochs=6", "train.patience=3"), run_dir=tmp_path / "straight")
    more = run_experiment(_tiny(tiny_mosi, "train.epochs=6", "train.patience=3"), run_dir=tmp_path / "r", resume=True)
    assert more["selection"]["train"]["epochs_run"] == straight["selection"]["train"]["epochs_run"] > 2
    assert more["protocol"] == straight["protocol"]
