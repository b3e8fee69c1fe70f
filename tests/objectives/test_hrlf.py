"""HRLF's teacher/student system: frozen teacher, own-step updates, ablations, golden losses, tiny overfit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from helpers import DIMS, EMOTIONS, REGRESSION, make_batch
from hrlf.config import TrainCfg
from hrlf.missing.protocol import ModalityStochasticMissing
from hrlf.models.hrlf import HRLFCfg, stages
from hrlf.objectives.hrlf import StudentObjective, jsd_mi

GOLDEN = Path(__file__).with_name("golden_hrlf_losses.json")
TINY = {"d_model": 16, "num_heads": 2, "num_layers": 1}


def student_stage(task=REGRESSION, **overrides):
    torch.manual_seed(0)
    teacher, student = stages(HRLFCfg(**{**TINY, **overrides}), dims=DIMS, task=task, missing=True)
    student.objective.setup(student.model)
    opts = student.objective.optimizers(student.model, TrainCfg(lr=1e-2))
    return teacher, student, opts


def snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def changed(module, before):
    return {n for n, p in module.named_parameters() if not torch.equal(p.detach(), before[n])}


def corrupted(batch, seed=0):
    return ModalityStochasticMissing().apply(batch, generator=torch.Generator().manual_seed(seed))


def test_teacher_gets_no_gradient_and_does_not_change():
    teacher, student, opts = student_stage()
    before = snapshot(teacher.model)
    for step in range(3):
        clean = make_batch(seed=step)
        student.objective.training_step(model=student.model, batch=corrupted(clean), clean=clean, optimizers=opts)
    assert all(p.grad is None for p in teacher.model.parameters())
    assert all(not p.requires_grad for p in teacher.model.parameters())
    assert not changed(teacher.model, before)
    assert not teacher.model.training  # frozen in eval mode: no dropout noise in the targets
    in_optimizers = {id(p) for o in opts.values() for g in o.param_groups for p in g["params"]}
    assert not in_optimizers & {id(p) for p in teacher.model.parameters()}


class _Frozen(torch.optim.Optimizer):
    """An optimizer whose step does nothing, to isolate one of the two updates."""

    def __init__(self, params):
        super().__init__(params, {})

    def step(self, closure=None):
        return None


def test_discriminators_change_only_in_their_own_step():
    _, student, opts = student_stage()
    obj = student.objective
    clean = make_batch()
    # (1) only the discriminator step acts
    only_disc = {"main": _Frozen(student.model.parameters()), "disc": opts["disc"]}
    before = {"disc": snapshot(obj.discriminators), "stat": snapshot(obj.statistics), "net": snapshot(student.model)}
    obj.training_step(model=student.model, batch=corrupted(clean), clean=clean, optimizers=only_disc)
    assert changed(obj.discriminators, before["disc"]) == set(before["disc"])
    assert not changed(obj.statistics, before["stat"]) and not changed(student.model, before["net"])
    # (2) only the student step acts: the student and the statistics networks move, the discriminators do not
    only_main = {"main": opts["main"], "disc": _Frozen(obj.discriminators.parameters())}
    before = {"disc": snapshot(obj.discriminators), "stat": snapshot(obj.statistics), "net": snapshot(student.model)}
    obj.training_step(model=student.model, batch=corrupted(clean), clean=clean, optimizers=only_main)
    assert not changed(obj.discriminators, before["disc"])
    assert changed(obj.statistics, before["stat"]) == set(before["stat"])
    assert changed(student.model, before["net"])


def test_every_student_and_auxiliary_parameter_gets_a_gradient():
    teacher, student, _ = student_stage()
    obj = student.objective
    clean = make_batch()
    terms = obj.losses(student.model(corrupted(clean)), clean, obj.teacher_output(clean))
    terms["loss"].backward()
    obj.discriminator_loss(obj.teacher_output(clean), student.model(clean)).backward()
    for module in (student.model, obj.statistics, obj.discriminators):
        missing = [n for n, p in module.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, f"No gradient for {missing}"


@pytest.mark.parametrize(
    ("switch", "gone_params", "gone_terms"),
    [
        ("frf", {"factorization."}, {"frf", "frf_trans_self", "frf_trans_cross", "frf_recon"}),
        ("hmi", {"statistics."}, {"hmi"}),
        ("hal", {"discriminators."}, {"hal", "disc"}),
        ("kd", set(), {"kd"}),
    ],
)
def test_each_ablation_removes_exactly_its_parameters_and_terms(switch, gone_params, gone_terms):
    _, full, full_opts = student_stage()
    _, ablated, ablated_opts = student_stage(**{switch: False})

    def names(stage):
        return {f"net.{n}" for n, _ in stage.model.named_parameters()} | {
            n for n, _ in stage.objective.named_parameters()
        }

    def terms(stage, opts):
        clean = make_batch()
        return set(stage.objective.training_step(model=stage.model, batch=clean, clean=clean, optimizers=opts))

    removed = names(full) - names(ablated)
    assert names(ablated) <= names(full)
    assert (
        removed
        and all(any(n.removeprefix("net.").startswith(g) for g in gone_params) for n in removed)
        or (not gone_params and not removed)
    )
    for prefix in gone_params:
        assert not any(n.removeprefix("net.").startswith(prefix) for n in names(ablated))
    assert terms(full, full_opts) - terms(ablated, ablated_opts) == gone_terms
    assert set(full_opts) - set(ablated_opts) == ({"disc"} if switch == "hal" else set())


def test_ablated_teacher_has_no_factorization_either():
    teacher, student, _ = student_stage(frf=False)
    assert teacher.model.factorization is None and student.model.factorization is None


def test_jsd_estimator_prefers_dependent_pairs():
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    statistics = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = torch.optim.Adam(statistics.parameters(), lr=1e-2)
    for _ in range(200):  # maximise the bound on dependent pairs (y = x)
        opt.zero_grad()
        (-jsd_mi(statistics, x, x, negatives="shuffle")).backward()
        opt.step()
    dependent = jsd_mi(statistics, x, x, negatives="all_pairs")
    independent = jsd_mi(statistics, x, torch.randn(64, 8), negatives="all_pairs")
    assert dependent > independent + 0.3
    assert dependent <= torch.log(torch.tensor(4.0)) * 0.5 + 1e-4  # the JSD bound is at most log 2 per term


@pytest.mark.parametrize("task", [REGRESSION, EMOTIONS], ids=["regression", "emotions"])
def test_golden_losses(task):
    """Loss dict of one student step at a fixed seed; regenerate deliberately with UPDATE_GOLDEN=1."""
    _, student, opts = student_stage(task=task)
    clean = make_batch(task=task)
    torch.manual_seed(1)
    got = student.objective.training_step(model=student.model, batch=corrupted(clean), clean=clean, optimizers=opts)
    key = task.kind
    stored = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if os.environ.get("UPDATE_GOLDEN") == "1":
        stored[key] = got
        GOLDEN.write_text(json.dumps(stored, indent=2, sort_keys=True) + "\n")
    assert set(got) == set(stored[key])
    for name, value in stored[key].items():
        assert got[name] == pytest.approx(value, rel=1e-4, abs=1e-5), name


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="known open problem (issue 3): with every weight 1 and the saturating adversarial term, the student's "
    "representations collapse to a constant and its task loss stops falling; see docs/results.md",
)
def test_every_term_is_finite_and_falls_on_a_tiny_overfit():
    torch.manual_seed(0)
    teacher, student = stages(
        HRLFCfg(**TINY, dropout=0.0, embed_dropout=0.0, head_dropout=0.0), dims=DIMS, task=REGRESSION, missing=True
    )
    data = [make_batch(batch_size=32, seed=7)]
    # the teacher fits the complete batch first (task + FRF), then is frozen
    teacher.objective.setup(teacher.model)
    opt = teacher.objective.optimizers(teacher.model, TrainCfg(lr=3e-3))["main"]
    first_teacher = None
    for _ in range(300):
        opt.zero_grad()
        losses = teacher.objective(teacher.model(data[0]), data[0])
        losses["loss"].backward()
        opt.step()
        first_teacher = first_teacher or {k: float(v.detach()) for k, v in losses.items()}
    assert float(losses["loss"]) < 0.1 * first_teacher["loss"]
    student.objective.setup(student.model)
    opts = student.objective.optimizers(student.model, TrainCfg(lr=3e-3))
    history = []
    for _ in range(300):
        # a fixed corruption pattern: the overfit target is learnable
        batch = corrupted(data[0], seed=3)
        history.append(
            student.objective.training_step(model=student.model, batch=batch, clean=data[0], optimizers=opts)
        )
    first, last = history[0], {k: sum(h[k] for h in history[-10:]) / 10 for k in history[0]}
    assert all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in history)
    assert last["task"] < 0.1 * first["task"]
    assert last["kd"] < 0.5 * first["kd"]
    for name in ("frf_trans_self", "frf_trans_cross", "frf_recon"):
        assert last[name] < first[name], name
    assert last["hmi"] < first["hmi"]  # the MI bound between teacher and student scales rises


def test_student_objective_rejects_bad_knobs():
    teacher, _, _ = student_stage()
    with pytest.raises(ValueError, match="gen_loss"):
        StudentObjective(task=REGRESSION, teacher=teacher.model, d_model=16, gen_loss="wasserstein")


@pytest.mark.parametrize("encoder_grad", [True, False])
def test_frf_gradient_reaches_the_encoders_only_when_asked(encoder_grad):
    torch.manual_seed(0)
    teacher, _ = stages(HRLFCfg(**TINY, frf_encoder_grad=encoder_grad), dims=DIMS, task=REGRESSION, missing=True)
    teacher.objective.setup(teacher.model)
    batch = make_batch()
    losses = teacher.objective(teacher.model(batch), batch)
    losses["frf"].backward()
    encoder_grads = [p.grad for p in teacher.model.encoders.parameters()]
    reached = any(g is not None and g.abs().sum() > 0 for g in encoder_grads)
    assert reached == encoder_grad
    assert all(p.grad is not None for p in teacher.model.factorization.parameters())


def test_distillation_warmup_scales_hmi_and_hal_by_epoch():
    _, student, _ = student_stage(distill_warmup_epochs=4)
    obj = student.objective
    clean = make_batch()
    s_out, t_out = student.model(clean), obj.teacher_output(clean)
    for epoch, ramp in [(0, 0.0), (2, 0.5), (4, 1.0), (9, 1.0)]:
        obj.start_epoch(epoch)
        terms = obj.losses(s_out, clean, t_out)
        expected = terms["task"] + terms["frf"] + ramp * (terms["hmi"] + terms["hal"]) + terms["kd"]
        assert torch.allclose(terms["loss"], expected), epoch


def test_student_objective_refuses_a_network_of_another_kind():
    from hrlf import create_model

    _, student, _ = student_stage()
    with pytest.raises(TypeError, match="trains a HRLFNet"):
        student.objective.setup(create_model("backbone", dims=DIMS, task=REGRESSION))
