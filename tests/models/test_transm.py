"""TransModality: translation losses on clean targets, causal decoding, prediction independent of decoders (golden
losses, overfit and resume: test_training_contract.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from helpers import DIMS, REGRESSION, make_batch
from hrlf.config import TrainCfg
from hrlf.missing.protocol import ModalityStochasticMissing
from hrlf.models.transm import TransMCfg, TransMNet, TransMObjective, TransMOutput, translation_error

TINY = {"d_model": 16, "num_heads": 2, "num_layers": 1}
PAIRS = ("language_to_audio", "audio_to_language", "language_to_vision", "vision_to_language")


def tiny_model(task=REGRESSION, **overrides) -> tuple[TransMNet, TransMObjective]:
    torch.manual_seed(0)
    cfg = TransMCfg(**{**TINY, **overrides})
    model = TransMNet(cfg, dims=DIMS, task=task)
    obj = TransMObjective(cfg, task=task)
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
    assert isinstance(out, TransMOutput)
    for pair in PAIRS:
        src, tgt = pair.split("_to_")
        assert out.representations[(src, tgt)].shape == (3, 16)
        direction = "forward" if src == "language" else "backward"
        assert out.translations[(direction, src, tgt)].shape == batch.features[tgt].shape
    assert [f"{s}_to_{t}" for s, t in out.representations] == list(PAIRS)  # the order of ``fused``'s parts
    assert out.fused.shape == (3, 64)
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
    translations = {}
    for key in out.translations:
        tgt = key[2]
        valid = clean.valid[tgt].unsqueeze(-1)
        translations[key] = torch.where(valid, clean.features[tgt], torch.full_like(clean.features[tgt], 7.0))
    perfect = dataclasses.replace(out, translations=translations)
    terms = obj.losses(perfect, batch, clean=clean)
    assert terms["trans_forward"] == 0 and terms["trans_backward"] == 0
    # against the corrupted input (translation_target=input) only its present frames count, so still 0 there
    # only if the translation equals the input on present frames: the clean translation does, missing frames
    # are skipped
    _, obj_input = tiny_model(translation_target="input")
    assert obj_input.losses(perfect, batch, clean=clean)["trans_forward"] == 0
    # ... whereas zero translations are penalised on the missing frames only under translation_target=clean
    zero = dataclasses.replace(out, translations={k: torch.zeros_like(v) for k, v in translations.items()})
    assert (
        obj.losses(zero, batch, clean=clean)["trans_forward"]
        > obj_input.losses(zero, batch, clean=clean)["trans_forward"]
    )


def test_training_step_uses_the_clean_batch_for_the_targets():
    model, obj = tiny_model(dropout=0.0, embed_dropout=0.0, head_dropout=0.0)
    clean = make_batch()
    batch = corrupted(clean, seed=3)
    model.train()  # dropout 0: deterministic, and the decoders run
    expected = obj.losses(model(batch), batch, clean=clean)
    assert (
        "trans_forward" in expected
        and expected["trans_forward"] != obj.losses(model(batch), batch, clean=batch)["trans_forward"]
    )
    assert (
        obj.losses(model(batch), batch)["trans_forward"]
        == obj.losses(model(batch), batch, clean=batch)["trans_forward"]
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
    reference = model(batch).translations[("forward", "language", "audio")]
    changed = dataclasses.replace(batch, features=dict(batch.features))
    audio = batch.features["audio"].clone()
    audio[:, 4] += 5.0  # the target's frame 4 is the decoder input of frame 5 only
    changed.features["audio"] = audio
    out = model(changed).translations[("forward", "language", "audio")]
    assert torch.allclose(out[:, :5], reference[:, :5], atol=1e-6)
    assert not torch.allclose(out[:, 5:], reference[:, 5:])


def test_prediction_does_not_depend_on_the_decoders():
    model, _ = tiny_model()
    model.eval()
    batch = make_batch()
    reference = model(batch).pred
    assert not model(batch).translations  # skipped in eval by default
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
    with pytest.raises(ValueError, match="translation_loss: expected mse | l1"):
        TransMCfg(translation_loss="huber")
    with pytest.raises(ValueError, match="pool"):
        tiny_model(pool="max")
    with pytest.raises(ValueError, match="translation_target"):
        TransMCfg(translation_target="noisy")
