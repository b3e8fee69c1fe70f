"""Typed config: recipes override defaults, dotted overrides are checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from hrlf.config import ConfigError, ExperimentCfg, from_dict, load_config, to_dict

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_round_trip():
    cfg = ExperimentCfg()
    assert from_dict(to_dict(cfg)) == cfg


def test_every_shipped_recipe_loads():
    recipes = sorted(CONFIGS.glob("*/*.yaml"))
    assert recipes
    for recipe in recipes:
        cfg = load_config(recipe)
        assert cfg.model_name == recipe.parent.name


def test_recipe_values_and_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  name: backbone\n  num_heads: 8\ntrain:\n  lr: 2.0e-3\n")
    cfg = load_config(recipe, ["train.lr=1e-4", "train.epochs=3", "missing.enabled=false", "model.num_layers=2"])
    assert cfg.model.num_heads == 8
    assert cfg.train.lr == pytest.approx(1e-4)  # YAML reads "1e-4" as a string; the float field coerces it
    assert cfg.train.epochs == 3
    assert cfg.missing.enabled is False
    assert cfg.model.num_layers == 2


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=1", "unknown key 'train.lrr'"),
        ("nope.lr=1", "unknown section 'nope'"),
        ("train.epochs=2.5", "expected an integer"),
        ("train.epochs=true", "expected an integer"),
        ("missing.enabled=3", "expected true or false"),
        ("train.lr=fast", "expected a number"),
        ("model.d_model=x", "expected an integer"),
        ("train.lr", "expected KEY=VALUE"),
        ("model.name=nosuchmodel", "unknown model"),
    ],
)
def test_bad_overrides_raise(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bad_recipe_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("trainer:\n  lr: 1\n")
    with pytest.raises(ConfigError, match="unknown section 'trainer'"):
        load_config(unknown)
