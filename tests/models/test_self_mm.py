"""Self-MM: the ULGM formulas on hand-computed numbers, its per-sample state and its resume, optimizer groups, the
one default of the weight floor (golden losses, overfit and resume: test_training_contract.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from helpers import DIMS, EMOTIONS, REGRESSION, make_batch
from hrlf.config import TrainCfg, load_config
from hrlf.models.self_mm import (
    SelfMM,
    SelfMMCfg,
    SelfMMObjective,
    SelfMMOutput,
    class_centres,
    front_aligned,
    generate_labels,
    momentum_update,
    relative_distance,
)
from hrlf.types import Batch

TINY = {"d_model": 16, "num_heads": 2, "num_layers": 1}
CONFIGS = Path(__file__).parents[2] / "configs" / "self_mm"


def system(task=REGRESSION, **overrides):
    torch.manual_seed(0)
    cfg = SelfMMCfg(**{**TINY, **overrides})
    model = SelfMM(cfg, dims=DIMS, task=task)
    obj = SelfMMObjective(cfg, task=task)
    obj.setup(model)
    return model, obj, obj.optimizers(model, TrainCfg(lr=1e-2))


# ----------------------------------------------------------------------------------------------- formulas
def test_relative_distance_by_hand():
    features = torch.tensor([[0.0, 0.0], [0.5, 0.0]])
    positive, negative = torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 1.0]])
    delta = relative_distance(features, positive, negative)
    # sample 0: d_pos = 5, d_neg = 1 -> (1 - 5) / 5; sample 1: d_pos = sqrt(6.25 + 16), d_neg = sqrt(0.25 + 1)
    d_pos, d_neg = (2.5**2 + 4**2) ** 0.5, (0.5**2 + 1) ** 0.5
    assert delta.shape == (2, 1)
    assert torch.allclose(delta, torch.tensor([[-0.8], [(d_neg - d_pos) / d_pos]]))


def test_generated_label_by_hand_and_clipped_to_h():
    # alpha = 0.25 / 0.5 = 0.5: 0.5 * 0.5 * 2 + 0.5 * (2 + 0.25 - 0.5) = 0.5 + 0.875
    got = generate_labels(torch.tensor([2.0]), torch.tensor([0.5]), torch.tensor([0.25]), bound=3.0)
    assert torch.allclose(got, torch.tensor([1.375]))
    # alpha = 10: 12.5 + 1.7 = 14.2 -> clipped to H = 3; the mirrored case to -3
    y, dm, ds = torch.tensor([2.5, -2.5]), torch.tensor([0.1, 0.1]), torch.tensor([1.0, 1.0])
    assert torch.equal(generate_labels(y, dm, ds, bound=3.0), torch.tensor([3.0, -3.0]))
    # equal relative distances give back y_m exactly
    assert torch.allclose(generate_labels(y, ds, ds, bound=3.0), y)


def test_momentum_update_by_hand():
    previous, generated = torch.tensor([[1.0], [1.0]]), torch.tensor([[3.0], [3.0]])
    got = momentum_update(previous, generated, torch.tensor([2, 3]))
    # n = 2: 1/3 * 1 + 2/3 * 3; n = 3: 1/2 * 1 + 1/2 * 3
    assert torch.allclose(got, torch.tensor([[1 / 3 + 2.0], [2.0]]))


def test_class_centres_and_the_zero_label_convention():
    features = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
    labels = torch.tensor([[1.0], [0.0], [-1.0], [-2.0]])
    pos, neg = class_centres(features, labels, exclude_zero=False)
    assert torch.equal(pos, torch.tensor([[2.0, 0.0]])) and torch.equal(neg, torch.tensor([[0.0, 3.0]]))
    pos, _ = class_centres(features, labels, exclude_zero=True)
    assert torch.equal(pos, torch.tensor([[1.0, 0.0]]))
    pos, _ = class_centres(features[2:], labels[2:], exclude_zero=False)
    assert torch.isnan(pos).all()  # no positive sample: undefined, labels depending on it are left alone


# ----------------------------------------------------------------------------------------------- ULGM state
def fake_step(
    features: dict[str, list[list[float]]], labels: list[float], index: list[int]
) -> tuple[SelfMMOutput, Batch]:
    b = len(labels)
    output = SelfMMOutput(
        pred=torch.zeros(b),
        features={k: torch.tensor(v) for k, v in features.items()},
        unimodal={m: torch.zeros(b) for m in ("language", "audio", "vision")},
    )
    batch = make_batch(batch_size=b)
    return output, dataclasses.replace(batch, label=torch.tensor(labels), index=torch.tensor(index))


def two_d_objective(**kwargs) -> SelfMMObjective:
    """Two-dimensional features, no weight floor (the hand-computed numbers below use the paper's weight)."""
    widths = {"fusion_dim": 2, "language_dim": 2, "audio_dim": 2, "vision_dim": 2, "min_unimodal_weight": 0.0}
    return SelfMMObjective(SelfMMCfg(**{**widths, **kwargs}), task=REGRESSION)


VISIT1 = {
    "fusion": [[1.0, 0.0], [-1.0, 0.0]],
    "language": [[1.0, 0.0], [-1.0, 0.0]],
    "audio": [[1.0, 0.0], [-1.0, 0.0]],
    "vision": [[1.0, 0.0], [-1.0, 0.0]],
}
VISIT2 = {
    "fusion": [[0.5, 0.0], [-0.5, 0.0]],
    "language": [[0.0, 0.0], [-1.0, 0.0]],
    "audio": [[1.0, 0.0], [-1.0, 0.0]],
    "vision": [[0.25, 0.0], [-1.0, 0.0]],
}


def test_labels_start_at_y_m_and_follow_the_paper_from_the_second_visit():
    obj = two_d_objective()
    obj.update(*fake_step(VISIT1, [1.0, -1.0], [3, 0]))  # epoch 1: store only
    assert obj.labels.shape == (4, 4, 1) and obj.seen.tolist() == [1, 0, 0, 1]
    assert torch.equal(obj.labels[3, :, 0], torch.ones(4)) and torch.equal(obj.labels[0, :, 0], -torch.ones(4))
    obj.update(*fake_step(VISIT2, [1.0, -1.0], [3, 0]))  # epoch 2: centres (+-1, 0) from visit 1
    # sample 3 (y_m = 1): delta_m = (1.5 - 0.5) / 0.5 = 2
    #   language at the origin: delta_s = 0 -> y^ = 0.5 * (1 - 2) = -0.5 -> 1/3 * 1 + 2/3 * -0.5 = 0
    #   audio on the positive centre: delta_s = 2 / eps -> clipped to 3 -> 1/3 + 2/3 * 3
    #   vision at 0.25: delta_s = (1.25 - 0.75) / 0.75 = 2/3, alpha = 1/3 -> y^ = 1/6 + 0.5 * (1 + 2/3 - 2) = 0
    # sample 0 (y_m = -1): delta_m = (0.5 - 1.5) / 1.5 = -2/3
    #   language on the negative centre: delta_s = (0 - 2) / 2 = -1, alpha = 1.5
    #   -> y^ = -0.75 + 0.5 * (-1 - 1 + 2/3) = -17/12 -> 1/3 * -1 + 2/3 * -17/12
    expected = {
        3: [1.0, 0.0, 1 / 3 + 2.0, 1 / 3],
        0: [-1.0, -1 / 3 - 17 / 18, None, None],
    }
    for row, values in expected.items():
        for head, value in enumerate(values):
            if value is not None:
                assert float(obj.labels[row, head, 0]) == pytest.approx(value, abs=1e-5), (row, head)
    assert obj.seen.tolist() == [2, 0, 0, 2]
    assert torch.equal(obj.features_language[3], torch.tensor(VISIT2["language"][0]))  # features stored after


def test_loss_weights_follow_the_generated_labels():
    obj = two_d_objective()
    obj.update(*fake_step(VISIT1, [1.0, -1.0], [3, 0]))
    obj.update(*fake_step(VISIT2, [1.0, -1.0], [3, 0]))
    output, batch = fake_step(VISIT2, [1.0, -1.0], [3, 0])
    losses = obj(output, batch)  # predictions are 0 everywhere
    # language: sample 3 label 0 -> weight tanh(1) * |0 - 0|; sample 0 label l -> tanh(|l + 1|) * |l|
    label0 = -1 / 3 - 17 / 18
    expected = (torch.tanh(torch.tensor(1.0)) * 0 + torch.tanh(torch.tensor(abs(label0 + 1))) * abs(label0)) / 2
    assert float(losses["unimodal_language"]) == pytest.approx(float(expected), abs=1e-6)
    assert float(losses["task"]) == pytest.approx(1.0)  # |0 - y_m| = 1 for both samples
    assert set(losses) == {"loss", "task", "unimodal_language", "unimodal_audio", "unimodal_vision"}


def test_the_weight_floor_has_one_default_the_config_s():
    """The floor used to have two defaults (1e-3 in the config, 0 in the objective's constructor); only the
    config's is left, and it is the one ``hrlf train`` ran with all along (the recipes set 0)."""
    model, obj, _ = system()
    assert obj.min_unimodal_weight == SelfMMCfg().min_unimodal_weight == 1e-3
    for recipe in ("mosi", "mosei", "iemocap"):
        assert load_config(CONFIGS / f"{recipe}.yaml").model.min_unimodal_weight == 0.0
    batch = make_batch()
    losses = obj(model(batch), batch)  # epoch 1: the labels equal y_m, so every weight is the floor
    assert all(float(losses[f"unimodal_{m}"].detach()) > 0.0 for m in ("language", "audio", "vision"))
    with pytest.raises(ValueError, match="min_unimodal_weight"):
        SelfMMCfg(min_unimodal_weight=1.5)


def test_first_epoch_weight_is_zero_without_the_floor():
    model, obj, _ = system(min_unimodal_weight=0.0)
    batch = make_batch()
    losses = obj(model(batch), batch)
    assert all(float(losses[f"unimodal_{m}"].detach()) == 0.0 for m in ("language", "audio", "vision"))
    assert torch.equal(losses["loss"], losses["task"])


def test_state_round_trips_through_a_fresh_objective_for_resume():
    obj = two_d_objective()
    obj.update(*fake_step(VISIT1, [1.0, -1.0], [3, 0]))
    obj.update(*fake_step(VISIT2, [1.0, -1.0], [3, 0]))
    fresh = two_d_objective()
    fresh.load_state_dict(obj.state_dict(), strict=True)
    assert fresh.seen.tolist() == obj.seen.tolist()
    for o in (obj, fresh):  # the third visit (epoch 3) continues identically
        o.update(*fake_step(VISIT1, [1.0, -1.0], [3, 0]))
    for name, value in obj.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[name]), name
    assert obj.seen.tolist() == [3, 0, 0, 3]


def test_epoch_is_counted_per_sample_across_batches():
    model, obj, opts = system()
    full = make_batch(batch_size=4)

    def part(rows):
        return dataclasses.replace(
            full,
            features={m: x[rows] for m, x in full.features.items()},
            valid={m: x[rows] for m, x in full.valid.items()},
            missing={m: x[rows] for m, x in full.missing.items()},
            label=full.label[rows],
            index=full.index[rows],
        )

    for _epoch in range(3):  # two batches per epoch, in alternating order
        for rows in ([0, 1], [2, 3]) if _epoch % 2 == 0 else ([2, 3], [0, 1]):
            obj.training_step(model=model, batch=part(rows), clean=part(rows), optimizers=opts)
    assert obj.seen.tolist() == [3, 3, 3, 3]
    assert not torch.equal(obj.labels[:, 1:], obj.labels[:, :1].expand(-1, 3, -1))  # labels moved off y_m


def test_emotions_use_signed_targets_per_emotion():
    model, obj, opts = system(task=EMOTIONS)
    batch = make_batch(task=EMOTIONS)
    for _ in range(2):
        logged = obj.training_step(model=model, batch=batch, clean=batch, optimizers=opts)
    assert obj.labels.shape == (3, 4, 4)
    assert torch.equal(obj.labels[:, 0], batch.label.float() * 2 - 1)
    assert obj.labels.abs().max() <= 1.0  # H = 1 for signed emotion targets
    assert all(torch.isfinite(torch.tensor(v)) for v in logged.values())


def test_optimizer_groups_by_name():
    model, obj, _ = system(audio_lr=5e-3, audio_weight_decay=0.0, vision_lr=1e-4, vision_weight_decay=1e-3)
    opt = obj.optimizers(model, TrainCfg(lr=2e-3, weight_decay=0.01))["main"]
    by_id = {id(p): n for n, p in model.named_parameters()}
    seen = {}
    for group in opt.param_groups:
        names = {by_id[id(p)] for p in group["params"]}
        prefixes = {n.split(".")[0] for n in names}
        seen[tuple(sorted(prefixes))] = (group["lr"], group["weight_decay"])
    assert seen[("audio_encoder",)] == (5e-3, 0.0)
    assert seen[("vision_encoder",)] == (1e-4, 1e-3)
    assert seen[("heads", "text_encoder")] == (2e-3, 0.01)


def test_front_alignment_makes_pre_and_post_padding_equal():
    x = torch.randn(3, 6, 2)
    lengths = torch.tensor([2, 6, 4])
    steps = torch.arange(6)
    post = steps < lengths[:, None]  # (B, T) real frames first
    pre = steps >= 6 - lengths[:, None]  # (B, T) real frames last
    x_post = x * post.unsqueeze(-1)
    x_pre = torch.zeros_like(x)
    for b, n in enumerate(lengths.tolist()):
        x_pre[b, 6 - n :] = x[b, :n]
    a_post, l_post = front_aligned(x_post, post)
    a_pre, l_pre = front_aligned(x_pre, pre)
    assert torch.equal(a_post, x_post) and torch.equal(a_pre, x_post)
    assert l_post.tolist() == l_pre.tolist() == [2, 6, 4]


def test_model_exposes_every_head_and_feature():
    model, _, _ = system()
    out = model(make_batch())
    assert isinstance(out, SelfMMOutput)
    for name, width in SelfMMCfg().feature_dims().items():
        assert out.features[name].shape == (3, width)
    assert set(out.unimodal) == {"language", "audio", "vision"}
    assert all(pred.shape == out.pred.shape for pred in out.unimodal.values())


# ----------------------------------------------------------------------------------------------- resume
@pytest.mark.slow
def test_resume_restores_the_label_state_and_matches_continuous_training(tiny_mosi, tmp_path):
    from hrlf.data.datamodule import DataModule
    from hrlf.data.features import load_features
    from hrlf.engine.trainer import fit, seed_everything_for_build

    data = DataModule(load_features(tiny_mosi))
    cfg = SelfMMCfg(**TINY)

    def fresh():
        seed_everything_for_build(1, "self_mm")
        return SelfMM(cfg, dims=data.dims, task=data.task), SelfMMObjective(cfg, task=data.task)

    train = TrainCfg(epochs=3, batch_size=16, progress=False, patience=0)
    model, full = fresh()
    fit(model=model, objective=full, data=data, cfg=train, stage_dir=tmp_path / "full")
    model, part = fresh()
    fit(model=model, objective=part, data=data, cfg=dataclasses.replace(train, epochs=2), stage_dir=tmp_path / "part")
    model, resumed = fresh()
    fit(model=model, objective=resumed, data=data, cfg=train, stage_dir=tmp_path / "part", resume=True)
    assert resumed.seen.tolist() == [3] * len(data.datasets["train"])
    for name, value in full.state_dict().items():
        assert torch.allclose(value.float(), resumed.state_dict()[name].float(), atol=1e-6), name
    assert (tmp_path / "full" / "log.csv").read_text() == (tmp_path / "part" / "log.csv").read_text()
