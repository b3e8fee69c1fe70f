"""Evaluation under the protocols: conditions that differ only in modalities a split never has are computed once,
and give exactly what evaluating each of them gives (every registered model)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from hrlf import create_model, list_models
from hrlf.data.datamodule import DataModule
from hrlf.data.features import load_features
from hrlf.engine import evaluate as evaluate_module
from hrlf.engine.evaluate import evaluate_protocols, never_present, predict, score
from hrlf.missing.protocol import INTER_CONDITIONS, InterModality
from hrlf.registry import get_model_spec

TINY = {"d_model": 16, "num_heads": 2, "num_layers": 1}


def _text_only(path) -> DataModule:
    """The tiny file with audio and vision absent from every clip (as `hrlf extract` writes a text-only file)."""
    data = load_features(path)
    splits = {}
    for name, part in data.splits.items():
        features, valid = dict(part.features), dict(part.valid)
        for m in ("audio", "vision"):
            features[m] = np.zeros_like(features[m])
            valid[m] = np.zeros_like(valid[m])
        splits[name] = dataclasses.replace(part, features=features, valid=valid)
    return DataModule(dataclasses.replace(data, splits=splits))


def test_never_present_needs_no_frame_and_zero_features(tiny_mosi):
    assert never_present(DataModule(load_features(tiny_mosi)), "test") == frozenset()
    text = _text_only(tiny_mosi)
    assert never_present(text, "test") == {"audio", "vision"}
    part = text.file.splits["test"]
    part.features["vision"][0, 0, 0] = 1.0  # padding that is not zero: the inputs would differ, no shortcut
    assert never_present(text, "test") == {"audio"}


@pytest.mark.parametrize("name", list_models())
def test_the_shortcut_equals_evaluating_every_condition(name, tiny_mosi, monkeypatch):
    data = _text_only(tiny_mosi)
    spec = get_model_spec(name)
    fields = {f.name for f in dataclasses.fields(spec.config_cls)}
    torch.manual_seed(0)
    model = create_model(name, dims=data.file.dims, task=data.task, **{k: v for k, v in TINY.items() if k in fields})
    by_video = spec.batches_by_video
    calls = []
    real_predict = evaluate_module.predict
    monkeypatch.setattr(evaluate_module, "predict", lambda *a, **k: calls.append(1) or real_predict(*a, **k))
    scores, described = evaluate_protocols(model, data, "test", which="inter", by_video=by_video)
    assert len(calls) == 2  # with language, without: the other five conditions repeat one of them
    for cond, available in INTER_CONDITIONS.items():
        pred, label = predict(model, data, "test", protocol=InterModality(available=available), by_video=by_video)
        assert scores["inter"][cond] == score(pred, label, data.task), cond
        assert described[f"inter.{cond}"] == InterModality(available=available).describe()
