"""TransModality: translation losses on clean targets, causal decoding, prediction independent of decoders,
golden losses, tiny overfit."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from helpers import DIMS, EMOTIONS, REGRESSION, make_batch
from hrlf.config import TrainCfg
from hrlf.missing.protocol import ModalityStochasticMissing
from hrlf.models.transm import TransMCfg, TransMNet, build, objective
from hrlf.objectives.transm import TransMObjective, translation_error
from hrlf.types import ModelOutput

GOLDEN = Path(__file__).with_name("golden_transm.json")
TINY = {"d_model": 16, "num_heads": 2, "num_layers": 1}
PAIRS = ("language_to_audio", "audio_to_language", "language_to_vision", "vision_to_language")


def tiny_model(task=REGRESSION, **overrides) -> tuple[TransMNet, TransMObjective]:
    torch.manual_seed(0)
    cfg = TransMCfg(**{**TINY, **overrides})
    model = build(cfg, dims=DIMS, task=task)
    obj = objective(cfg, task=task)
    obj.setup(model)
    return model, obj


def corrupted(batch, seed=0):
    return ModalityStochasticMissing().apply(batch, generator=torch.Generator().manual_seed(seed))


def test_translation_error_on_hand_numbers():
    translation = torch.tensor([[[1.0, 2.0], [3.0, 5.0], [9.0, 9.0]]])  # (1, 3, 2)
    target = torch.tensor([[[0.0, 0.0], [3.0, 3.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, True, False]])
    # frame 0: (1 + 4) / 2 = 2.5, frame 1: (0 + 4) / 2 = 2, frame 2 ignored -> 2.25
    assert translation_error(translation, target, mask, kind="mse") == pytest.approx(2.25)
    # frame 0: (1 + 2) / 2 = 1.5, frame 1: (0 + 2) / 2 = 1 -> 1.25
    assert translation_error(translation, target, mask, kind="l1") == pytest.approx(1.25)
    assert translation_error(translation, target, torch.zeros_like(mask), kind="mse") == 0


def test_four_translations_and_their_losses_are_logged():
    model, obj = tiny_model()
    batch = make_batch()
    out = model(batch)
    for pair in PAIRS:
        src, tgt = pair.split("_to_")
        assert out.aux[f"E.{pair}"].shape == (3, 16)
        direction = "forward" if src == "language" else "backward"
        assert out.aux[f"translation.{direction}.{pair}"].shape == batch.features[tgt].shape
    assert out.aux["fused"].shape == (3, 64)
    terms = obj(out, batch)
    assert {f"trans.{p}" for p in PAIRS} <= set(terms)
    expected = terms["task"] + terms["trans_forward"] + terms["trans_backward"]
    assert torch.allclose(terms["loss"], expected)
    assert torch.allclose(
        terms["trans_forward"], (terms["trans.language_to_audio"] + terms["trans.language_to_vision"]) / 2
    )


def test_translation_targets_are_the_clean_sequences_on_real_frames():
    model, obj = tiny_model()
    clean = make_batch()
    batch = corrupted(clean, seed=3)
    assert any(batch.missing[m].any() for m in batch.missing)
    out = model(batch)
    # make every translation perfect on the clean real frames and garbage elsewhere (padding)
    aux = dict(out.aux)
    for key in [k for k in aux if k.startswith("translation.")]:
        tgt = key.rsplit("_to_", 1)[1]
        valid = clean.valid[tgt].unsqueeze(-1)
        aux[key] = torch.where(valid, clean.features[tgt], torch.full_like(clean.features[tgt], 7.0))
    perfect = ModelOutput(pred=out.pred, aux=aux)
    terms = obj.losses(perfect, batch, clean)
    assert terms["trans_forward"] == 0 and terms["trans_backward"] == 0
    # against the corrupted input (translation_target=input) only its present frames count, so still 0 there
    # only if the translation equals the input on present frames: the clean translation does, missing frames
    # are skipped
    _, obj_input = tiny_model(translation_target="input")
    assert obj_input.losses(perfect, batch, clean)["trans_forward"] == 0
    # ... whereas zero translations are penalised on the missing frames only under translation_target=clean
    zero = ModelOutput(pred=out.pred, aux={k: torch.zeros_like(v) for k, v in aux.items()})
    assert obj.losses(zero, batch, clean)["trans_forward"] > obj_input.losses(zero, batch, clean)["trans_forward"]


def test_training_step_uses_the_clean_batch_for_the_targets():
    model, obj = tiny_model(dropout=0.0, embed_dropout=0.0, head_dropout=0.0)
    clean = make_batch()
    batch = corrupted(clean, seed=3)
    model.train()  # dropout 0: deterministic, and the decoders run
    expected = obj.losses(model(batch), batch, clean)
    assert (
        "trans_forward" in expected
        and expected["trans_forward"] != obj.losses(model(batch), batch, batch)["trans_forward"]
    )
    opts = obj.optimizers(model, TrainCfg(lr=1e-3))
    got = obj.training_step(model=model, batch=batch, clean=clean, optimizers=opts)
    for name, value in expected.items():
        assert got[name] == pytest.approx(float(value.detach()), rel=1e-5), name


def test_teacher_forced_decoder_is_causal():
    model, _ = tiny_model(eval_translations=True)
    model.eval()
    batch = make_batch(pre_pad=False, batch_size=1, length=7)
    batch.valid = {m: torch.ones_like(v) for m, v in batch.valid.items()}
    reference = model(batch).aux["translation.forward.language_to_audio"]
    changed = dataclasses.replace(batch, features=dict(batch.features))
    audio = batch.features["audio"].clone()
    audio[:, 4] += 5.0  # the target's frame 4 is the decoder input of frame 5 only
    changed.features["audio"] = audio
    out = model(changed).aux["translation.forward.language_to_audio"]
    assert torch.allclose(out[:, :5], reference[:, :5], atol=1e-6)
    assert not torch.allclose(out[:, 5:], reference[:, 5:])


def test_prediction_does_not_depend_on_the_decoders():
    model, _ = tiny_model()
    model.eval()
    batch = make_batch()
    reference = model(batch).pred
    assert not any(k.startswith("translation.") for k in model(batch).aux)  # skipped in eval by default
    model.eval_translations = True
    assert torch.allclose(model(batch).pred, reference)
    with torch.no_grad():
        for cell in model.cells.values():
            for decoder in (cell.forward_decoder, cell.backward_decoder):
                for p in decoder.parameters():
                    p.add_(torch.randn_like(p))
    assert torch.allclose(model(batch).pred, reference)


@pytest.mark.parametrize("overrides", [{"decoder_input": "positions"}, {"pool": "last"}, {"source": "audio"}])
def test_variants_train_every_parameter(overrides):
    model, obj = tiny_model(**overrides)
    batch = make_batch()
    obj(model(batch), batch)["loss"].backward()
    bad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not bad, f"No gradient for {bad}"


def test_bad_knobs_raise():
    with pytest.raises(ValueError, match="translation_loss"):
        TransMObjective(task=REGRESSION, translation_loss="huber")
    with pytest.raises(ValueError, match="pool"):
        tiny_model(pool="max")


@pytest.mark.parametrize("task", [REGRESSION, EMOTIONS], ids=["regression", "emotions"])
def test_golden_losses(task):
    """Loss dict of one training step at a fixed seed; regenerate deliberately with UPDATE_GOLDEN=1."""
    model, obj = tiny_model(task=task)
    opts = obj.optimizers(model, TrainCfg(lr=1e-2))
    clean = make_batch(task=task)
    torch.manual_seed(1)
    got = obj.training_step(model=model, batch=corrupted(clean), clean=clean, optimizers=opts)
    stored = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if os.environ.get("UPDATE_GOLDEN") == "1":
        stored[task.kind] = got
        GOLDEN.write_text(json.dumps(stored, indent=2, sort_keys=True) + "\n")
    assert set(got) == set(stored[task.kind])
    for name, value in stored[task.kind].items():
        assert got[name] == pytest.approx(value, rel=1e-4, abs=1e-5), name


@pytest.mark.slow
def test_tiny_overfit():
    """The total loss (task + both translation losses) falls by >= 90 % on 32 samples within 300 steps."""
    model, obj = tiny_model(dropout=0.0, embed_dropout=0.0, head_dropout=0.0)
    opts = obj.optimizers(model, TrainCfg(lr=3e-3))
    batch = make_batch(batch_size=32, seed=7)
    history = [obj.training_step(model=model, batch=batch, clean=batch, optimizers=opts) for _ in range(300)]
    first, last = history[0], {k: sum(h[k] for h in history[-10:]) / 10 for k in history[0]}
    assert all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in history)
    for name in ("loss", "task", "trans_forward", "trans_backward"):
        assert last[name] < 0.1 * first[name], name
