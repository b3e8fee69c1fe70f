"""CubeMLP: each MLP unit mixes along its own axis only, block shapes, padding layouts, task loss, config checks
(golden losses, overfit and resume: test_training_contract.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from helpers import DIMS, REGRESSION, make_batch
from hrlf.models.cubemlp import AxisMLP, CubeBlock, CubeMLP, CubeMLPCfg, CubeMLPObjective
from hrlf.types import MODALITIES, ModelOutput

TINY = {"d_model": 16, "num_layers": 1}


def tiny_model(task=REGRESSION, **overrides):
    torch.manual_seed(0)
    cfg = CubeMLPCfg(**{**TINY, **overrides})
    return cfg, CubeMLP(cfg, dims=DIMS, task=task)


@pytest.mark.parametrize(("axis", "norm_first"), [(1, True), (2, True), (3, True), (1, False), (3, False)])
def test_each_unit_mixes_along_its_own_axis_only(axis, norm_first):
    torch.manual_seed(0)
    shape = (2, 5, 3, 4)  # (B, L, M, D)
    unit = AxisMLP(
        axis=axis,
        size_in=shape[axis],
        size_out=shape[axis],
        activation="gelu",
        bias=True,
        dropout=0.0,
        norm_first=norm_first,
        res_project=True,
    ).eval()
    x = torch.randn(shape)
    poked = x.clone()
    poked[0, 1, 2, 3] += 1.0
    changed = (unit(poked) - unit(x)).abs() > 1e-7  # (B, L, M, D)
    # only the line through the poked entry along the mixed axis can change, and it does
    line = torch.zeros(shape, dtype=torch.bool)
    index = [0, 1, 2, 3]
    index[axis] = slice(None)
    line[tuple(index)] = True
    assert not (changed & ~line).any()
    assert changed[tuple(index)].all()


def test_blocks_follow_the_authors_mosi_shapes():
    cfg, model = tiny_model(d_model=128, num_layers=2)
    block_shapes = []
    for block in model.blocks:
        units = block.units
        block_shapes.append(
            tuple(units[n].fc2.out_features for n in ("sequence", "modality", "channel")),
        )
    assert block_shapes == [(50, 3, 128), (10, 3, 32)]  # 50-3-128 -> 10-3-32
    assert isinstance(model.head, torch.nn.Linear) and model.head.in_features == 3 * 32  # mean over time, cat over M
    out = model.eval()(make_batch())
    assert out.aux["cube"].shape == (3, 10, 3, 32)


def test_pooling_variants_and_the_two_layer_classifier():
    _, model = tiny_model(pool_time="flatten", pool_modality="flatten")
    assert isinstance(model.head, torch.nn.Sequential)  # 10 * 3 * 32 > 128: Linear-ReLU-Dropout-Linear
    assert model.eval()(make_batch()).aux["fused"].shape == (3, 10 * 3 * 32)
    _, model = tiny_model(pool_modality="mean")
    assert model.eval()(make_batch()).aux["fused"].shape == (3, 32)


def test_unprojected_residual_needs_equal_sizes():
    with pytest.raises(ValueError, match="unprojected residual"):
        CubeBlock(
            shape_in=(5, 3, 4),
            shape_out=(2, 3, 4),
            activation="gelu",
            bias=True,
            dropout=0.0,
            norm_first=True,
            res_project=False,
        )


def repadded(batch, *, pre_pad: bool, extra: int = 0):
    """The same real frames laid out pre- or post-padded in a (possibly longer) time axis."""
    out = dataclasses.replace(
        batch, features=dict(batch.features), valid=dict(batch.valid), missing=dict(batch.missing)
    )
    for m in MODALITIES:
        x, valid = batch.features[m], batch.valid[m]
        b, t, d = x.shape
        new_x = torch.zeros(b, t + extra, d)
        new_valid = torch.zeros(b, t + extra, dtype=torch.bool)
        for i in range(b):
            real = x[i, valid[i]]
            n = real.shape[0]
            span = slice(t + extra - n, t + extra) if pre_pad else slice(0, n)
            new_x[i, span], new_valid[i, span] = real, True
        out.features[m], out.valid[m] = new_x, new_valid
        out.missing[m] = torch.zeros_like(new_valid)
    return out


@pytest.mark.parametrize("av_encoder", ["gru", "lstm", "conv"])
def test_padding_layout_and_length_do_not_change_predictions(av_encoder):
    _, model = tiny_model(av_encoder=av_encoder)
    model.eval()
    batch = make_batch(pre_pad=True)
    reference = model(batch).pred
    for pre_pad, extra in ((False, 0), (True, 5), (False, 60)):  # 7 + 60 frames: cut to seq_len = 50
        assert torch.allclose(model(repadded(batch, pre_pad=pre_pad, extra=extra)).pred, reference, atol=1e-5)


def test_frames_beyond_seq_len_are_cut():
    _, model = tiny_model(seq_len=4)
    model.eval()
    batch = make_batch(pre_pad=False)  # real frames first
    reference = model(batch).pred
    later = dataclasses.replace(batch, features=dict(batch.features))
    for m in MODALITIES:
        later.features[m] = batch.features[m].clone()
        later.features[m][:, 4:] += 5.0  # only frames past L = 4 change
    assert torch.allclose(model(later).pred, reference, atol=1e-6)


def test_objective_is_l1_by_default_and_mse_on_request():
    batch = make_batch()
    output = ModelOutput(pred=torch.zeros(3))
    l1 = CubeMLPObjective(CubeMLPCfg(), task=REGRESSION)(output, batch)
    mse = CubeMLPObjective(CubeMLPCfg(regression_loss="mse"), task=REGRESSION)(output, batch)
    assert torch.allclose(l1["loss"], batch.label.abs().mean())
    assert torch.allclose(mse["loss"], (batch.label**2).mean())
    assert set(l1) == {"loss", "task"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"regression_loss": "huber"}, "regression_loss: expected l1 | mse"),
        ({"activation": "tanh"}, "activation"),
        ({"pool_time": "max"}, "pool_time"),
        ({"num_layers": 0}, "num_layers"),
        ({"av_encoder": "conv", "conv_kernel": 4}, "conv_kernel"),
    ],
)
def test_bad_settings_are_refused_by_the_config(override, message):
    with pytest.raises(ValueError, match=message):
        CubeMLPCfg(**override)
