"""What a hyper-parameter search needs of a run: every epoch's validation score, and training without test."""

from __future__ import annotations

import json

import pytest

from helpers import tiny_run_cfg
from hrlf.engine.run import run_experiment
from hrlf.tune import TuneError, load_space, plan_trials


def test_a_trial_trains_without_test_and_the_same_call_with_evaluate_tests_once(tiny_mosi, tmp_path):
    seen = []
    cfg = tiny_run_cfg("backbone", tiny_mosi, "train.epochs=2")
    trial = run_experiment(cfg, run_dir=tmp_path / "t", on_epoch=lambda stage, row: seen.append((stage, row)))
    assert [(stage, row["epoch"]) for stage, row in seen] == [("train", 1), ("train", 2)]
    assert all(row["score"] == -row["valid_loss"] for _, row in seen)  # select_metric loss: higher is better
    plain = run_experiment(cfg, run_dir=tmp_path / "plain")
    assert plain["selection"]["train"]["valid"] == trial["selection"]["train"]["valid"]

    untested = tmp_path / "u"
    only = run_experiment(cfg, run_dir=untested, evaluate=False)
    assert set(only) == {"selection"} and not (untested / "results.json").exists()
    assert not (untested / "model.safetensors").exists()
    replayed = []
    tested = run_experiment(
        cfg, run_dir=untested, resume=True, on_epoch=lambda _stage, row: replayed.append(row["epoch"])
    )
    assert replayed == [1, 2]  # restored epochs are replayed, none trained again
    assert tested["selection"]["train"]["epochs_run"] == 2
    assert tested["protocol"] == plain["protocol"]
    assert json.loads((untested / "results.json").read_text())["protocol"] == plain["protocol"]


def test_space_files_are_checked(tmp_path):
    space = tmp_path / "space.yaml"
    for text, message in [
        ("train.lr: {normal: [0, 1]}\n", "expected one distribution"),
        ("train.lr: {loguniform: [0.0, 1.0]}\n", "low > 0"),
        ("train.lr: {uniform: [1.0, 0.0]}\n", "low <= high"),
        ("model.num_layers: {randint: [1, 2.5]}\n", "integers"),
        ("train.seed: {randint: [1, 5]}\n", "cannot be searched"),
        ("data.path: {choice: [a, b]}\n", "cannot be searched"),
        ("lr: {uniform: [0, 1]}\n", "dotted recipe key"),
        ("[1, 2]\n", "expected a mapping"),
    ]:
        space.write_text(text)
        with pytest.raises(TuneError, match=message):
            load_space(space)


def test_trials_are_drawn_from_the_seed(tiny_mosi, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("train.lr: {loguniform: [1.0e-4, 1.0e-2]}\nmodel.num_layers: {randint: [1, 2]}\n")
    dims = load_space(space)
    a = plan_trials(None, dims, trials=5, seed=3, data=tiny_mosi, out=tmp_path / "a")
    b = plan_trials(None, dims, trials=5, seed=3, data=tiny_mosi, out=tmp_path / "b")
    c = plan_trials(None, dims, trials=5, seed=4, data=tiny_mosi, out=tmp_path / "c")
    assert [t.params for t in a] == [t.params for t in b] != [t.params for t in c]
    assert all(1e-4 <= t.cfg.train.lr <= 1e-2 and t.cfg.model.num_layers in (1, 2) for t in a)
    assert [t.run_dir.name for t in a] == [f"trial{i:03d}" for i in range(5)]
