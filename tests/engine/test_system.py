"""Training systems: the task system's loss choice, and the distillation system's teacher cache (the same
outputs as the teacher, only where they belong)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from helpers import tiny_run_cfg
from hrlf.config import ConfigError, from_dict
from hrlf.data.datamodule import DataModule
from hrlf.data.features import load_features
from hrlf.engine.run import build_stages, run_experiment
from hrlf.engine.system import DistillationSystem, TaskSystem, TeacherCache, _tensors
from hrlf.types import ModelOutput


def _student(name: str, path):
    cfg = tiny_run_cfg(name, path)
    data = DataModule(load_features(path))
    stages = build_stages(cfg, dims=data.dims, task=data.task)
    student = stages[-1]
    assert isinstance(student.objective, DistillationSystem)
    student.objective.setup(student.model)
    return cfg, data, student.objective


@pytest.mark.parametrize("name", ["hrlf", "corrkd"])
def test_cached_teacher_outputs_equal_the_teachers(name, tiny_mosi):
    cfg, data, system = _student(name, tiny_mosi)
    system.prepare(data, cfg=cfg.train, device=torch.device("cpu"))
    assert isinstance(system.__dict__["_teacher_cache"], TeacherCache)
    for batch in data.batches("train", batch_size=16, shuffle_seed=3, bucket=4):  # other batches, other order
        cached = system.teacher_output(batch)
        with torch.no_grad():
            computed = system.teacher(batch)
        assert type(cached) is type(computed)
        pairs = list(zip(_tensors(cached), _tensors(computed), strict=True))
        assert pairs
        for a, b in pairs:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_the_cache_serves_only_its_own_clips(tiny_mosi):
    cfg, data, system = _student("hrlf", tiny_mosi)
    system.prepare(data, cfg=cfg.train, device=torch.device("cpu"))
    cache = system.__dict__["_teacher_cache"]
    valid = next(data.batches("valid", batch_size=8))  # indices that exist in the training split, other clips
    assert cache.lookup(valid) is None
    train = next(data.batches("train", batch_size=8))
    assert cache.lookup(train) is not None
    assert cache.lookup(dataclasses.replace(train, index=train.index + len(cache.ids))) is None
    with torch.no_grad():
        expected = system.teacher(valid)
    for a, b in zip(_tensors(system.teacher_output(valid)), _tensors(expected), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # computed, not a wrong row from the cache


def test_cache_off_computes_the_teacher_every_step(tiny_mosi):
    cfg, data, system = _student("hrlf", tiny_mosi)
    system.prepare(data, cfg=dataclasses.replace(cfg.train, cache_teacher=False), device=torch.device("cpu"))
    assert system.__dict__["_teacher_cache"] is None


def test_a_run_with_the_cache_trains_like_one_without(tiny_mosi, tmp_path):
    """same losses to float rounding in the first epoch (the teacher's values differ only in their last digits);
    training is chaotic, so later epochs are not compared."""
    runs = {}
    for cache in (True, False):
        cfg = tiny_run_cfg("hrlf", tiny_mosi, "train.epochs=1", f"train.cache_teacher={str(cache).lower()}")
        run_experiment(cfg, run_dir=tmp_path / str(cache), evaluate=False)
        runs[cache] = (tmp_path / str(cache) / "student" / "log.csv").read_text().splitlines()
    header = runs[True][0].split(",")
    on, off = (dict(zip(header, map(float, runs[c][1].split(",")), strict=True)) for c in (True, False))
    for key in ("train_task", "train_kd", "train_loss"):
        assert on[key] == pytest.approx(off[key], rel=1e-3), key


class _PerFrameTeacher(torch.nn.Module):
    """A teacher whose output has a per-frame tensor over the batch's own span: not cacheable per clip."""

    def forward(self, batch):
        from hrlf.types import ModelOutput

        frames = batch.features["language"][:, : int(batch.valid["language"].sum(1).max())]
        return ModelOutput(pred=batch.label.float(), aux={"frames": frames})


def test_outputs_that_cannot_be_cached_are_computed(tiny_mosi, monkeypatch):
    data = DataModule(load_features(tiny_mosi))
    cpu = torch.device("cpu")
    assert TeacherCache.build(_PerFrameTeacher(), data, batch_size=4, device=cpu) is None  # shapes vary by batch

    @dataclasses.dataclass
    class Hidden:
        pred: torch.Tensor
        derived: torch.Tensor = dataclasses.field(init=False)

    class HiddenTeacher(torch.nn.Module):
        def forward(self, batch):
            out = Hidden(pred=batch.label.float())
            out.derived = out.pred * 2
            return out

    assert TeacherCache.build(HiddenTeacher(), data, batch_size=4, device=cpu) is None  # cannot be rebuilt
    _, _, system = _student("hrlf", tiny_mosi)
    monkeypatch.setattr(TeacherCache, "MAX_BYTES", 0)
    assert TeacherCache.build(system.teacher, data, batch_size=16, device=cpu) is None  # too large


def test_task_system_trains_with_the_chosen_regression_loss(tiny_mosi):
    """``backbone``'s ``task_loss``: MSE by default, L1 (the field's fine-tuning loss) when asked."""
    data = DataModule(load_features(tiny_mosi))
    batch = next(data.batches("train", batch_size=8))
    pred = batch.label + torch.linspace(-2.0, 2.0, batch.size)
    output = ModelOutput(pred=pred, aux={})
    for name, expected in (
        ("mse", torch.mean((pred - batch.label) ** 2)),
        ("l1", torch.mean((pred - batch.label).abs())),
    ):
        cfg = tiny_run_cfg("backbone", tiny_mosi)
        cfg.model.task_loss = name  # type: ignore[attr-defined]
        stages = build_stages(cfg, dims=data.dims, task=data.task)
        losses = stages[-1].objective.losses(output, batch)
        torch.testing.assert_close(losses["loss"], expected)
    with pytest.raises(ValueError, match=r"expected mse \| l1, found 'huber'"):
        TaskSystem(task=data.task, regression="huber")


def test_backbone_refuses_an_unknown_task_loss():
    with pytest.raises(ConfigError, match=r"key 'model.task_loss': expected mse \| l1, found 'huber'"):
        from_dict({"model": {"name": "backbone", "task_loss": "huber"}})
