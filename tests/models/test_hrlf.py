"""HRLF's teacher/student system: frozen teacher, own-step updates, ablations, golden losses, tiny overfit."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import pytest
import torch

from helpers import DIMS, EMOTIONS, REGRESSION, make_batch
from hrlf.config import TrainCfg
from hrlf.missing.protocol import ModalityStochasticMissing
from hrlf.models.hrlf import HRLFCfg, HRLFOutput, jsd_mi, stages
from hrlf.types import MODALITIES

GOLDEN = Path(__file__).with_name("golden_hrlf_losses.json")
TINY = {"d_model": 16, "num_heads": 2, "num_layers": 1}


def student_stage(task=REGRESSION, **overrides):
    torch.manual_seed(0)
    teacher, student = stages(HRLFCfg(**{**TINY, **overrides}), dims=DIMS, task=task, missing=True)
    student.objective.setup(student.model)
    opts = student.objective.optimizers(student.model, TrainCfg(lr=1e-2))
    return teacher, student, opts


def teacher_losses(**overrides):
    """The teacher stage of a tiny HRLF and its named losses on one complete batch."""
    torch.manual_seed(0)
    teacher, _ = stages(HRLFCfg(**{**TINY, **overrides}), dims=DIMS, task=REGRESSION, missing=True)
    teacher.objective.setup(teacher.model)
    batch = make_batch()
    return teacher, teacher.objective(teacher.model(batch), batch)


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

    def step(self, closure=None):  # noqa: ARG002 - Optimizer.step's signature
        return None


def test_discriminators_change_only_in_their_own_step():
    _, student, opts = student_stage()
    obj = student.objective
    clean = make_batch()
    # (1) only the discriminator step acts
    only_disc = {"main": _Frozen(student.model.parameters()), "disc": opts["disc"]}
    before = {"disc": snapshot(obj.hal), "stat": snapshot(obj.hmi), "net": snapshot(student.model)}
    obj.training_step(model=student.model, batch=corrupted(clean), clean=clean, optimizers=only_disc)
    assert changed(obj.hal, before["disc"]) == set(before["disc"])
    assert not changed(obj.hmi, before["stat"]) and not changed(student.model, before["net"])
    # (2) only the student step acts: the student and the statistics networks move, the discriminators do not
    only_main = {"main": opts["main"], "disc": _Frozen(obj.hal.parameters())}
    before = {"disc": snapshot(obj.hal), "stat": snapshot(obj.hmi), "net": snapshot(student.model)}
    obj.training_step(model=student.model, batch=corrupted(clean), clean=clean, optimizers=only_main)
    assert not changed(obj.hal, before["disc"])
    assert changed(obj.hmi, before["stat"]) == set(before["stat"])
    assert changed(student.model, before["net"])


def test_every_student_and_auxiliary_parameter_gets_a_gradient():
    teacher, student, _ = student_stage()
    obj = student.objective
    clean = make_batch()
    terms = obj.losses(student.model(corrupted(clean)), clean, teacher=obj.teacher_output(clean))
    terms["loss"].backward()
    obj.discriminator_loss(obj.teacher_output(clean), student.model(clean)).backward()
    for module in (student.model, obj.hmi, obj.hal):
        missing = [n for n, p in module.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, f"No gradient for {missing}"


@pytest.mark.parametrize(
    ("switch", "gone_params", "gone_terms"),
    [
        ("frf", {"factorization."}, {"frf", "frf_trans_self", "frf_trans_cross", "frf_recon"}),
        ("hmi", {"hmi."}, {"hmi"}),
        ("hal", {"hal."}, {"hal", "disc"}),
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


def test_all_pairs_statistics_split_first_layer_equals_the_grid_in_value_and_gradient():
    from hrlf.models.hrlf import _all_pairs_statistics

    torch.manual_seed(0)
    statistics = torch.nn.Sequential(torch.nn.Linear(12, 10), torch.nn.LeakyReLU(0.2), torch.nn.Linear(10, 1))
    x, y = torch.randn(7, 5, requires_grad=True), torch.randn(7, 7, requires_grad=True)
    grid = torch.cat([x.unsqueeze(1).expand(-1, 7, -1), y.unsqueeze(0).expand(7, -1, -1)], dim=-1)  # (7, 7, 12)
    expected = statistics(grid)
    got = _all_pairs_statistics(statistics, x, y)
    assert got.shape == (7, 7, 1)
    torch.testing.assert_close(got, expected)
    weights = torch.randn(7, 7, 1)
    grads_expected = torch.autograd.grad((expected * weights).sum(), [x, y, *statistics.parameters()])
    grads_got = torch.autograd.grad((got * weights).sum(), [x, y, *statistics.parameters()])
    for a, b in zip(grads_got, grads_expected, strict=True):
        torch.testing.assert_close(a, b)
    # a statistics network that does not start with a Linear layer takes the grid path: same numbers
    wrapped = torch.nn.Sequential(torch.nn.Identity(), *statistics)
    torch.testing.assert_close(_all_pairs_statistics(wrapped, x, y), expected)


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
    with pytest.raises(ValueError, match="gen_loss"):
        HRLFCfg(**TINY, gen_loss="wasserstein")
    with pytest.raises(ValueError, match="disc_steps"):
        HRLFCfg(**TINY, disc_steps=0)


@pytest.mark.parametrize("encoder_grad", [True, False])
def test_frf_gradient_reaches_the_encoders_only_when_asked(encoder_grad):
    teacher, losses = teacher_losses(frf_encoder_grad=encoder_grad)
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
        terms = obj.losses(s_out, clean, teacher=t_out)
        expected = terms["task"] + terms["frf"] + ramp * (terms["hmi"] + terms["hal"]) + terms["kd"]
        assert torch.allclose(terms["loss"], expected), epoch


def test_student_objective_refuses_a_network_of_another_kind():
    from hrlf import create_model

    _, student, _ = student_stage()
    with pytest.raises(TypeError, match="trains a HRLFNet"):
        student.objective.setup(create_model("backbone", dims=DIMS, task=REGRESSION))


# ------------------------------------------------------------------ the fixes: each changes what it should


def test_pre_dropout_features_are_the_same_in_train_and_eval_mode():
    torch.manual_seed(0)
    cfg = HRLFCfg(**TINY, dropout=0.0, embed_dropout=0.0, head_dropout=0.5, aux_features="pre_dropout")
    _, student = stages(cfg, dims=DIMS, task=REGRESSION, missing=True)
    net, batch = student.model, make_batch(batch_size=8)
    net.eval()
    reference = net(batch)
    net.train()
    noisy = net(batch)
    assert noisy.clean is not None and noisy.features is not None and reference.features is not None
    for key in ("i1", "i2", "i3", "refined"):
        clean, plain, ref = (getattr(f, key) for f in (noisy.clean, noisy.features, reference.features))
        assert torch.allclose(clean, ref, atol=1e-6), key
        assert not torch.allclose(plain, ref), key  # the literal features do carry dropout
    assert reference.clean is reference.features  # eval mode has no dropout: one chain


def _codes(seed=0, batch=6, d=16):
    g = torch.Generator().manual_seed(seed)
    z = {m: torch.randn(batch, d, generator=g) for m in MODALITIES}
    q = {m: torch.randn(batch, d // 2, generator=g) for m in MODALITIES}
    u = {m: torch.randn(batch, d // 2, generator=g) for m in MODALITIES}
    return z, q, u


def test_absent_mask_removes_exactly_the_terms_of_absent_modalities():
    from hrlf.models.hrlf import FineGrainedFactorization

    torch.manual_seed(0)
    cfg = HRLFCfg(**TINY, absent_frf="mask")
    frf = FineGrainedFactorization(cfg)
    z, q, u = _codes()
    all_present = {m: torch.ones(6, dtype=torch.bool) for m in MODALITIES}
    literal = frf.loss(z, q, u, cfg=HRLFCfg(**TINY), present=all_present)
    masked = frf.loss(z, q, u, cfg=cfg, present=all_present)
    assert all(torch.allclose(literal[k], masked[k]) for k in literal)  # nothing absent: nothing removed
    present = dict(all_present, audio=torch.tensor([True, True, True, False, False, True]))
    before = frf.loss(z, q, u, cfg=cfg, present=present)
    z2, q2, u2 = ({m: v.clone() for m, v in d.items()} for d in (z, q, u))
    for codes in (z2, q2, u2):
        codes["audio"][3:5] = torch.randn(2, codes["audio"].shape[1]) * 10  # only where audio is absent
    after = frf.loss(z2, q2, u2, cfg=cfg, present=present)
    assert all(torch.allclose(before[k], after[k]) for k in before)
    literal_after = frf.loss(z2, q2, u2, cfg=HRLFCfg(**TINY), present=present)
    assert not torch.allclose(literal_after["frf"], frf.loss(z, q, u, cfg=HRLFCfg(**TINY), present=present)["frf"])


def test_teacher_target_replaces_only_the_absent_targets():
    from hrlf.models.hrlf import FineGrainedFactorization

    torch.manual_seed(0)
    cfg = HRLFCfg(**TINY, absent_frf="teacher_target")
    frf = FineGrainedFactorization(cfg)
    z, q, u = _codes()
    present = {m: torch.ones(6, dtype=torch.bool) for m in MODALITIES}
    present["vision"] = torch.tensor([True, False, True, True, True, True])
    tz, tq, _ = _codes(seed=1)
    teacher = HRLFOutput(pred=torch.zeros(6), z=tz, q=tq)
    got = frf.loss(z, q, u, cfg=cfg, present=present, teacher=teacher)
    # the same teacher codes on present rows change nothing; on the absent row they are the targets
    tz2 = {m: v.clone() for m, v in tz.items()}
    tz2["vision"][0] += 5.0  # a present row: the student's own Z is its target
    same = frf.loss(
        z,
        q,
        u,
        cfg=cfg,
        present=present,
        teacher=dataclasses.replace(teacher, z={**teacher.z, "vision": tz2["vision"]}),
    )
    assert torch.allclose(got["frf"], same["frf"])
    tz2["vision"][1] += 5.0  # the absent row: its target moves
    moved = frf.loss(
        z,
        q,
        u,
        cfg=cfg,
        present=present,
        teacher=dataclasses.replace(teacher, z={**teacher.z, "vision": tz2["vision"]}),
    )
    assert not torch.allclose(got["frf_trans_cross"], moved["frf_trans_cross"])  # D_r(Q_l, U_v) -> teacher Z_v
    assert torch.allclose(got["frf_trans_self"], moved["frf_trans_self"])  # (v, v) needs vision present


def test_frozen_re_encoding_gives_e_s_no_gradient_from_eq_3():
    from hrlf.models.hrlf import FineGrainedFactorization

    for frozen in (False, True):
        torch.manual_seed(0)
        cfg = HRLFCfg(**TINY, frf_recon_frozen=frozen)
        frf = FineGrainedFactorization(cfg)
        z, q, u = _codes()  # leaves: the only path into E^S's weights is the re-encoding of Eq. 3
        recon = frf.loss(z, q, u, cfg=cfg)["frf_recon"]
        recon.backward()
        grads = [p.grad for p in frf.sentiment_encoders.parameters()]
        reached = any(g is not None and g.abs().sum() > 0 for g in grads)
        assert reached != frozen
        assert all(p.grad is not None for p in frf.decoder.parameters())  # D_r still learns from Eq. 3


def test_variance_hinge_is_its_target_on_a_constant_code_and_zero_on_a_wide_one():
    from hrlf.models.hrlf import covariance_penalty, variance_hinge

    assert float(variance_hinge(torch.ones(32, 4), target=1.0)) == pytest.approx(1.0 - 0.01, abs=1e-4)
    wide = torch.randn(256, 4, generator=torch.Generator().manual_seed(0)) * 3
    assert float(variance_hinge(wide, target=1.0)) == 0.0
    x = torch.randn(512, 3, generator=torch.Generator().manual_seed(0))
    assert float(covariance_penalty(x)) < 0.01
    assert float(covariance_penalty(torch.cat([x[:, :1], x[:, :1]], dim=1))) > 0.4  # two equal dimensions


def test_spread_floor_hinge_is_zero_above_the_floor_and_the_teacher_s_share_on_a_collapsed_code():
    from hrlf.models.hrlf import spread_floor_hinge

    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(256, 4, generator=g) * torch.tensor([1.0, 2.0, 0.5, 0.0])
    t_std = teacher.std(dim=0, unbiased=False)
    wide = torch.randn(256, 4, generator=g) * 3
    assert float(spread_floor_hinge(wide, teacher, floor=0.5)) == 0.0
    collapsed = torch.full((256, 4), 0.3, requires_grad=True)  # one point: std 0 in every dimension
    hinge = spread_floor_hinge(collapsed, teacher, floor=0.5)
    assert float(hinge) == pytest.approx(float((0.5 * t_std).mean()), abs=1e-4)
    # only the rows the weight keeps count: wide on the kept rows, a constant on the others
    mixed = torch.cat([wide[:128], torch.zeros(128, 4)])
    keep = torch.arange(256) < 128
    assert float(spread_floor_hinge(mixed, teacher, floor=0.5, weight=keep)) == 0.0
    assert float(spread_floor_hinge(mixed, teacher, floor=0.5, weight=~keep)) > 0.2
    assert float(spread_floor_hinge(wide[:1], teacher[:1], floor=0.5)) == 0.0  # one row: no spread to measure
    teacher.requires_grad_(True)
    spread_floor_hinge((wide * 0.01).requires_grad_(True), teacher, floor=0.5).backward()
    assert teacher.grad is None  # the teacher's spread is a target, never trained


def test_spread_floor_adds_a_term_that_revives_a_collapsed_student_code_and_is_off_by_default():
    """The hinge is a student term (logged as ``spread``), weighted by lambda_spread; its gradient reaches the
    encoder of the collapsed modality; without ``spread_floor`` there is no such term."""
    clean = make_batch()
    batch = corrupted(clean)
    teacher, student, _ = student_stage()
    obj = student.objective
    assert "spread" not in obj.losses(student.model(batch), clean, teacher=obj.teacher_output(clean))
    teacher, student, _ = student_stage(spread_floor=0.5, lambda_spread=2.0)
    obj = student.objective
    with torch.no_grad():  # collapse the student's audio encoder: its Z is the bias of the last layer norm
        student.model.encoders["audio"].transformer.norm.weight.zero_()
    terms = obj.losses(student.model(batch), clean, teacher=obj.teacher_output(clean))
    assert float(terms["spread"]) > 0.0
    terms["loss"].backward()
    grads = {n: p.grad for n, p in student.model.encoders["audio"].named_parameters()}
    assert grads["transformer.norm.weight"] is not None and float(grads["transformer.norm.weight"].abs().sum()) > 0


def test_cross_correlation_penalty_is_zero_for_independent_codes_and_one_for_copies():
    from hrlf.models.hrlf import FineGrainedFactorization, cross_correlation_penalty

    g = torch.Generator().manual_seed(0)
    q, u = torch.randn(4096, 3, generator=g), torch.randn(4096, 2, generator=g)
    assert float(cross_correlation_penalty(q, u)) < 0.002
    assert float(cross_correlation_penalty(q, q)) == pytest.approx(1 / 3, abs=0.01)  # diagonal of 3 x 3 only
    assert float(cross_correlation_penalty(q[:, :1], -2 * q[:, :1] + 1)) == pytest.approx(1.0, abs=0.01)
    assert float(cross_correlation_penalty(torch.ones(64, 2), q[:64])) == 0.0  # a constant column: uncorrelated
    rows = torch.zeros(4096, dtype=torch.bool)
    rows[:2048] = True
    mixed = torch.where(rows.unsqueeze(-1), q[:, :1], torch.randn(4096, 1, generator=g))
    assert float(cross_correlation_penalty(q[:, :1], mixed, weight=rows)) == pytest.approx(1.0, abs=0.01)
    # inside L_FRF: only with the knob on, and the term's gradient reaches both encoders
    cfg = HRLFCfg(**TINY, frf_decorrelation=1.0)
    frf = FineGrainedFactorization(cfg)
    z = {m: torch.randn(16, cfg.d_model, generator=g) for m in MODALITIES}
    q_codes, u_codes = frf(z)
    out = frf.loss(z, q_codes, u_codes, cfg=cfg)
    assert float(out["frf_decorrelation"].detach()) > 0
    out["frf_decorrelation"].backward()
    for encoders in (frf.sentiment_encoders, frf.modality_encoders):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoders["language"].parameters())
    assert "frf_decorrelation" not in frf.loss(z, q_codes, u_codes, cfg=HRLFCfg(**TINY))


def test_task_free_u_penalises_a_modality_code_that_carries_the_label_and_only_that():
    from hrlf.models.hrlf import FineGrainedFactorization

    cfg = HRLFCfg(**TINY, frf_task_free_u=1.0)
    frf = FineGrainedFactorization(cfg)
    g = torch.Generator().manual_seed(0)
    n = 2048
    z = {m: torch.randn(n, cfg.d_model, generator=g) for m in MODALITIES}
    q, _ = frf(z)
    label = torch.randn(n, generator=g)
    free = {m: torch.randn(n, cfg.qu, generator=g) for m in MODALITIES}
    assert float(frf.loss(z, q, free, cfg=cfg, label=label)["frf_task_free_u"]) < 0.005
    language = MODALITIES[0]
    leaky = dict(free)
    leaky[language] = torch.cat([label.unsqueeze(-1), free[language][:, 1:]], dim=-1)  # one dimension = label
    got = float(frf.loss(z, q, leaky, cfg=cfg, label=label)["frf_task_free_u"])
    assert got == pytest.approx(1 / cfg.qu / len(MODALITIES), rel=0.05)  # 1 of qu dims, 1 of 3 modalities
    emotions = (torch.rand(n, 4, generator=g) < 0.3).long()  # (B, K) labels: one column per emotion
    assert float(frf.loss(z, q, free, cfg=cfg, label=emotions)["frf_task_free_u"]) < 0.005
    with pytest.raises(ValueError, match="labels"):
        frf.loss(z, q, free, cfg=cfg)


def test_invariance_is_zero_for_equal_sentiment_codes_and_counts_only_rows_with_both_modalities():
    from hrlf.models.hrlf import FineGrainedFactorization

    cfg = HRLFCfg(**TINY, frf_invariance=1.0)
    frf = FineGrainedFactorization(cfg)
    g = torch.Generator().manual_seed(0)
    z = {m: torch.randn(6, cfg.d_model, generator=g) for m in MODALITIES}
    _, u = frf(z)
    shared = torch.randn(6, cfg.qu, generator=g)
    same = {m: shared for m in MODALITIES}
    assert float(frf.loss(z, same, u, cfg=cfg)["frf_invariance"]) == 0.0
    language, audio, vision = MODALITIES
    apart = {language: shared, audio: shared + 1.0, vision: shared}  # audio 1 away in every dimension
    # pairs (l, a), (l, v), (a, v): gaps 1, 0, 1 -> mean 2/3
    assert float(frf.loss(z, apart, u, cfg=cfg)["frf_invariance"]) == pytest.approx(2 / 3)
    present = {m: torch.ones(6, dtype=torch.bool) for m in MODALITIES}
    present[audio] = torch.zeros(6, dtype=torch.bool)  # audio absent everywhere: only (l, v) counts
    masked = frf.loss(z, apart, u, cfg=dataclasses.replace(cfg, absent_frf="mask"), present=present)
    assert float(masked["frf_invariance"]) == 0.0


def test_student_from_teacher_copies_the_weights_but_not_the_optimizer_state():
    torch.manual_seed(0)
    teacher, student = stages(HRLFCfg(**TINY, student_init="teacher"), dims=DIMS, task=REGRESSION, missing=True)
    # the teacher moves first (as its stage would train it), so a copy cannot be the two initialisations agreeing
    teacher.objective.setup(teacher.model)
    t_opt = teacher.objective.optimizers(teacher.model, TrainCfg(lr=1e-2))["main"]
    for seed in range(3):
        batch = make_batch(seed=seed)
        t_opt.zero_grad()
        teacher.objective(teacher.model(batch), batch)["loss"].backward()
        t_opt.step()
    assert any(
        not torch.equal(a, b) for a, b in zip(teacher.model.parameters(), student.model.parameters(), strict=True)
    )
    student.objective.setup(student.model)
    t_state, s_state = teacher.model.state_dict(), student.model.state_dict()
    assert all(torch.equal(t_state[k], s_state[k]) for k in t_state)
    assert all(
        a.data_ptr() != b.data_ptr()
        for a, b in zip(teacher.model.parameters(), student.model.parameters(), strict=True)
    )
    opts = student.objective.optimizers(student.model, TrainCfg(lr=1e-2))
    assert all(not opt.state for opt in opts.values())  # Adam moments start at zero
    random_init = stages(HRLFCfg(**TINY), dims=DIMS, task=REGRESSION, missing=True)[1]
    random_init.objective.setup(random_init.model)
    assert any(not torch.equal(t_state[k], random_init.model.state_dict()[k]) for k in t_state)


def test_r1_and_label_smoothing_raise_the_discriminator_loss_of_a_confident_discriminator():
    from hrlf.models.hrlf import HierarchicalAdversarial

    torch.manual_seed(0)
    t = [[torch.randn(8, 48), torch.randn(8, 48)], [torch.randn(8, 32), torch.randn(8, 32)], [torch.randn(8, 16)]]
    s = [[x + 3.0 for x in members] for members in t]
    plain = HierarchicalAdversarial(HRLFCfg(**TINY))
    losses = {}
    for name, extra in {"plain": {}, "r1": {"disc_r1": 10.0}, "smooth": {"disc_label_smoothing": 0.2}}.items():
        hal = HierarchicalAdversarial(HRLFCfg(**TINY, **extra))
        hal.load_state_dict(plain.state_dict())
        losses[name], accuracy = hal.discriminator_loss(t, s)
    assert losses["r1"] > losses["plain"] and losses["smooth"] != losses["plain"]
    assert set(accuracy) == {f"disc_acc_{side}.{e}" for side in ("teacher", "student") for e in ("E1", "E2", "E3")}


def test_teacher_batch_norm_keeps_the_student_gradient():
    from hrlf.models.hrlf import normalize_pair

    t, s = torch.randn(16, 4) * 5 + 2, torch.randn(16, 4, requires_grad=True)
    nt, ns = normalize_pair(t, s, mode="teacher_batch")
    assert torch.allclose(nt.mean(0), torch.zeros(4), atol=1e-5)
    assert float(nt.pow(2).mean()) == pytest.approx(1.0, rel=1e-4)
    dead = torch.cat([t, torch.zeros(16, 1)], dim=1)  # a feature the teacher never uses: nothing blows up
    _, ns_dead = normalize_pair(dead, torch.ones(16, 5), mode="teacher_batch")
    assert float(ns_dead.abs().max()) < 10
    ns.sum().backward()
    assert s.grad is not None and torch.all(s.grad > 0)


def test_diagnostics_are_recorded_per_epoch_by_both_stages():
    torch.manual_seed(0)
    teacher, student = stages(HRLFCfg(**TINY), dims=DIMS, task=REGRESSION, missing=True)
    teacher.objective.setup(teacher.model)
    teacher.objective.start_epoch(0)
    batch = make_batch(batch_size=8)
    teacher.objective(teacher.model(batch), batch)
    found = teacher.objective.end_epoch()
    assert {f"std.{c}.{m}" for c in "ZQU" for m in MODALITIES} | {"grad_share.frf"} <= set(found)
    assert found["grad_share.frf"] > 0
    student.objective.setup(student.model)
    opts = student.objective.optimizers(student.model, TrainCfg(lr=1e-2))
    student.objective.start_epoch(0)
    for seed in range(2):
        clean = make_batch(batch_size=8, seed=seed)
        student.objective.training_step(model=student.model, batch=corrupted(clean), clean=clean, optimizers=opts)
    found = student.objective.end_epoch()
    for e in ("E1", "E2", "E3"):
        assert math.isfinite(found[f"mi.{e}"]) and found[f"mi.{e}"] <= 1e-6  # the JSD bound is at most 0
        assert 0.0 <= found[f"disc_acc_teacher.{e}"] <= 1.0
    assert {f"grad_share.{t}" for t in ("frf", "hmi", "hal", "kd")} <= set(found)
    assert {f"std.Q.{m}" for m in MODALITIES} <= set(found)
    assert student.objective.end_epoch() == {}  # a new epoch starts empty


RECIPE = Path(__file__).parents[2] / "configs" / "hrlf" / "mosi.yaml"
#: across-sample std below which a code counts as collapsed: after the tiny overfit below, the recipe's teacher Q
#: has 0.25-0.32 per modality, the inert recipe's (configs/hrlf/mosi_inert.yaml) 0.01-0.03
COLLAPSED = 0.1


def _overfit_teacher(recipe_path: Path):
    """The teacher of a recipe at the tiny size, 300 steps on one batch; returns (stages, batch, first, last)."""
    from hrlf.config import load_config

    recipe = load_config(recipe_path).model
    cfg = dataclasses.replace(recipe, **TINY, dropout=0.0, embed_dropout=0.0, head_dropout=0.0)
    torch.manual_seed(0)
    teacher, student = stages(cfg, dims=DIMS, task=REGRESSION, missing=True)
    data = make_batch(batch_size=32, seed=7)
    teacher.objective.setup(teacher.model)
    opt = teacher.objective.optimizers(teacher.model, TrainCfg(lr=3e-3))["main"]
    first = None
    for _ in range(300):
        opt.zero_grad()
        losses = teacher.objective(teacher.model(data), data)
        losses["loss"].backward()
        opt.step()
        first = first or {k: float(v.detach()) for k, v in losses.items()}
    return (teacher, student), data, first, {k: float(v.detach()) for k, v in losses.items()}


@pytest.mark.slow
def test_the_inert_recipe_collapses_q_under_the_same_overfit():
    """The collapse bar separates: the pre-issue-10 recipe's teacher Q falls below it in every modality."""
    (teacher, _), data, _, _ = _overfit_teacher(RECIPE.with_name("mosi_inert.yaml"))
    out = teacher.model(data)
    for m in MODALITIES:
        assert float(out.q[m].std(dim=0).mean()) < COLLAPSED, m


@pytest.mark.slow
def test_the_recipe_trains_every_term_on_a_tiny_overfit_without_collapse():
    """The shipped recipe's mechanisms at a tiny size: every term finite, the trained ones fall, no code collapses."""
    (teacher, student), data, first, last_teacher = _overfit_teacher(RECIPE)
    assert last_teacher["task"] < 0.1 * first["task"]
    out = teacher.model(data)
    for c in "QU":
        for m in MODALITIES:
            assert float(out.codes()[c][m].std(dim=0).mean()) > COLLAPSED, f"teacher {c}.{m} collapsed"
    teacher.model.eval()
    student.objective.setup(student.model)
    opts = student.objective.optimizers(student.model, TrainCfg(lr=3e-3))
    batch = corrupted(data, seed=3)  # a fixed corruption pattern: the overfit target is learnable
    history = [
        student.objective.training_step(model=student.model, batch=batch, clean=data, optimizers=opts)
        for _ in range(300)
    ]
    first, last = history[0], {k: sum(h[k] for h in history[-10:]) / 10 for k in history[0]}
    assert all(math.isfinite(v) for h in history for v in h.values())
    assert last["task"] < 0.5 * first["task"]
    assert last["kd"] < first["kd"]
    assert last["hmi"] < first["hmi"]  # the MI bound between teacher and student scales rises
    assert last["hmi"] < 0.9 * 5 * 2 * math.log(2)  # clearly above no information at every scale on average
    out = student.model(batch)
    present = {m: batch.present(m).any(dim=1) for m in MODALITIES}
    for c in "QU":
        for m in MODALITIES:
            rows = out.codes()[c][m][present[m]]
            assert float(rows.std(dim=0).mean()) > COLLAPSED, f"student {c}.{m} collapsed"


@pytest.mark.parametrize("dataset", ["mosei", "iemocap"])
def test_every_dataset_recipe_has_the_mosi_recipe_s_mechanism_knobs(dataset):
    """The live recipe is one recipe: MOSEI and IEMOCAP differ from MOSI only in the paper's per-dataset settings.

    The recipes before issue 10 (``*_inert.yaml``) are what they were: FRF out of the encoders, HAL at 0.01.
    """
    from hrlf.config import load_config

    mosi = load_config(RECIPE).model
    live = load_config(RECIPE.with_name(f"{dataset}.yaml")).model
    # the head count is the paper's per dataset; IEMOCAP's discriminator rate and its spread floor (off: none of
    # its codes collapses without it, and validation was 0.18 lower with it) were chosen on its validation split
    same = dataclasses.replace(live, num_heads=mosi.num_heads, disc_lr=mosi.disc_lr, spread_floor=mosi.spread_floor)
    assert same == mosi
    assert live.disc_lr == (2.5e-4 if dataset == "iemocap" else mosi.disc_lr)
    assert live.spread_floor == (0.0 if dataset == "iemocap" else mosi.spread_floor) and mosi.spread_floor == 0.5
    assert live.lambda_frf == live.lambda_hmi == live.lambda_hal == live.lambda_kd == 1.0
    inert = load_config(RECIPE.with_name(f"{dataset}_inert.yaml")).model
    assert (inert.lambda_hal, inert.frf_encoder_grad, inert.student_init) == (0.01, False, "random")
    assert inert.num_heads == live.num_heads


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.disc_steps=0", "key 'model.disc_steps': expected an integer >= 1, found 0"),
        ("model.disc_label_smoothing=0.7", "key 'model.disc_label_smoothing': expected a number in [0, 0.5)"),
        ("model.frf_variance=-1", "key 'model.frf_variance': expected a number >= 0, found -1.0"),
        ("model.spread_floor=-0.5", "key 'model.spread_floor': expected a number >= 0, found -0.5"),
        ("model.absent_frf=drop", "key 'model.absent_frf': expected all | mask | teacher_target, found 'drop'"),
    ],
)
def test_recipe_overrides_are_checked_by_the_config_s_own_rules(override, message):
    from hrlf.config import ConfigError, load_config

    with pytest.raises(ConfigError) as info:
        load_config(RECIPE, [override])
    assert message in str(info.value)


def test_teacher_train_mode_features_carry_dropout_and_leave_the_teacher_in_eval_mode():
    torch.manual_seed(0)
    teacher, student = stages(
        HRLFCfg(**TINY, aux_features="teacher_train_mode"), dims=DIMS, task=REGRESSION, missing=True
    )
    obj = student.objective
    obj.setup(student.model)
    clean = make_batch(batch_size=8)
    plain = obj.teacher_output(clean)
    features = obj.teacher_features(clean, plain)
    assert not teacher.model.training and all(not p.requires_grad for p in teacher.model.parameters())
    assert isinstance(features, HRLFOutput) and isinstance(plain, HRLFOutput)
    assert features.features is not None and plain.features is not None
    assert features.features.i1.requires_grad is False
    assert not torch.allclose(features.features.i1, plain.features.i1)  # dropout noise, as the student's
    literal = stages(HRLFCfg(**TINY), dims=DIMS, task=REGRESSION, missing=True)[1].objective
    assert literal.teacher_features(clean, plain) is plain


@pytest.mark.parametrize("downstream", [True, False])
def test_u_downstream_grad_false_leaves_e_m_to_l_frf_alone(downstream):
    teacher, losses = teacher_losses(u_downstream_grad=downstream)
    e_m = teacher.model.factorization.modality_encoders
    losses["task"].backward(retain_graph=True)
    from_task = [p.grad for p in e_m.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in from_task) == downstream
    e_s = teacher.model.factorization.sentiment_encoders
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in e_s.parameters())  # Q still carries the task
    teacher.model.zero_grad(set_to_none=True)
    losses["frf"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in e_m.parameters())  # L_FRF still shapes U


def test_label_adversary_reverses_and_scales_the_gradient_into_u_on_present_rows_only():
    from hrlf.models.hrlf import LabelAdversary

    torch.manual_seed(0)
    cfg = HRLFCfg(**TINY, frf_u_adversary=2.5)
    adv = LabelAdversary(cfg, task=REGRESSION)
    _, _, u = _codes()
    u = {m: v.requires_grad_() for m, v in u.items()}
    label = torch.randn(6)
    present = {m: torch.ones(6, dtype=torch.bool) for m in MODALITIES}
    present["audio"] = torch.tensor([True, True, False, False, True, True])
    adv(u, label, present).backward()
    reversed_grads = {m: u[m].grad.clone() for m in MODALITIES}
    assert torch.all(reversed_grads["audio"][2:4] == 0)  # absent rows are not read
    # the same loss without the reversal: U's gradient is exactly -1/2.5 of the reversed one, the heads' the same
    plain = {m: v.detach().clone().requires_grad_() for m, v in u.items()}
    heads_reversed = [p.grad.clone() for p in adv.parameters()]
    adv.zero_grad()
    losses = []
    for m in MODALITIES:
        rows = present[m]
        losses.append(torch.nn.functional.mse_loss(adv.heads[m](plain[m][rows]).squeeze(-1), label[rows]))
    torch.stack(losses).mean().backward()
    for m in MODALITIES:
        assert torch.allclose(reversed_grads[m], -2.5 * plain[m].grad, atol=1e-7), m
    assert all(torch.allclose(a, p.grad) for a, p in zip(heads_reversed, adv.parameters(), strict=True))
    nothing = {m: torch.zeros(6, dtype=torch.bool) for m in MODALITIES}
    assert float(adv(u, label, nothing)) == 0.0  # no modality in the input: no loss


def test_label_adversary_is_built_only_when_asked_and_trains_with_each_stage():
    teacher, student = stages(HRLFCfg(**TINY), dims=DIMS, task=REGRESSION, missing=True)
    assert teacher.objective.adversary is None and student.objective.adversary is None
    _, losses = teacher_losses()
    assert "u_adversary" not in losses
    teacher, losses = teacher_losses(frf_u_adversary=1.0)
    assert torch.allclose(losses["loss"], losses["task"] + losses["frf"] + losses["u_adversary"])
    assert any(k.startswith("adversary.") for k in teacher.objective.state_dict())  # saved with the stage's state
    opt_params = {
        id(p) for g in teacher.objective.optimizers(teacher.model, TrainCfg())["main"].param_groups for p in g["params"]
    }
    assert all(id(p) in opt_params for p in teacher.objective.adversary.parameters())
    _, student, opts = student_stage(frf_u_adversary=1.0)
    main = {id(p) for g in opts["main"].param_groups for p in g["params"]}
    assert all(id(p) in main for p in student.objective.adversary.parameters())
    clean = make_batch()
    terms = student.objective.losses(
        student.model(corrupted(clean)), clean, teacher=student.objective.teacher_output(clean)
    )
    assert "u_adversary" in terms and math.isfinite(float(terms["u_adversary"].detach()))
    assert (
        stages(HRLFCfg(**TINY, frf=False, frf_u_adversary=1.0), dims=DIMS, task=REGRESSION, missing=True)[
            0
        ].objective.adversary
        is None
    )


def test_label_adversary_settings_are_checked():
    with pytest.raises(ValueError, match="frf_u_adversary: expected a number >= 0"):
        HRLFCfg(frf_u_adversary=-1.0)
    with pytest.raises(ValueError, match="frf_u_adversary_hidden: expected an integer >= 0"):
        HRLFCfg(frf_u_adversary_hidden=-2)
