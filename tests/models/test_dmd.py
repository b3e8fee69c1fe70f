"""DMD: decoupling wiring, margin and orthogonality losses, GD-Units, value clipping, exact chunking, the plateau
schedule, complete-data recipes (golden losses, overfit and resume: test_training_contract.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from helpers import DIMS, REGRESSION, make_batch
from hrlf.config import load_config
from hrlf.models.dmd import (
    DMD,
    GD_EDGES,
    HOMO_PRIOR,
    SEQUENCE_FIELDS,
    DMDCfg,
    DMDObjective,
    DMDOutput,
    margin_loss,
    positive_cosine,
)
from hrlf.types import MODALITIES, TaskSpec

CONFIGS = Path(__file__).parents[2] / "configs" / "dmd"
TINY = {"d_model": 16, "num_heads": 2, "num_layers": 1, "mem_layers": 1}


def tiny_model(task=REGRESSION, **overrides):
    torch.manual_seed(0)
    cfg = DMDCfg(**{**TINY, **overrides})
    model = DMD(cfg, dims=DIMS, task=task)
    obj = DMDObjective(cfg, task=task)
    obj.setup(model)
    return model, obj


class _Frozen(torch.optim.Optimizer):
    """An optimizer whose step does nothing (the gradients stay inspectable)."""

    def __init__(self, params):
        super().__init__(params, {})

    def step(self, closure=None):  # noqa: ARG002 - Optimizer.step's signature
        return None


def test_margin_loss_on_hand_numbers():
    features = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([1.0, 1.0, 2.0])
    c01, c02, c12 = 2**-0.5, 0.0, 2**-0.5
    # anchor 0: positive 1, negative 2 -> max(0, 0.15 - c01 + c02) = 0; anchor 1: max(0, 0.15 - c01 + c12) = 0.15
    # anchor 2 has no positive and is skipped -> mean over two anchors
    expected = (max(0.0, 0.15 - c01 + c02) + max(0.0, 0.15 - c01 + c12)) / 2
    assert float(margin_loss(features, labels, scale=0.15)) == pytest.approx(expected)
    # the margin grows with the label distance
    far = torch.tensor([1.0, 1.0, 3.0])
    assert float(margin_loss(features, far, scale=0.15)) == pytest.approx((0.0 + 0.3) / 2)
    # chunking over anchors changes nothing
    g = torch.Generator().manual_seed(0)
    feats, labs = torch.randn(30, 4, generator=g), torch.randint(0, 3, (30,), generator=g).float()
    assert float(margin_loss(feats, labs, scale=0.15, chunk=7)) == pytest.approx(
        float(margin_loss(feats, labs, scale=0.15, chunk=64)), rel=1e-6
    )


def test_orthogonality_term_penalises_only_positive_cosine():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([[0.0, 2.0], [-3.0, 0.0], [2.0, 0.0]])
    assert positive_cosine(x, y).tolist() == pytest.approx([0.0, 0.0, 1.0])


def test_decoupling_wiring():
    model, _ = tiny_model()
    model.eval()
    out = model(make_batch())
    assert isinstance(out, DMDOutput)
    shared = model.encoder_common.weight.squeeze(-1)  # (d, d): one irrelevant encoder for all modalities
    for m in MODALITIES:
        proj, recon = out.projected[m], out.recon[m]
        assert torch.allclose(out.common[m], proj @ shared.T, atol=1e-6)
        exclusive = model.encoder_exclusive[m].weight.squeeze(-1)
        assert torch.allclose(out.exclusive[m], proj @ exclusive.T, atol=1e-6)
        assert torch.allclose(out.exclusive_cycle[m], recon @ exclusive.T, atol=1e-6)
        # padding is zero in every per-frame intermediate
        assert not out.projected[m][~out.frames[m]].any()


def test_gd_prior_and_edges():
    _, obj = tiny_model()
    prior = obj.homo_unit.prior
    expected = torch.softmax(torch.tensor(HOMO_PRIOR) / 0.25, dim=0)
    assert torch.allclose(prior, expected)
    # language -> vision and language -> audio dominate HomoGD's prior
    top = {GD_EDGES[i] for i in prior.topk(2).indices.tolist()}
    assert top == {("vision", "language"), ("audio", "language")}
    logits = {m: torch.randn(5, 1) for m in MODALITIES}
    reprs = {m: torch.randn(5, 16) for m in MODALITIES}
    edges = obj.homo_unit(logits, reprs)
    assert edges.shape == (6, 5)
    assert torch.allclose(edges.sum(dim=0), torch.ones(5))


def test_gd_distills_into_the_student_end_only():
    _, obj = tiny_model()
    unit = obj.homo_unit
    with torch.no_grad():  # constant edges (uniform 1/6): only the distances carry gradient
        unit.w_edge.weight.zero_()
        unit.w_edge.bias.zero_()
    logits = {
        m: torch.tensor([[v]], requires_grad=True) for m, v in zip(MODALITIES, (1.0, 0.0, 3.0), strict=True)
    }  # language 1, audio 0, vision 3
    reprs = {m: torch.zeros(1, 16) for m in MODALITIES}
    terms = obj.graph_distillation(unit, logits, reprs, repr_distance=None)
    weight = {edge: 1 / 6 + float(p) for edge, p in zip(GD_EDGES, unit.prior, strict=True)}
    expected = sum(weight[(s, t)] * abs(logits[s].item() - logits[t].item()) for s, t in GD_EDGES)
    assert terms["logit"].item() == pytest.approx(expected)
    assert terms["reg"].item() == pytest.approx(10 * float(((1 / 6 - unit.prior) ** 2).sum()))
    terms["logit"].backward()
    # audio is the student of language (d = -1) and of vision (d = -3); as a teacher it receives nothing
    assert logits["audio"].grad.item() == pytest.approx(-(weight[("audio", "language")] + weight[("audio", "vision")]))


def test_gradient_values_are_clipped():
    model, obj = tiny_model()
    frozen = {"main": _Frozen([p for p in list(model.parameters()) + list(obj.parameters())])}
    batch = make_batch()
    batch = dataclasses.replace(batch, label=batch.label * 100)  # large errors, large gradients
    obj.training_step(model=model, batch=batch, clean=batch, optimizers=frozen)
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert grads.abs().max() <= 0.6 + 1e-7
    assert (grads.abs() == 0.6).any()


def test_chunked_forward_equals_one_pass():
    model, obj = tiny_model()
    model.eval()
    batch = make_batch(batch_size=9, length=12, seed=3)
    whole = model(batch)
    model.chunk_size = 2
    chunked = model(batch)
    assert torch.allclose(whole.pred, chunked.pred, atol=1e-6)
    assert torch.allclose(whole.common_logit, chunked.common_logit, atol=1e-5)
    for name in [f.name for f in dataclasses.fields(DMDOutput) if f.name not in ("pred", "aux", "common_logit")]:
        for m in MODALITIES:
            a, b = getattr(whole, name)[m], getattr(chunked, name)[m]
            assert torch.allclose(a.float(), b.float(), atol=1e-5), (name, m)
    assert whole.frames["language"].shape == batch.valid["language"].shape  # sequences span the full length
    assert set(SEQUENCE_FIELDS) < {f.name for f in dataclasses.fields(DMDOutput)}


def test_dmd_keeps_its_plateau_schedule():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    obj = DMDObjective(DMDCfg(plateau_factor=0.5, plateau_patience=5), task=TaskSpec(kind="regression"))
    plateau = obj.schedulers({"main": opt})["plateau"]
    assert isinstance(plateau, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert plateau.factor == 0.5 and plateau.patience == 5
    assert DMDObjective(DMDCfg(plateau_factor=1.0), task=TaskSpec(kind="regression")).schedulers({"main": opt}) == {}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"task_loss": "huber"}, "task_loss: expected l1 | mse"),
        ({"kernel_audio": 4}, "kernel_audio: expected an odd integer"),
        ({"plateau_factor": 0.0}, "plateau_factor"),
        ({"plateau_patience": -1}, "plateau_patience"),
    ],
)
def test_bad_settings_are_refused_by_the_config(override, message):
    with pytest.raises(ValueError, match=message):
        DMDCfg(**override)


def test_recipes_train_on_complete_data():
    for path in sorted(CONFIGS.glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.model_name == "dmd" and not cfg.missing.enabled, path.name
    assert load_config(CONFIGS / "iemocap.yaml").train.select_metric == "f1"
