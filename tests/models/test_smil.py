"""SMIL: severe-missing protocol, feature reconstruction from priors, K-means priors, meta (inner/outer) updates."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch

from helpers import DIMS, EMOTIONS, REGRESSION, continuous_and_resumed, make_batch, overfit, tiny_run_cfg
from hrlf.config import TrainCfg
from hrlf.missing.protocol import apply_missing
from hrlf.models.smil import SMIL, ModalityPriors, SevereMissing, SMILCfg, build, objective
from hrlf.objectives.smil import SMILObjective, inner_update, meta_split, take
from hrlf.types import MODALITIES

GOLDEN = Path(__file__).with_name("golden_smil.json")
TINY = {"d_model": 16, "num_heads": 2, "num_layers": 1}
DETERMINISTIC = {"dropout": 0.0, "embed_dropout": 0.0, "head_dropout": 0.0, "regularize": False}


def system(task=REGRESSION, lr=1e-2, **overrides):
    torch.manual_seed(0)
    cfg = SMILCfg(**{**TINY, **overrides})
    model = build(cfg, dims=DIMS, task=task)
    obj = objective(cfg, task=task)
    obj.setup(model)
    return model, obj, obj.optimizers(model, TrainCfg(lr=lr))


def drop(batch, absent):
    """``absent``: {modality: [rows]} removed entirely."""
    masks = {m: torch.zeros_like(batch.valid[m]) for m in MODALITIES}
    for m, rows in absent.items():
        masks[m][rows] = True
    return apply_missing(batch, masks)


# ------------------------------------------------------------------------------------------------ protocol


def test_protocol_is_deterministic_pure_and_at_its_rate():
    batch = make_batch(batch_size=2000)
    before = {m: x.clone() for m, x in batch.features.items()}
    protocol = SevereMissing(incomplete_rate=0.9)
    a = protocol.apply(batch, generator=torch.Generator().manual_seed(3))
    b = protocol.apply(batch, generator=torch.Generator().manual_seed(3))
    c = protocol.apply(batch, generator=torch.Generator().manual_seed(4))
    assert all(torch.equal(a.missing[m], b.missing[m]) for m in MODALITIES)
    assert any(not torch.equal(a.missing[m], c.missing[m]) for m in MODALITIES)
    assert all(torch.equal(batch.features[m], before[m]) for m in MODALITIES)
    assert not any(batch.missing[m].any() for m in MODALITIES)
    absent = torch.stack([a.missing[m].all(dim=1) for m in MODALITIES], dim=1)  # (B, 3) whole rows only
    partial = torch.stack([a.missing[m].any(dim=1) & ~a.missing[m].all(dim=1) for m in MODALITIES], dim=1)
    assert not partial.any()
    assert not absent.all(dim=1).any()  # at least one modality kept
    assert absent.any(dim=1).float().mean().item() == pytest.approx(0.9, abs=0.03)
    assert protocol.describe() == {
        "name": "severe_missing(incomplete_rate=0.9)",
        "type": "severe_missing",
        "params": {"incomplete_rate": 0.9},
    }
    with pytest.raises(ValueError, match="incomplete_rate"):
        SevereMissing(incomplete_rate=1.5)


# ------------------------------------------------------------------------------------------- reconstruction


def test_absent_modalities_are_replaced_by_their_reconstruction():
    model, _, _ = system()
    model.eval()
    batch = drop(make_batch(), {"audio": [0], "vision": [1]})
    out = model(batch)
    d = TINY["d_model"]
    fused = out.aux["H"]  # (B, 3d) in MODALITIES order
    assert torch.equal(fused[0, d : 2 * d], out.aux["Zhat.audio"][0])
    assert torch.equal(fused[1, 2 * d :], out.aux["Zhat.vision"][1])
    assert torch.equal(fused[0, :d], out.aux["Z.language"][0])
    assert torch.equal(fused[2], torch.cat([out.aux[f"Z.{m}"][2] for m in MODALITIES]))
    for m in MODALITIES:  # a convex combination of the modality's K priors
        weights = out.aux[f"W.{m}"]
        assert torch.allclose(weights.sum(dim=-1), torch.ones(3))
        assert torch.allclose(out.aux[f"Zhat.{m}"], weights @ model.priors.get(m), atol=1e-6)


def test_reconstruction_loss_counts_only_present_modalities():
    model, obj, _ = system(**DETERMINISTIC)
    batch = drop(make_batch(), {"audio": [0], "vision": [0, 1]})
    out = model(batch)
    expected, count = 0.0, 0
    for m in MODALITIES:
        for b in range(3):
            if out.aux[f"avail.{m}"][b] > 0:
                expected += float((out.aux[f"Zhat.{m}"][b] - out.aux[f"Z.{m}"][b]).pow(2).mean().detach())
                count += 1
    assert count == 6
    assert float(obj(out, batch)["recon"].detach()) == pytest.approx(expected / count, rel=1e-5)


def test_kmeans_priors_on_hand_computed_numbers():
    priors = ModalityPriors(d_model=2, num_priors=2, learned=False, momentum=0.5)
    priors.update("audio", torch.tensor([[0.0, 0.0], [4.0, 4.0], [10.0, 10.0]]))  # first call seeds
    assert torch.equal(priors.get("audio"), torch.tensor([[0.0, 0.0], [4.0, 4.0]]))
    # [1, 1] -> centre 0; [5, 5] and [7, 7] -> centre 1 (mean [6, 6])
    priors.update("audio", torch.tensor([[1.0, 1.0], [5.0, 5.0], [7.0, 7.0]]))
    assert torch.allclose(priors.get("audio"), torch.tensor([[0.5, 0.5], [5.0, 5.0]]))
    untouched = priors.get("vision").clone()
    priors.update("vision", torch.empty(0, 2))
    assert torch.equal(priors.get("vision"), untouched)
    assert not list(priors.parameters())  # buffers: the optimizer never sees them


def test_kmeans_priors_move_only_in_the_training_step():
    model, obj, opts = system()
    before = model.priors.get("audio").clone()
    model(make_batch())
    assert torch.equal(model.priors.get("audio"), before)
    clean = make_batch(batch_size=6)
    obj.training_step(model=model, batch=clean, clean=clean, optimizers=opts)
    assert not torch.equal(model.priors.get("audio"), before)


# ---------------------------------------------------------------------------------------------- meta-learning


def test_inner_update_closed_form():
    """L_s = a t^2, L_q = (t' - c)^2 with t' = t - alpha dL_s/dt: dL_q/dt = 2 (t' - c)(1 - 2 a alpha)."""
    a, alpha, c = 2.0, 0.1, 0.5
    for first_order, expected in ((False, 2 * (0.6 - c) * (1 - 2 * a * alpha)), (True, 2 * (0.6 - c))):
        t = torch.tensor(1.0, requires_grad=True)
        fast = inner_update(a * t**2, {"t": t}, lr=alpha, first_order=first_order)
        assert float(fast["t"].detach()) == pytest.approx(0.6)
        ((fast["t"] - c) ** 2).backward()
        assert float(t.grad) == pytest.approx(expected)


def test_only_the_main_network_is_adapted_in_the_inner_loop():
    model, _, _ = system()
    theta = {n for n, _ in model.named_parameters() if SMIL.is_main_parameter(n)}
    phi = {n for n, _ in model.named_parameters()} - theta
    assert theta and all(n.startswith(("encoders.", "fusion.", "head.")) for n in theta)
    assert phi and all(n.startswith(("reconstructors.", "regularizers.")) for n in phi)
    learned, _, _ = system(prior="learned")
    assert any(n.startswith("priors.") and not SMIL.is_main_parameter(n) for n, _ in learned.named_parameters())


def test_support_is_the_incomplete_samples_and_query_the_complete_ones():
    batch = drop(make_batch(batch_size=5), {"audio": [1, 3], "vision": [3]})
    support, query = meta_split(batch, mode="missingness")
    assert support.tolist() == [1, 3] and query.tolist() == [0, 2, 4]
    support, query = meta_split(make_batch(batch_size=5), mode="missingness")  # nothing missing: alternate rows
    assert support.tolist() == [0, 2, 4] and query.tolist() == [1, 3]
    assert meta_split(take(batch, torch.tensor([2])), mode="missingness")[0].tolist() == [0]


def _query_loss_at(model, obj, query):
    with torch.no_grad():
        return float(obj(model(query), query)["task"])


def test_query_loss_is_taken_at_the_fast_weights():
    clean = make_batch(batch_size=6)
    batch = drop(clean, {"audio": [0, 2, 4]})
    query = take(batch, torch.tensor([1, 3, 5]))
    for inner_lr, same in ((0.0, True), (0.5, False)):
        model, obj, opts = system(inner_lr=inner_lr, **DETERMINISTIC)
        plain = _query_loss_at(model, obj, query)
        logged = obj.training_step(model=model, batch=batch, clean=clean, optimizers=opts)
        assert (logged["query_task"] == pytest.approx(plain, rel=1e-6)) == same


def test_outer_step_uses_the_second_order_meta_gradient():
    clean = make_batch(batch_size=6)
    batch = drop(clean, {"audio": [0, 2, 4]})
    updates = {}
    for first_order in (False, True):
        model, obj, _ = system(inner_lr=0.5, first_order=first_order, **DETERMINISTIC)
        start = copy.deepcopy(model.state_dict())
        sgd = {"main": torch.optim.SGD(model.parameters(), lr=0.1)}
        obj.training_step(model=model, batch=batch, clean=clean, optimizers=sgd)
        updates[first_order] = {n: p.detach() - start[n] for n, p in model.named_parameters()}
        # the fast weights were never written into the model: one optimizer step moved every parameter
        assert all(updates[first_order][n].abs().sum() > 0 for n, _ in model.named_parameters())
    head = "head.weight"
    assert not torch.allclose(updates[False][head], updates[True][head])
    # phi only sees the meta-gradient through theta', so its update differs too, but both are finite
    assert all(torch.isfinite(u).all() for u in updates[False].values())


def test_fast_weights_never_leak_into_the_model():
    class _Frozen(torch.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, {})

        def step(self, closure=None):
            return None

    model, obj, _ = system(inner_lr=0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    clean = make_batch(batch_size=6)
    obj.training_step(
        model=model, batch=drop(clean, {"vision": [1]}), clean=clean, optimizers={"main": _Frozen(model.parameters())}
    )
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


# -------------------------------------------------------------------------------------------- golden, overfit


@pytest.mark.parametrize("task", [REGRESSION, EMOTIONS], ids=["regression", "emotions"])
def test_golden_losses(task):
    """Logged terms of one meta step at a fixed seed; regenerate deliberately with UPDATE_GOLDEN=1."""
    model, obj, opts = system(task=task)
    clean = make_batch(batch_size=6, task=task)
    batch = SevereMissing(incomplete_rate=0.5).apply(clean, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    got = obj.training_step(model=model, batch=batch, clean=clean, optimizers=opts)
    stored = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if os.environ.get("UPDATE_GOLDEN") == "1":
        stored[task.kind] = got
        GOLDEN.write_text(json.dumps(stored, indent=2, sort_keys=True) + "\n")
    assert set(got) == set(stored[task.kind])
    for name, value in stored[task.kind].items():
        assert got[name] == pytest.approx(value, rel=1e-4, abs=1e-5), name


@pytest.mark.slow
def test_tiny_overfit():
    """The task term falls by >= 90 %; the KL term of the Bayesian regularizer is not meant to reach 0."""
    model, obj, opts = system(lr=3e-3, dropout=0.0, embed_dropout=0.0, head_dropout=0.0)
    clean = make_batch(batch_size=32, seed=7)
    # a fixed missingness pattern: 24 incomplete samples (support) and 8 complete ones (query)
    batch = SevereMissing(incomplete_rate=0.75).apply(clean, generator=torch.Generator().manual_seed(3))
    first, last = overfit(model=model, objective=obj, optimizers=opts, batch=batch, clean=clean)
    for split in ("support", "query"):
        assert last[f"{split}_task"] < 0.1 * first[f"{split}_task"], split
        assert last[f"{split}_recon"] < first[f"{split}_recon"], split


@pytest.mark.slow
def test_resume_equals_continuous_training(tiny_mosi, tmp_path, monkeypatch):
    """1 epoch, a kill in epoch 2, resume: the same test results, selection and log as 2 uninterrupted epochs (the
    K-means priors, buffers of the model, must come back with the state)."""
    cfg = tiny_run_cfg("smil", tiny_mosi)
    full, resumed = continuous_and_resumed(cfg, objective_cls=SMILObjective, run_dir=tmp_path, monkeypatch=monkeypatch)
    assert resumed["protocol"] == full["protocol"]
    assert resumed["selection"] == {
        k: {**v, "seconds": resumed["selection"][k]["seconds"]} for k, v in full["selection"].items()
    }
    # epoch 2 itself (the selection may keep epoch 1): its training losses and validation metrics
    log = Path("train") / "log.csv"
    assert (tmp_path / "resumed" / log).read_text() == (tmp_path / "full" / log).read_text()
