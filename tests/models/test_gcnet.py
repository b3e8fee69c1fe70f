"""GCNet: CPM view masks, conversation graphs from clip ids, reconstruction loss on missing views only (golden
losses, overfit and resume: test_training_contract.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from helpers import DIMS, REGRESSION, make_batch
from hrlf import create_model
from hrlf.config import TrainCfg
from hrlf.missing.protocol import apply_missing
from hrlf.models.gcnet import (
    Conversations,
    CPMViewMissing,
    GCNet,
    GCNetCfg,
    GCNetObjective,
    GCNetOutput,
    cpm_keep_probability,
    missing_view_reconstruction,
    utterance_features,
)
from hrlf.registry import get_model_spec
from hrlf.types import MODALITIES

TINY = {"d_model": 16, "num_layers": 1}


def system(task=REGRESSION, lr=1e-2, **overrides):
    torch.manual_seed(0)
    cfg = GCNetCfg(**{**TINY, **overrides})
    model = GCNet(cfg, dims=DIMS, task=task)
    obj = GCNetObjective(cfg, task=task)
    obj.setup(model)
    return model, obj, obj.optimizers(model, TrainCfg(lr=lr))


def drop(batch, absent):
    """``absent``: {modality: [rows]} removed entirely."""
    masks = {m: torch.zeros_like(batch.valid[m]) for m in MODALITIES}
    for m, rows in absent.items():
        masks[m][rows] = True
    return apply_missing(batch, masks)


def with_ids(batch, ids):
    return dataclasses.replace(batch, ids=list(ids))


# ------------------------------------------------------------------------------------------------ protocol


def test_cpm_keep_probability_gives_the_rate_in_expectation():
    assert cpm_keep_probability(0.0, 3) == 1.0
    assert cpm_keep_probability(0.5, 3) == pytest.approx(0.25)  # (1 + 2 * 0.25) / 3 = 1/2 kept
    assert cpm_keep_probability(2 / 3, 3) == pytest.approx(0.0)
    assert cpm_keep_probability(0.7, 3) == 0.0  # saturates: exactly one view kept


@pytest.mark.parametrize("rate", [0.0, 0.3, 0.5, 0.7])
def test_cpm_masks_keep_a_view_and_hit_the_rate(rate):
    batch = make_batch(batch_size=3000)
    before = {m: x.clone() for m, x in batch.features.items()}
    protocol = CPMViewMissing(rate=rate)
    out = protocol.apply(batch, generator=torch.Generator().manual_seed(0))
    absent = torch.stack([out.missing[m].all(dim=1) for m in MODALITIES], dim=1)  # (B, 3)
    partial = torch.stack([out.missing[m].any(dim=1) for m in MODALITIES], dim=1) & ~absent
    assert not partial.any()  # whole views only
    assert not absent.all(dim=1).any()  # at least one view kept
    assert absent.float().mean().item() == pytest.approx(min(rate, 2 / 3), abs=0.02)
    assert all(torch.equal(batch.features[m], before[m]) for m in MODALITIES)
    again = protocol.apply(batch, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(out.missing[m], again.missing[m]) for m in MODALITIES)
    if rate > 0:
        other = protocol.apply(batch, generator=torch.Generator().manual_seed(1))
        assert any(not torch.equal(out.missing[m], other.missing[m]) for m in MODALITIES)
    assert protocol.describe()["params"] == {"rate": rate}
    if rate >= 2 / 3:
        assert (absent.sum(dim=1) == 2).all()


def test_cpm_rejects_impossible_rates():
    with pytest.raises(ValueError, match="rate"):
        CPMViewMissing(rate=1.0)
    with pytest.raises(ValueError, match="missing_rate: expected a rate"):
        GCNetCfg(missing_rate=1.0)
    with pytest.raises(ValueError, match="window_past"):
        GCNetCfg(window_past=-2)


# ---------------------------------------------------------------------------------------------- the graphs


def test_conversations_group_by_video_and_order_by_clip_number():
    ids = ["v1$_$3", "v2$_$1", "v1$_$1", "v1$_$10", "lonely", "a$_$b$_$2"]
    conv = Conversations.from_ids(ids, size=6, device=torch.device("cpu"))
    assert conv.group.tolist() == [0, 1, 0, 0, 2, 3]
    assert conv.position.tolist() == [1, 0, 0, 2, 0, 0]  # clip 10 after clip 3: numeric order
    assert conv.lengths.tolist() == [3, 1, 1, 1]
    x = torch.arange(6.0)[:, None]  # (B, 1)
    assert torch.equal(conv.unpad(conv.pad(x)), x)


def test_temporal_graph_windows_relations_and_self_loops():
    ids = [f"v$_${i}" for i in range(4)] + ["w$_$0"]
    conv = Conversations.from_ids(ids, size=5, device=torch.device("cpu"))
    adjacency = conv.temporal_adjacency(window_past=1, window_future=2)  # (3, 5, 5): [relation, target, source]
    past, now, future = adjacency.bool()
    eye = torch.eye(5, dtype=torch.bool)
    assert torch.equal(now, eye)
    # target i hears from source j = i - 1 (past) and j = i + 1, i + 2 (future); itself in every relation
    expected_past = eye.clone()
    expected_future = eye.clone()
    for i in range(4):
        if i >= 1:
            expected_past[i, i - 1] = True
        for j in (i + 1, i + 2):
            if j < 4:
                expected_future[i, j] = True
    assert torch.equal(past, expected_past)
    assert torch.equal(future, expected_future)
    assert not adjacency[:, 4, :4].any() and not adjacency[:, :4, 4].any()  # other video: no edge
    unbounded = conv.temporal_adjacency(window_past=-1, window_future=-1).bool()
    assert unbounded[0, 3, 0] and unbounded[2, 0, 3]


def test_context_comes_only_from_clips_of_the_same_video():
    model, _, _ = system()
    model.eval()
    batch = make_batch(batch_size=3)
    alone = model(with_ids(batch, ["a$_$1", "b$_$1", "c$_$1"])).pred
    same_video = model(with_ids(batch, ["a$_$1", "a$_$2", "c$_$1"])).pred
    assert not torch.allclose(alone[0], same_video[0])  # clip 0 now hears clip 1
    assert torch.allclose(alone[2], same_video[2], atol=1e-6)  # clip 2 is in another video


# ---------------------------------------------------------------------------------------------- the loss


def test_reconstruction_loss_counts_only_the_missing_views():
    clean = make_batch(batch_size=3)
    batch = drop(clean, {"audio": [0], "vision": [1], "language": [1]})
    targets, _ = utterance_features(clean)
    _, views = utterance_features(batch)
    recon = {m: torch.zeros_like(targets[m]) for m in MODALITIES}
    output = GCNetOutput(pred=torch.zeros(3), recon=dict(recon), views={m: views[m].float() for m in MODALITIES})
    expected = (
        targets["audio"][0].pow(2).mean() + targets["vision"][1].pow(2).mean() + targets["language"][1].pow(2).mean()
    ) / 3
    assert float(missing_view_reconstruction(output, batch, clean)) == pytest.approx(float(expected), rel=1e-6)
    # changing the reconstruction of present views changes nothing
    for m in MODALITIES:
        output.recon[m] = torch.where(views[m][:, None], torch.randn_like(recon[m]), recon[m])
    assert float(missing_view_reconstruction(output, batch, clean)) == pytest.approx(float(expected), rel=1e-6)


def test_objective_uses_the_clean_batch_for_targets():
    model, obj, _ = system()
    clean = make_batch()
    batch = drop(clean, {"vision": [0, 2]})
    out = model(batch)
    terms = obj(out, batch, clean=clean)
    value = {k: float(v.detach()) for k, v in terms.items()}
    assert value["recon"] > 0
    assert value["loss"] == pytest.approx(value["task"] + value["recon"], rel=1e-6)
    assert float(obj(out, batch)["recon"].detach()) == 0.0  # no clean batch: the missing views' targets are unknown
    assert float(obj(model(clean), clean, clean=clean)["recon"].detach()) == 0.0  # nothing missing
    terms["recon"].backward()
    assert model.reconstruction.weight.grad.abs().sum() > 0


# -------------------------------------------------------------------------------------------- evaluation


def test_eval_predictions_do_not_depend_on_the_eval_batch_size(tiny_mosi):
    from hrlf.data.datamodule import DataModule
    from hrlf.data.features import load_features
    from hrlf.engine.evaluate import predict

    torch.manual_seed(0)
    dm = DataModule(load_features(tiny_mosi))
    model = create_model("gcnet", dims=dm.dims, task=dm.task).eval()
    assert len(dm.videos["test"]) < len(dm.datasets["test"])  # clips share videos: context matters
    by_video = get_model_spec("gcnet").batches_by_video  # the registry says so; the trainer and evaluator ask it
    assert by_video
    reference, labels = predict(model, dm, "test", batch_size=512, by_video=by_video)
    for batch_size in (1, 5, 7):
        pred, again = predict(model, dm, "test", batch_size=batch_size, by_video=by_video)
        assert np.allclose(pred, reference, atol=1e-5) and np.array_equal(again, labels)
