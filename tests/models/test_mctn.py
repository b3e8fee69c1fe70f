"""MCTN: packing, the cyclic translation loss, teacher forcing, source-only prediction, complete-data recipes
(golden losses, overfit and resume: test_training_contract.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from helpers import DIMS, REGRESSION, make_batch
from hrlf.config import load_config
from hrlf.models.mctn import MCTN, MCTNCfg, MCTNObjective, compact, translation_loss

CONFIGS = Path(__file__).parents[2] / "configs" / "mctn"
TINY = {"d_model": 16, "num_layers": 1, "regressor_hidden": 16}


def tiny_model(task=REGRESSION, **overrides):
    torch.manual_seed(0)
    cfg = MCTNCfg(**{**TINY, **overrides})
    model = MCTN(cfg, dims=DIMS, task=task)
    obj = MCTNObjective(cfg, task=task)
    obj.setup(model)
    return model, obj


def without(batch, *modalities):
    """The batch with whole modalities removed (zero vectors, missing = True)."""
    features, missing = dict(batch.features), dict(batch.missing)
    for m in modalities:
        features[m] = torch.zeros_like(features[m])
        missing[m] = torch.ones_like(missing[m])
    return dataclasses.replace(batch, features=features, missing=missing)


def test_compact_moves_real_frames_to_the_front():
    x = torch.arange(1.0, 6.0).view(1, 5, 1).repeat(2, 1, 1)  # (2, 5, 1) frames 1..5
    keep = torch.tensor([[False, False, True, True, True], [True, True, False, False, False]])
    packed, lengths = compact(x, keep)
    assert lengths.tolist() == [3, 2]
    assert packed.squeeze(-1).tolist() == [[3.0, 4.0, 5.0], [1.0, 2.0, 0.0]]
    # pre- and post-padded copies of the same clips give the same model output
    model, _ = tiny_model()
    model.eval()
    pre, post = make_batch(pre_pad=True), make_batch(pre_pad=False)
    for m in pre.features:  # the same real frames, moved to the end
        for i in range(pre.size):
            n = int(pre.valid[m][i].sum())
            post.features[m][i, :n] = pre.features[m][i, -n:]
    assert torch.allclose(model(pre).pred, model(post).pred, atol=1e-6)


def test_translation_loss_on_hand_numbers():
    pred = torch.tensor([[[1.0, 2.0], [3.0, 5.0], [9.0, 9.0]]])  # (1, 3, 2)
    truth = torch.tensor([[[0.0, 0.0], [3.0, 3.0], [0.0, 0.0]]])
    frames = torch.tensor([[True, True, False]])
    # (1 + 4 + 0 + 4) / (2 frames x 2 dims); the third frame does not count
    assert float(translation_loss(pred, truth, frames)) == pytest.approx(9 / 4)
    assert float(translation_loss(pred, truth, torch.zeros_like(frames))) == 0.0


def test_cyclic_translation_loss_and_total():
    model, obj = tiny_model()
    model.eval()
    batch = make_batch()
    out = model(batch)
    terms = obj(out, batch)
    # the cycle translates the *translated* vision back into language with the same encoder and decoder
    assert out.cycle.shape == out.truth["language"].shape
    expected_cycle = translation_loss(out.cycle, out.truth["language"], out.frames["language"])
    assert torch.allclose(terms["cycle"], expected_cycle)
    w = model.regressor.out.weight
    total = (
        0.1 * (terms["translation"] + terms["cycle"] + terms["translation2"]) + terms["task"] + 0.01 * w.pow(2).sum()
    )
    assert torch.allclose(terms["loss"], total)
    assert torch.allclose(terms["task"], (out.pred - batch.label).abs().mean())
    # its gradient reaches the shared seq2seq but neither the second level nor the regressor
    model.zero_grad()
    terms["cycle"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder1.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decoder1.parameters())
    assert all(p.grad is None for p in [*model.encoder2.parameters(), *model.regressor.parameters()])
    # without the cycle the term is gone
    no_cycle, no_cycle_obj = tiny_model(cycle=False)
    out = no_cycle(batch)
    assert out.cycle is None and "cycle" not in no_cycle_obj(out, batch)


def test_at_test_time_only_the_source_is_read():
    model, _ = tiny_model()
    model.eval()
    batch = make_batch()
    out = model(batch)
    noisy = dataclasses.replace(batch, features=dict(batch.features))
    g = torch.Generator().manual_seed(1)
    for m in ("audio", "vision"):
        noisy.features[m] = torch.randn(batch.features[m].shape, generator=g) * batch.valid[m].unsqueeze(-1)
    changed = model(noisy)
    assert torch.equal(out.pred, changed.pred)
    assert torch.equal(out.cycle, changed.cycle)  # free-running decoders
    for m in ("vision", "audio"):
        assert torch.equal(out.translation[m], changed.translation[m]), m
    # the documented behaviour under missing modalities: {l} equals {l, a, v}; without language the output
    # depends on the clip's length alone (here every clip has 7 frames)
    assert torch.allclose(model(without(batch, "audio", "vision")).pred, out.pred)
    full = dataclasses.replace(batch, valid={m: torch.ones_like(v) for m, v in batch.valid.items()})
    blind = model(without(full, "language")).pred
    assert torch.allclose(blind, blind[0].expand_as(blind))


def test_teacher_forcing_feeds_the_previous_true_frame():
    model, _ = tiny_model(teacher_forcing=1.0)
    model.train()  # no dropout in the tiny model; teacher forcing acts in training only
    batch = make_batch(pre_pad=False)
    out = model(batch)
    changed = dataclasses.replace(batch, features=dict(batch.features))
    changed.features["vision"] = batch.features["vision"].clone()
    changed.features["vision"][:, 2] += 5.0  # the third real frame of every clip
    out_changed = model(changed)
    translated, translated_changed = out.translation["vision"], out_changed.translation["vision"]
    assert torch.equal(translated[:, :3], translated_changed[:, :3])  # steps 0..2 never read the true frame 2
    assert not torch.allclose(translated[:, 3], translated_changed[:, 3])  # step 3 is fed the true frame 2
    # free running (teacher_forcing = 0) ignores the true frames entirely
    model.teacher_forcing = 0.0
    assert torch.equal(model(batch).translation["vision"], model(changed).translation["vision"])


def test_l2_penalty_and_bad_knobs():
    model, obj = tiny_model()
    batch = make_batch()
    terms = obj(model(batch), batch)
    assert torch.allclose(terms["l2"], 0.01 * model.regressor.out.weight.pow(2).sum())
    with pytest.raises(ValueError, match="three different"):
        MCTNCfg(target1="language")
    with pytest.raises(ValueError, match="rnn: expected lstm | gru"):
        MCTNCfg(rnn="transformer")
    with pytest.raises(ValueError, match="teacher_forcing"):
        MCTNCfg(teacher_forcing=1.5)
    with pytest.raises(ValueError, match="prediction_loss"):
        MCTNCfg(prediction_loss="huber")


def test_gru_cells_work():
    model, obj = tiny_model(rnn="gru")
    batch = make_batch()
    obj(model(batch), batch)["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())


def test_recipes_train_on_complete_data():
    for path in sorted(CONFIGS.glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.model_name == "mctn" and not cfg.missing.enabled, path.name
    assert load_config(CONFIGS / "iemocap.yaml").train.select_metric == "f1"
