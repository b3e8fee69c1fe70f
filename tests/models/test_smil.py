"""SMIL: severe-missing protocol, feature reconstruction from priors, K-means priors, meta (inner/outer) updates
(golden losses, overfit and resume: test_training_contract.py)."""

from __future__ import annotations

import copy

import pytest
import torch

from helpers import DIMS, REGRESSION, make_batch
from hrlf.config import TrainCfg
from hrlf.missing.protocol import apply_missing
from hrlf.models.smil import (
    SMIL,
    ModalityPriors,
    SevereMissing,
    SMILCfg,
    SMILObjective,
    SMILOutput,
    inner_update,
    meta_split,
)
from hrlf.types import MODALITIES

TINY = {"d_model": 16, "num_heads": 2, "num_layers": 1}
DETERMINISTIC = {"dropout": 0.0, "embed_dropout": 0.0, "head_dropout": 0.0, "regularize": False}


def system(task=REGRESSION, lr=1e-2, **overrides):
    torch.manual_seed(0)
    cfg = SMILCfg(**{**TINY, **overrides})
    model = SMIL(cfg, dims=DIMS, task=task)
    obj = SMILObjective(cfg, task=task)
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
    with pytest.raises(ValueError, match="incomplete_rate: expected a probability"):
        SMILCfg(incomplete_rate=1.5)


# ------------------------------------------------------------------------------------------- reconstruction


def test_absent_modalities_are_replaced_by_their_reconstruction():
    model, _, _ = system()
    model.eval()
    batch = drop(make_batch(), {"audio": [0], "vision": [1]})
    out = model(batch)
    assert isinstance(out, SMILOutput)
    d = TINY["d_model"]
    fused = out.fused  # (B, 3d) in MODALITIES order
    assert torch.equal(fused[0, d : 2 * d], out.reconstructed["audio"][0])
    assert torch.equal(fused[1, 2 * d :], out.reconstructed["vision"][1])
    assert torch.equal(fused[0, :d], out.features["language"][0])
    assert torch.equal(fused[2], torch.cat([out.features[m][2] for m in MODALITIES]))
    for m in MODALITIES:  # a convex combination of the modality's K priors
        weights = out.prior_weights[m]
        assert torch.allclose(weights.sum(dim=-1), torch.ones(3))
        assert torch.allclose(out.reconstructed[m], weights @ model.priors.get(m), atol=1e-6)
    assert len(out.perturbations) == len(SMILCfg().fusion_mults)  # one (mu, log sigma^2) per fusion layer


def test_reconstruction_loss_counts_only_present_modalities():
    model, obj, _ = system(**DETERMINISTIC)
    batch = drop(make_batch(), {"audio": [0], "vision": [0, 1]})
    out = model(batch)
    expected, count = 0.0, 0
    for m in MODALITIES:
        for b in range(3):
            if out.available[m][b] > 0:
                expected += float((out.reconstructed[m][b] - out.features[m][b]).pow(2).mean().detach())
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
    assert meta_split(batch.take(torch.tensor([2])), mode="missingness")[0].tolist() == [0]


def _query_loss_at(model, obj, query):
    with torch.no_grad():
        return float(obj(model(query), query)["task"])


def test_query_loss_is_taken_at_the_fast_weights():
    clean = make_batch(batch_size=6)
    batch = drop(clean, {"audio": [0, 2, 4]})
    query = batch.take(torch.tensor([1, 3, 5]))
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

        def step(self, closure=None):  # noqa: ARG002 - Optimizer.step's signature
            return None

    model, obj, _ = system(inner_lr=0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    clean = make_batch(batch_size=6)
    obj.training_step(
        model=model, batch=drop(clean, {"vision": [1]}), clean=clean, optimizers={"main": _Frozen(model.parameters())}
    )
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


# -------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"prior": "gmm"}, "prior: expected kmeans | learned"),
        ({"num_priors": 0}, "num_priors"),
        ({"prior_momentum": 1.0}, "prior_momentum"),
        ({"fusion_mults": []}, "fusion_mults"),
        ({"inner_steps": 0}, "inner_steps"),
        ({"inner_lr": -1.0}, "inner_lr"),
        ({"meta_split": "random"}, "meta_split"),
    ],
)
def test_bad_settings_are_refused_by_the_config(override, message):
    with pytest.raises(ValueError, match=message):
        SMILCfg(**override)
