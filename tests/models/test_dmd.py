"""DMD: decoupling wiring, margin and orthogonality losses, GD-Units, value clipping, exact chunking, golden losses,
tiny overfit, complete-data recipes."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from helpers import DIMS, EMOTIONS, REGRESSION, continuous_and_resumed, make_batch, overfit, tiny_run_cfg
from hrlf.config import TrainCfg, load_config
from hrlf.models.dmd import GD_EDGES, HOMO_PRIOR, DMDCfg, build, objective
from hrlf.objectives.dmd import DMDObjective, margin_loss, positive_cosine
from hrlf.types import MODALITIES

GOLDEN = Path(__file__).with_name("golden_dmd.json")
CONFIGS = Path(__file__).parents[2] / "configs" / "dmd"
TINY = {"d_model": 16, "num_heads": 2, "num_layers": 1, "mem_layers": 1}
NO_DROPOUT = {
    "text_dropout": 0.0,
    "attn_dropout": 0.0,
    "attn_dropout_audio": 0.0,
    "attn_dropout_vision": 0.0,
    "embed_dropout": 0.0,
    "output_dropout": 0.0,
}


def tiny_model(task=REGRESSION, **overrides):
    torch.manual_seed(0)
    cfg = DMDCfg(**{**TINY, **overrides})
    model = build(cfg, dims=DIMS, task=task)
    obj = objective(cfg, task=task)
    obj.setup(model)
    return model, obj


class _Frozen(torch.optim.Optimizer):
    """An optimizer whose step does nothing (the gradients stay inspectable)."""

    def __init__(self, params):
        super().__init__(params, {})

    def step(self, closure=None):
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
    shared = model.encoder_common.weight.squeeze(-1)  # (d, d): one irrelevant encoder for all modalities
    for m in MODALITIES:
        proj, recon = out.aux[f"projected.{m}"], out.aux[f"recon.{m}"]
        assert torch.allclose(out.aux[f"common.{m}"], proj @ shared.T, atol=1e-6)
        exclusive = model.encoder_exclusive[m].weight.squeeze(-1)
        assert torch.allclose(out.aux[f"exclusive.{m}"], proj @ exclusive.T, atol=1e-6)
        assert torch.allclose(out.aux[f"exclusive_cycle.{m}"], recon @ exclusive.T, atol=1e-6)
        # padding is zero in every per-frame intermediate
        assert not out.aux[f"projected.{m}"][~out.aux[f"frames.{m}"]].any()


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
    assert set(whole.aux) == set(chunked.aux)
    for key, value in whole.aux.items():
        assert torch.allclose(value.float(), chunked.aux[key].float(), atol=1e-5), key


def test_recipes_train_on_complete_data():
    for path in sorted(CONFIGS.glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.model_name == "dmd" and not cfg.missing.enabled, path.name
    assert load_config(CONFIGS / "iemocap.yaml").train.select_metric == "f1"


@pytest.mark.parametrize("task", [REGRESSION, EMOTIONS], ids=["regression", "emotions"])
def test_golden_losses(task):
    """Loss dict of one training step at a fixed seed; regenerate deliberately with UPDATE_GOLDEN=1."""
    model, obj = tiny_model(task=task)
    opts = obj.optimizers(model, TrainCfg(lr=1e-3))
    batch = make_batch(task=task)
    torch.manual_seed(1)
    got = obj.training_step(model=model, batch=batch, clean=batch, optimizers=opts)
    stored = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if os.environ.get("UPDATE_GOLDEN") == "1":
        stored[task.kind] = got
        GOLDEN.write_text(json.dumps(stored, indent=2, sort_keys=True) + "\n")
    assert set(got) == set(stored[task.kind])
    for name, value in stored[task.kind].items():
        assert got[name] == pytest.approx(value, rel=1e-4, abs=1e-5), name


@pytest.mark.slow
def test_tiny_overfit():
    model, obj = tiny_model(**NO_DROPOUT)
    opts = obj.optimizers(model, TrainCfg(lr=3e-3))
    batch = make_batch(batch_size=32, seed=7)
    first, last = overfit(model=model, objective=obj, optimizers=opts, batch=batch, tail=1)
    assert last["loss"] < 0.1 * first["loss"]
    assert last["task"] < 0.1 * first["task"]


@pytest.mark.slow
def test_resume_equals_continuous_training(tiny_mosi, tmp_path, monkeypatch):
    """1 epoch, a kill in epoch 2, resume: the same test results, selection and log as 2 uninterrupted epochs."""
    cfg = tiny_run_cfg("dmd", tiny_mosi, "model.mem_layers=1")
    full, resumed = continuous_and_resumed(cfg, objective_cls=DMDObjective, run_dir=tmp_path, monkeypatch=monkeypatch)
    assert resumed["protocol"] == full["protocol"]
    assert resumed["selection"] == {
        k: {**v, "seconds": resumed["selection"][k]["seconds"]} for k, v in full["selection"].items()
    }
    # epoch 2 itself (the selection may keep epoch 1): its training losses and validation metrics
    log = Path("train") / "log.csv"
    assert (tmp_path / "resumed" / log).read_text() == (tmp_path / "full" / log).read_text()
