"""After training: is HMI's estimate limited by its statistics networks or by the features? Does HAL fool a fresh D?

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/mechanism_probe.py RUN_DIR [RUN_DIR ...] [--steps 1500]
        [--modes msm clean identity] [--out probe.json]

Each RUN_DIR is a finished HRLF run (any ablation: ``teacher.safetensors`` and ``model.safetensors``). The
frozen teacher sees the complete clips, the student MSM copies drawn as in its training (fixed seeds); their
hourglass features E1, E2, E3 (without dropout, standardised by the teacher batch as in the recipe) are
collected on the training split (three MSM draws) and the validation split (one). Fresh networks of the
run's own shapes are then fitted on the training features and scored on the validation features:

* ``mi.msm``: a statistics network (the recipe's 2-layer MLP) trained to maximise the JSD bound (Eq. 7,
  all-pairs negatives) between teacher and student features: what the features let any such estimator find.
  The student's own online estimate (``mi.E*`` in results.json) can be read against it.
* ``mi.clean``: the same with the student on complete clips: what MSM itself removes.
* ``mi.identity``: teacher features against themselves: the estimator's ceiling on these features (0 is the
  bound's maximum, -2 log 2 = -1.386 no information).
* ``disc_acc`` / ``disc_bce``: a fresh discriminator (the recipe's shape, no R1 or label smoothing) trained to
  tell teacher from student features (MSM or clean input); balanced validation accuracy and BCE (0.5 and
  0.693: the student's features are indistinguishable from the teacher's).

Numbers are means over the scale's members (E1 and E2 hold two). One torch thread keeps runs comparable.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hrlf.data.datamodule import DataModule
from hrlf.data.features import load_features
from hrlf.engine.checkpoint import load_weights
from hrlf.engine.run import build_stages, load_run, train_missing_protocol
from hrlf.models.hrlf import SCALE_NAMES, HRLFCfg, jsd_mi, normalize_pair, scales
from hrlf.models.layers import mlp

NO_INFORMATION = -2 * math.log(2)


def collect(teacher: nn.Module, student: nn.Module, dm: DataModule, cfg: Any, split: str, *, draws: int, mode: str):
    """Per scale: teacher and student features stacked as (members, N, w); ``mode`` msm | clean | identity."""
    msm = train_missing_protocol(cfg)
    gen = torch.Generator().manual_seed(20261202)
    merge = cfg.model.scale_merge
    out_t: list[list[Tensor]] = [[] for _ in SCALE_NAMES]
    out_s: list[list[Tensor]] = [[] for _ in SCALE_NAMES]
    with torch.no_grad():
        for _ in range(draws):
            for clean in dm.batches(split, batch_size=256):  # type: ignore[arg-type]
                t_out = teacher(clean)
                if mode == "identity":
                    s_out = t_out
                else:
                    s_out = student(msm.apply(clean, generator=gen) if mode == "msm" else clean)
                t_sc = scales(t_out, merge=merge, clean=True)
                s_sc = scales(s_out, merge=merge, clean=True)
                for k in range(len(SCALE_NAMES)):
                    out_t[k].append(torch.stack(t_sc[k]))  # members x (B, w) -> (members, B, w)
                    out_s[k].append(torch.stack(s_sc[k]))
    return [torch.cat(t, dim=1) for t in out_t], [torch.cat(s, dim=1) for s in out_s]


def _windows(n: int, size: int) -> list[slice]:
    return [slice(start, start + size) for start in range(0, n - size + 1, size // 2)]


def fit_critic(train: tuple[Tensor, Tensor], valid: tuple[Tensor, Tensor], *, steps: int, batch: int) -> float:
    """Train a fresh statistics network on (teacher, student) training features; its bound on validation."""
    (t_tr, s_tr), (t_va, s_va) = train, valid
    members, n, width = t_tr.shape
    critic = mlp([2 * width, width, 1])
    opt = torch.optim.Adam(critic.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for step in range(steps):
        rows = torch.randint(0, n, (batch,), generator=gen)
        t, s = normalize_pair(t_tr[step % members, rows], s_tr[step % members, rows], mode="teacher_batch")
        loss = -jsd_mi(critic, t, s, negatives="all_pairs")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    values = []
    with torch.no_grad():
        for m in range(members):
            for window in _windows(t_va.shape[1], batch):
                t, s = normalize_pair(t_va[m, window], s_va[m, window], mode="teacher_batch")
                values.append(float(jsd_mi(critic, t, s, negatives="all_pairs")))
    return sum(values) / len(values)


def fit_discriminator(
    train: tuple[Tensor, Tensor], valid: tuple[Tensor, Tensor], *, steps: int, batch: int
) -> tuple[float, float]:
    """Train a fresh discriminator (teacher = 1, student = 0); its balanced accuracy and mean BCE on validation
    features (chance: 0.5 and log 2 = 0.693; a lower BCE is an easier separation)."""
    (t_tr, s_tr), (t_va, s_va) = train, valid
    members, n, width = t_tr.shape
    disc = mlp([width, width, 1], activation=lambda: nn.LeakyReLU(0.2))  # type: ignore[arg-type]
    opt = torch.optim.Adam(disc.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for step in range(steps):
        rows = torch.randint(0, n, (batch,), generator=gen)
        t, s = normalize_pair(t_tr[step % members, rows], s_tr[step % members, rows], mode="teacher_batch")
        real, fake = disc(t), disc(s)
        loss = F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
        loss = loss + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    accuracy, bce = [], []
    with torch.no_grad():
        for m in range(members):
            t, s = normalize_pair(t_va[m], s_va[m], mode="teacher_batch")
            real, fake = disc(t), disc(s)
            accuracy.append(0.5 * (float((real > 0).float().mean()) + float((fake <= 0).float().mean())))
            loss = F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
            bce.append(0.5 * float(loss + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))))
    return sum(accuracy) / len(accuracy), sum(bce) / len(bce)


def probe_run(run_dir: Path, *, steps: int, batch: int, modes: list[str]) -> dict[str, Any]:
    loaded = load_run(run_dir)
    cfg = loaded.cfg
    if not isinstance(cfg.model, HRLFCfg):
        raise SystemExit(f"error: {run_dir} is a {type(cfg.model).__name__} run, expected an HRLF run")
    dm = DataModule(load_features(cfg.data.path, nonfinite=cfg.data.nonfinite))
    teacher = build_stages(cfg, dims=dm.dims, task=dm.task)[0].model
    load_weights(run_dir / "teacher.safetensors", teacher)
    teacher.eval()
    student = loaded.model
    result: dict[str, Any] = {"run": str(run_dir), "steps": steps, "batch": batch}
    online = json.loads((run_dir / "results.json").read_text())["selection"]["student"].get("diagnostics", {})
    for mode in modes:
        tr = collect(teacher, student, dm, cfg, "train", draws=3 if mode == "msm" else 1, mode=mode)
        va = collect(teacher, student, dm, cfg, "valid", draws=1, mode=mode)
        for k, name in enumerate(SCALE_NAMES):
            pair_tr, pair_va = (tr[0][k], tr[1][k]), (va[0][k], va[1][k])
            torch.manual_seed(0)
            result[f"mi.{mode}.{name}"] = fit_critic(pair_tr, pair_va, steps=steps, batch=batch)
            if mode != "identity":
                acc, bce = fit_discriminator(pair_tr, pair_va, steps=steps, batch=batch)
                result[f"disc_acc.{mode}.{name}"], result[f"disc_bce.{mode}.{name}"] = acc, bce
            if mode == "msm" and f"mi.{name}" in online:
                result[f"mi.online.{name}"] = online[f"mi.{name}"]
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument(
        "--modes", nargs="+", default=["msm", "clean", "identity"], choices=["msm", "clean", "identity"]
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [probe_run(r, steps=args.steps, batch=args.batch, modes=args.modes) for r in args.runs]
    if args.out:
        args.out.write_text(json.dumps({"no_information": NO_INFORMATION, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
