"""CorrKD: frozen teacher, SCD / CPD / RCD on hand-computed numbers, categories, Modality Random Missing, ablations
(golden losses, overfit and resume: test_training_contract.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from helpers import DIMS, EMOTIONS, REGRESSION, make_batch
from hrlf.config import TrainCfg
from hrlf.models.corrkd import (
    CorrKDCfg,
    CorrKDOutput,
    ModalityRandomMissing,
    categories,
    cpd_loss,
    disentangle,
    num_categories,
    prototype_similarity,
    scd_loss,
    stages,
)
from hrlf.types import MODALITIES

TINY = {"d_model": 16, "num_heads": 2, "num_layers": 1}


def student_stage(task=REGRESSION, **overrides):
    torch.manual_seed(0)
    teacher, student = stages(CorrKDCfg(**{**TINY, **overrides}), dims=DIMS, task=task, missing=True)
    student.objective.setup(student.model)
    opts = student.objective.optimizers(student.model, TrainCfg(lr=1e-2))
    return teacher, student, opts


def mrm(batch, seed=0, **kwargs):
    return ModalityRandomMissing(**kwargs).apply(batch, generator=torch.Generator().manual_seed(seed))


def snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


# ----------------------------------------------------------------------------------------------- the system


def test_stages_teacher_on_complete_data_student_on_mrm():
    teacher, student, _ = student_stage()
    assert (teacher.name, teacher.missing, teacher.protocol) == ("teacher", False, None)
    assert student.name == "student" and student.missing
    assert isinstance(student.protocol, ModalityRandomMissing)
    assert student.protocol.describe()["type"] == "mrm"
    assert student.objective.teacher is teacher.model


def test_teacher_is_frozen_gets_no_gradient_and_does_not_change():
    teacher, student, opts = student_stage()
    before = snapshot(teacher.model)
    for step in range(3):
        clean = make_batch(seed=step, batch_size=5)
        student.objective.training_step(model=student.model, batch=mrm(clean, step), clean=clean, optimizers=opts)
    assert all(p.grad is None and not p.requires_grad for p in teacher.model.parameters())
    assert all(torch.equal(p, before[n]) for n, p in teacher.model.named_parameters())
    assert not teacher.model.training
    in_optimizers = {id(p) for o in opts.values() for g in o.param_groups for p in g["params"]}
    assert not in_optimizers & {id(p) for p in teacher.model.parameters()}
    expected = {id(p) for p in student.model.parameters()} | {id(p) for p in student.objective.parameters()}
    assert in_optimizers == expected


@pytest.mark.parametrize("task", [REGRESSION, EMOTIONS], ids=["regression", "emotions"])
@pytest.mark.parametrize("scheme", ["binary", "ternary"])
def test_every_student_and_statistics_parameter_gets_a_gradient(task, scheme):
    _, student, _ = student_stage(task=task, regression_categories=scheme)
    obj = student.objective
    clean = make_batch(task=task, batch_size=6)
    terms = obj.losses(student.model(mrm(clean)), clean, teacher=obj.teacher_output(clean))
    terms["loss"].backward()
    for module in (student.model, obj.statistics):
        bad = [n for n, p in module.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not bad, f"No gradient for {bad}"
    nontarget = num_categories(task, scheme) > 2
    assert set(obj.statistics) == ({"target", "nontarget"} if nontarget else {"target"})


@pytest.mark.parametrize(
    ("switch", "gone"),
    [({"scd": False}, {"scd"}), ({"cpd": False}, {"cpd"}), ({"rcd": False}, {"rcd"})],
)
def test_each_ablation_removes_its_term(switch, gone):
    _, full, full_opts = student_stage()
    _, ablated, ablated_opts = student_stage(**switch)
    clean = make_batch(batch_size=4)

    def terms(stage, opts):
        return set(stage.objective.training_step(model=stage.model, batch=clean, clean=clean, optimizers=opts))

    assert terms(full, full_opts) - terms(ablated, ablated_opts) == gone
    if "rcd" in gone:
        assert ablated.objective.statistics is None


def test_the_student_needs_the_teacher_and_networks_expose_h_and_responses():
    teacher, student, _ = student_stage()
    clean = make_batch(batch_size=4)
    out = student.model(clean)
    assert isinstance(out, CorrKDOutput) and out.joint.shape == (4, 3 * TINY["d_model"])
    assert out.responses.shape == (4, 2)  # binary polarity logits for regression
    with pytest.raises(ValueError, match="teacher's output"):
        student.objective(out, clean)
    with pytest.raises(ValueError, match="rcd_mode"):
        CorrKDCfg(rcd_mode="l2")
    with pytest.raises(ValueError, match="mrm_ratio_step"):
        CorrKDCfg(mrm_ratio_step=0.3)


def test_rcd_replaced_by_kl_is_the_plain_kl():
    _, student, _ = student_stage(rcd_mode="kl", rcd_tau=2.0)
    assert student.objective.statistics is None
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    expected = F.kl_div(F.log_softmax(s / 2, -1), F.softmax(t / 2, -1), reduction="batchmean") * 4
    assert torch.allclose(student.objective.rcd(s, t, torch.zeros(4, dtype=torch.long)), expected)


# ------------------------------------------------------------------------------------------------ the losses


def test_scd_on_hand_numbers():
    student = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    teacher = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    # positives: |(-1, 0)|^2 = 1 and |(0, -4)|^2 = 16 -> mean 8.5
    # negatives: d(s0, t1) = 5 -> hinge(6 - 5)^2 = 1; d(s1, t0) = 2 -> hinge(6 - 2)^2 = 16 -> mean 8.5
    assert scd_loss(student, teacher, margin=6.0) == pytest.approx(17.0)
    assert scd_loss(student, teacher, margin=1.0) == pytest.approx(8.5)  # negatives beyond the margin are free
    # normalized: s0 = 0 stays 0; s1 -> (1, 0); t0 -> (1, 0); t1 -> (0.6, 0.8)
    # positives: 1 and |(0.4, -0.8)|^2 = 0.8 -> 0.9; negatives: d(s0, t1) = 1 -> 1, d(s1, t0) = 0 -> 4 -> 2.5
    assert scd_loss(student, teacher, margin=2.0, normalize=True) == pytest.approx(3.4)


def test_scd_gradient_is_finite_when_a_student_sample_equals_a_teacher_sample():
    student = torch.tensor([[1.0, 2.0], [1.0, 2.0]], requires_grad=True)
    scd_loss(student, torch.tensor([[1.0, 2.0], [1.0, 2.0]]), margin=1.0).backward()
    assert torch.isfinite(student.grad).all()


def test_prototypes_and_cpd_on_hand_numbers():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    category = torch.tensor([0, 0, 2])
    similarity, present = prototype_similarity(features, category, 3)
    assert present.tolist() == [True, False, True]
    # prototype 0 = (0.5, 0.5), prototype 2 = (1, 1): both along the diagonal
    diag = 1 / math.sqrt(2)
    assert torch.allclose(similarity[:, 0], torch.tensor([diag, diag, 1.0]))
    assert torch.allclose(similarity[:, 2], torch.tensor([diag, diag, 1.0]))
    # student features rotated onto the axes: sample 2 = (1, 0) -> prototype 2 = (1, 0)
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    s_sim, _ = prototype_similarity(student, category, 3)
    expected = ((s_sim - similarity)[:, [0, 2]]).pow(2).mean()
    assert cpd_loss(student, features, category, 3) == pytest.approx(float(expected))
    assert s_sim[2, 2] == pytest.approx(1.0) and s_sim[1, 2] == pytest.approx(0.0)


def test_cpd_ignores_scale_and_absent_categories():
    torch.manual_seed(0)
    teacher = torch.randn(6, 4)
    category = torch.tensor([0, 1, 1, 0, 0, 1])
    assert cpd_loss(2.5 * teacher, teacher, category, 3) == pytest.approx(0.0, abs=1e-10)
    assert cpd_loss(torch.randn(6, 4), teacher, category, 3) > 0


def test_disentangled_responses_on_hand_numbers():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]]))
    target = torch.tensor([0, 2])
    binary, nontarget = disentangle(logits, target, tau=1.0)
    assert torch.allclose(binary, torch.tensor([[0.5, 0.5], [0.3, 0.7]]))
    assert torch.allclose(nontarget, torch.tensor([[0.6, 0.4], [1 / 7, 6 / 7]]))
    binary, nontarget = disentangle(logits[:, :2], torch.tensor([1, 0]), tau=1.0)
    assert nontarget is None
    assert torch.allclose(binary.sum(-1), torch.ones(2))


def test_categories():
    label = torch.tensor([-1.2, 0.0, 0.4, -0.0, 2.0])
    assert categories(label, REGRESSION, "binary").tolist() == [0, 1, 1, 1, 1]
    assert categories(label, REGRESSION, "ternary").tolist() == [0, 1, 2, 1, 2]
    emotions = torch.tensor([[0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]])
    assert categories(emotions, EMOTIONS, "binary").tolist() == [1, 3, 0]
    assert num_categories(EMOTIONS, "binary") == 4 and num_categories(REGRESSION, "ternary") == 3


# -------------------------------------------------------------------------------------------------------- MRM


def test_mrm_is_deterministic_pure_and_keeps_a_modality():
    clean = make_batch(batch_size=64, seed=2)
    before = {m: clean.features[m].clone() for m in MODALITIES}
    a, b, c = mrm(clean, 5), mrm(clean, 5), mrm(clean, 6)
    assert all(torch.equal(a.missing[m], b.missing[m]) for m in MODALITIES)
    assert any(not torch.equal(a.missing[m], c.missing[m]) for m in MODALITIES)
    assert all(torch.equal(clean.features[m], before[m]) and not clean.missing[m].any() for m in MODALITIES)
    absent = torch.stack([a.missing[m].all(dim=1) for m in MODALITIES], dim=1)  # (B, 3)
    assert not absent.all(dim=1).any()
    for m in MODALITIES:
        assert (a.features[m][a.missing[m]] == 0).all()
        # modality-level only by default: a row is either untouched or entirely missing
        assert ((a.missing[m] == absent[:, MODALITIES.index(m), None]) | ~clean.valid[m]).all()


@pytest.mark.parametrize("include_complete", [True, False])
def test_mrm_patterns_are_uniform(include_complete):
    clean = make_batch(batch_size=7000, length=2, seed=1)
    out = mrm(clean, 0, include_complete=include_complete)
    pattern = sum((~out.missing[m].all(dim=1)).long() << i for i, m in enumerate(MODALITIES))  # (B,) bitmask
    counts = torch.bincount(pattern, minlength=8).double() / clean.size
    assert counts[0] == 0  # never all three missing
    expected = 1 / 7 if include_complete else 1 / 6
    kept = [1, 2, 3, 4, 5, 6] + ([7] if include_complete else [])
    assert torch.allclose(counts[kept], torch.full((len(kept),), expected, dtype=torch.float64), atol=0.015)
    if not include_complete:
        assert counts[7] == 0


def test_mrm_frame_drop_removes_frames_inside_kept_modalities():
    clean = make_batch(batch_size=400, length=10, seed=3)
    out = mrm(clean, 0, frame_drop=True)
    partial = [(out.missing[m] & clean.valid[m]).any(dim=1) & ~out.missing[m].all(dim=1) for m in MODALITIES]
    assert torch.stack(partial).any()
    assert ModalityRandomMissing(frame_drop=True).name.startswith("mrm(")
    with pytest.raises(ValueError, match="ratio_step"):
        ModalityRandomMissing(ratio_step=0.3)
