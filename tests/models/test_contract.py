"""The model contract, parametrized over the registry: every registered model must pass."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from helpers import DIMS, EMOTIONS, REGRESSION, make_batch
from hrlf import create_model, list_models
from hrlf.registry import get_model_spec
from hrlf.types import MODALITIES, ModelOutput

TINY = {"d_model": 16, "num_heads": 2, "num_layers": 1}


def tiny(name: str, task):
    spec = get_model_spec(name)
    fields = {f.name for f in dataclasses.fields(spec.config_cls)}
    torch.manual_seed(0)
    return create_model(name, dims=DIMS, task=task, **{k: v for k, v in TINY.items() if k in fields})


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("task", [REGRESSION, EMOTIONS], ids=["regression", "emotions"])
def test_output_shape_type_and_finite(name, task):
    model = tiny(name, task)
    batch = make_batch(task=task)
    for mode in (model.train, model.eval):
        mode()
        out = model(batch)
        assert isinstance(out, ModelOutput)
        expected = (3,) if task.kind == "regression" else (3, 4, 2)
        assert out.pred.shape == expected
        assert torch.isfinite(out.pred).all()


@pytest.mark.parametrize("name", list_models())
def test_every_parameter_gets_a_gradient(name):
    model = tiny(name, REGRESSION)
    spec = get_model_spec(name)
    objective = spec.objective(spec.config_cls(), task=REGRESSION)
    objective.setup(model)
    batch = make_batch()
    losses = objective(model(batch), batch)
    losses["loss"].backward()
    # a model may declare parameters that legitimately get no gradient with every modality present
    declared = tuple(getattr(model, "no_gradient_when_complete", ()))

    def silent(p):
        return p.grad is None or not p.grad.abs().sum() > 0

    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in params if silent(p) and not n.startswith(declared or ("\0",))]
    assert not missing, f"No gradient for {missing}"
    if declared:
        wrongly_declared = [n for n, p in params if n.startswith(declared) and not silent(p)]
        assert not wrongly_declared, f"Declared gradient-free but got gradients: {wrongly_declared}"


@pytest.mark.parametrize("name", list_models())
def test_optimizer_covers_exactly_the_trainable_parameters(name):
    from hrlf.config import TrainCfg

    model = tiny(name, REGRESSION)
    spec = get_model_spec(name)
    objective = spec.objective(spec.config_cls(), task=REGRESSION)
    objective.setup(model)
    opts = objective.optimizers(model, TrainCfg())
    in_opt = {id(p) for opt in opts.values() for g in opt.param_groups for p in g["params"]}
    trainable = {id(p) for p in list(model.parameters()) + list(objective.parameters()) if p.requires_grad}
    assert in_opt == trainable


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("pre_pad", [True, False], ids=["pre-padded", "post-padded"])
def test_noise_at_padded_and_missing_positions_is_invisible(name, pre_pad):
    model = tiny(name, REGRESSION).eval()
    batch = make_batch(pre_pad=pre_pad)
    # remove the real frames at even positions of audio and all of vision
    batch.missing["audio"][:, ::2] = True
    batch.missing["vision"][:] = True
    for m in MODALITIES:
        batch.features[m] = batch.features[m] * batch.present(m).unsqueeze(-1)
    reference = model(batch).pred
    noisy = dataclasses.replace(batch, features=dict(batch.features))
    g = torch.Generator().manual_seed(1)
    for m in MODALITIES:
        hidden = ~batch.present(m)
        noise = torch.randn(batch.features[m].shape, generator=g) * 10
        noisy.features[m] = torch.where(hidden.unsqueeze(-1), noise, batch.features[m])
    assert torch.allclose(model(noisy).pred, reference, atol=1e-5)


@pytest.mark.parametrize("name", list_models())
def test_sample_alone_equals_sample_in_batch(name):
    model = tiny(name, REGRESSION).eval()
    batch = make_batch(batch_size=4)
    full = model(batch).pred
    for i in range(4):
        one = dataclasses.replace(
            batch,
            features={m: x[i : i + 1] for m, x in batch.features.items()},
            valid={m: x[i : i + 1] for m, x in batch.valid.items()},
            missing={m: x[i : i + 1] for m, x in batch.missing.items()},
            label=batch.label[i : i + 1],
            index=batch.index[i : i + 1],
            ids=batch.ids[i : i + 1],
        )
        assert torch.allclose(model(one).pred, full[i : i + 1], atol=1e-5)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("absent", [(), ("audio",), ("language", "vision"), tuple(MODALITIES)])
def test_forward_and_backward_with_whole_modalities_missing(name, absent):
    model = tiny(name, REGRESSION).train()
    spec = get_model_spec(name)
    objective = spec.objective(spec.config_cls(), task=REGRESSION)
    objective.setup(model)
    batch = make_batch()
    for m in absent:
        batch.missing[m][:] = True
        batch.features[m] = torch.zeros_like(batch.features[m])
    losses = objective(model(batch), batch)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_registry_names_are_lowercase_and_unique():
    names = list_models()
    assert names == sorted(set(names))
    assert all(n == n.lower() for n in names)
    assert "backbone" in names


def test_duplicate_registration_raises():
    from hrlf.registry import ModelSpec, register_model

    spec = get_model_spec("backbone")
    with pytest.raises(ValueError, match="already registered"):
        register_model(
            ModelSpec(name="backbone", config_cls=spec.config_cls, build=spec.build, objective=spec.objective)
        )


def test_a_row_without_any_real_frame_encodes_the_same_in_any_batch():
    """A modality absent from the file for one clip (length 0) must not pick up the batch's padded length."""
    from hrlf.models.layers import ModalityEncoder

    torch.manual_seed(0)
    enc = ModalityEncoder(input_dim=5, d_model=8, num_heads=2, num_layers=1).eval()
    x = torch.randn(2, 9, 5)
    valid = torch.zeros(2, 9, dtype=torch.bool)
    valid[0, :6] = True  # row 1 has no real frame
    z_batch, _ = enc(x, present=valid, valid=valid)
    z_alone, _ = enc(x[1:, :2], present=valid[1:, :2], valid=valid[1:, :2])
    torch.testing.assert_close(z_batch[1], z_alone[0])
    z_first, _ = enc(x[:1, :6], present=valid[:1, :6], valid=valid[:1, :6])
    torch.testing.assert_close(z_batch[0], z_first[0], atol=1e-5, rtol=1e-5)
