"""``hrlf tune`` on a local cluster: selection on valid, the test split evaluated once, for the winner only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hrlf.cli import main
from hrlf.config import load_config
from hrlf.engine.run import run_experiment
from ray_cluster import needs_ray

pytestmark = [pytest.mark.ray, needs_ray]

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "backbone" / "mosi.yaml"
SMALL = [
    "model.d_model=16",
    "model.num_heads=2",
    "model.num_layers=1",
    "train.epochs=3",
    "train.batch_size=16",
    "train.patience=0",
    "train.progress=false",
    "eval.rates=[0.0,1.0]",
]
SPACE = "train.lr: {loguniform: [1.0e-4, 3.0e-2]}\nmodel.dropout: {uniform: [0.0, 0.3]}\n"


def test_tune_selects_on_valid_and_tests_only_the_winner(ray_cluster, tiny_mosi, tmp_path, capsys):
    (tmp_path / "space.yaml").write_text(SPACE)
    out = tmp_path / "search"
    sets = [x for s in SMALL for x in ("--set", s)]
    argv = ["tune", "--config", str(RECIPE), "--space", str(tmp_path / "space.yaml"), "--trials", "4"]
    argv += ["--data", str(tiny_mosi), "--out", str(out), "--address", ray_cluster.address, *sets]
    assert main(argv) == 0
    assert "winner" in capsys.readouterr().out
    summary = json.loads((out / "search.json").read_text())
    rows = {row["trial"]: row for row in summary["trials"]}
    assert sorted(rows) == ["trial000", "trial001", "trial002", "trial003"]
    assert len({row["params"]["train.lr"] for row in rows.values()}) == 4  # four different draws
    assert all(row["status"] in ("finished", "stopped") for row in rows.values())
    assert all(row["epochs"] < 3 for row in rows.values() if row["status"] == "stopped")  # ASHA cut them short
    finished = {name: row["valid_score"] for name, row in rows.items() if row["status"] == "finished"}
    winner = summary["winner"]["trial"]
    assert summary["selected_on"] == "valid" and finished[winner] == max(finished.values())
    # the test split was evaluated for the winner alone: no other trial folder holds test results or final weights
    tested = sorted(p.parent.name for p in (out / "trials").glob("*/results.json"))
    assert tested == [winner]
    assert sorted(p.parent.name for p in (out / "trials").glob("*/model.safetensors")) == [winner]
    results = json.loads((out / "trials" / winner / "results.json").read_text())
    assert results["selection"]["train"]["valid"] == rows[winner]["valid"]  # the selected epoch, as logged
    assert summary["winner"]["test"] == results["protocol"]
    assert (out / "search.csv").read_text().count("\n") == 5  # header + one line per trial
    # the winner's numbers are those of an ordinary run with its settings (same seed, one thread)
    settings = [f"{k}={json.dumps(v)}" for k, v in summary["winner"]["params"].items()]
    cfg = load_config(RECIPE, [*SMALL, f"data.path={tiny_mosi}", *settings])
    plain = run_experiment(cfg, run_dir=tmp_path / "plain")
    assert plain["protocol"] == results["protocol"]
    assert plain["selection"]["train"]["valid"] == results["selection"]["train"]["valid"]


def test_a_space_key_the_recipe_lacks_is_refused_before_any_training(tiny_mosi, tmp_path, capsys):
    (tmp_path / "space.yaml").write_text("model.dropuot: {uniform: [0.0, 0.3]}\n")
    argv = ["tune", "--config", str(RECIPE), "--space", str(tmp_path / "space.yaml"), "--trials", "2"]
    assert main([*argv, "--data", str(tiny_mosi), "--out", str(tmp_path / "search")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dropuot" in err[0] and "trial000" in err[0]
    assert not (tmp_path / "search" / "trials").exists()
