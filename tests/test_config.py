"""Typed config: recipes override defaults, dotted overrides are checked."""

from __future__ import annotations

import dataclasses
import re

import pytest

from helpers import CONFIGS
from hrlf.config import ConfigError, ExperimentCfg, from_dict, load_config, to_dict
from hrlf.registry import get_model_spec, list_models


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
        ("text_encoder.name=bert", "key 'text_encoder.name': expected features | minilm | mpnet, found 'bert'"),
        ("text_encoder.lr=0", "key 'text_encoder.lr': expected a finite number > 0"),
        ("text_encoder.freeze_layers=-1", "key 'text_encoder.freeze_layers': expected an integer >= 0"),
        ("text_encoder.pooling=max", "key 'text_encoder.pooling': expected none | mean, found 'max'"),
        ("text_encoder.decay=cosine", "key 'text_encoder.decay': expected constant | linear, found 'cosine'"),
        ("text_encoder.warmup=1", "key 'text_encoder.warmup': expected a fraction in [0, 1), found 1.0"),
    ],
)
def test_bad_overrides_raise(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
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
    flat = tmp_path / "flat.yaml"
    flat.write_text("model: backbone\n")  # the model section must be a mapping (model.name names the model)
    with pytest.raises(ConfigError, match="section 'model': expected a mapping, found 'backbone'"):
        load_config(flat)


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: backbone\ntrain:\n  lr: 1.0e-3\n  epochs: [3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML at line 6, column 1: .*started at line 5"):
        load_config(bad)
    tabs = tmp_path / "tabs.yaml"
    tabs.write_text("train:\n\tlr: 1\n")
    with pytest.raises(ConfigError, match=r"tabs\.yaml: not valid YAML at line 2"):
        load_config(tabs)


def test_range_errors_name_where_the_value_came_from(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  epochs: 0\n")
    with pytest.raises(ConfigError, match=r"r\.yaml: key 'train\.epochs': expected an integer >= 1, found 0"):
        load_config(recipe)
    assert load_config(recipe, ["train.epochs=2"]).train.epochs == 2  # overridden before the range check
    with pytest.raises(ConfigError, match=r"^--set: key 'train\.lr'"):
        load_config(recipe, ["train.epochs=2", "train.lr=-1"])
    with pytest.raises(ConfigError, match=r"^--set: key 'model\.num_heads'"):
        load_config(None, ["model.d_model=16", "model.num_heads=3"])
    run_meta = tmp_path / "checkpoint.json"
    with pytest.raises(ConfigError, match=r"checkpoint\.json: key 'missing\.subset_prob'"):
        from_dict({"missing": {"subset_prob": 2.0}}, source=str(run_meta))


def test_one_missing_rate_is_refused_before_training():
    with pytest.raises(ConfigError, match="at least two missing rates"):
        load_config(None, ["eval.rates=[0.0]"])


#: a value each shared model field refuses, and the message the config loader gives for it
SHARED_FIELD_CHECKS = {
    "num_heads": (7, "expected a divisor of model.d_model"),
    "num_layers": (0, "expected an integer >= 1, found 0"),
    "ffn_mult": (0, "expected an integer >= 1, found 0"),
    "dropout": (1.0, r"expected a probability in \[0, 1\), found 1.0"),
    "embed_dropout": (-0.1, r"expected a probability in \[0, 1\), found -0.1"),
    "head_dropout": (1.5, r"expected a probability in \[0, 1\), found 1.5"),
    "conv_kernel": (4, "expected an odd integer >= 1, found 4"),
    "plateau_factor": (0.0, r"expected a factor in \(0, 1\] \(1 = constant learning rate\), found 0.0"),
    "plateau_patience": (-1, "expected an integer >= 0, found -1"),
}


@pytest.mark.parametrize("model", list_models())
def test_every_model_config_checks_its_shared_fields(model):
    """Each model config's own ``__post_init__`` refuses the shared fields' bad values (no generic probing)."""
    cls = get_model_spec(model).config_cls
    names = {f.name for f in dataclasses.fields(cls)}
    checked = [name for name in SHARED_FIELD_CHECKS if name in names]
    assert checked
    for name in checked:
        value, message = SHARED_FIELD_CHECKS[name]
        with pytest.raises(ConfigError, match=rf"--set: key 'model\.{name}': {message}"):
            load_config(None, [f"model.name={model}", f"model.{name}={value}"])
        with pytest.raises(ValueError, match=rf"^{name}: {message}"):
            cls(**{name: value})
