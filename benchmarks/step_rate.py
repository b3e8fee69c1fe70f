"""A training step's arithmetic rate against the machine's own matmul rate (numbers go to docs/performance.md).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/step_rate.py --model backbone [--preset mosi] [--repeats 3]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/step_rate.py --model hrlf --stage student [--profile 25]

In one process: the fp32 matmul rate of this machine at the current thread count (a square matmul, best of
several), then the floating-point work of one epoch of training steps of the recipe's model (forward, backward
and optimizer step of every training batch, counted with ``torch.utils.flop_counter``'s formulas on the same
batches and masks), then the time of that epoch's steps (best of ``--repeats``; data loading and validation
excluded: the batches are gathered and masked beforehand). Prints both rates and their ratio. ``--profile N``
adds the N operators with the most self time (``torch.profiler``, one more epoch). A student stage runs on a
freshly built teacher: its cost does not depend on what the teacher learned.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from hrlf.config import load_config
from hrlf.data.datamodule import DataModule
from hrlf.data.features import load_features
from hrlf.data.synth import write_synth
from hrlf.engine.run import build_stages, train_missing_protocol
from hrlf.engine.trainer import derive_seed
from hrlf.registry import get_model_spec

ROOT = Path(__file__).resolve().parents[1]
FILES = {"mosi": "aligned_50.pkl", "mosei": "aligned_50.pkl", "iemocap": "iemocap_data.pkl"}


class FlopCount(TorchDispatchMode):
    """Floating-point operations of every operator torch's flop counter knows (matmuls, convolutions, attention),
    forward and backward. ``FlopCounterMode`` itself cannot be used: its per-module hooks break the
    ``autograd.grad`` of HRLF's R1 penalty."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.total += count(*args, **kwargs, out_val=out)
        return out


def matmul_gflops(n: int = 1024, reps: int = 10, trials: int = 5) -> float:
    """Best-of-``trials`` fp32 rate of an (n, n) @ (n, n) matmul at the current thread count, in GFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    best = 0.0
    for _ in range(trials):
        t = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t) / 1e9)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="mosi", choices=sorted(FILES))
    p.add_argument("--model", default="backbone")
    p.add_argument("--recipe", default=None, help="recipe name under configs/<model>/ (default: the preset)")
    p.add_argument("--stage", default=None, help="the stage to time (default: the last)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-batches", type=int, default=0, help="time only this many batches of the epoch (0: all)")
    p.add_argument("--profile", type=int, default=0, help="list this many operators by self time")
    p.add_argument("--data-dir", default=str(ROOT / "data" / "synth"))
    p.add_argument("--set", nargs="*", default=[], help="extra config overrides, key=value")
    args = p.parse_args()

    path = Path(args.data_dir) / args.preset / FILES[args.preset]
    if not path.exists():
        write_synth(args.preset, path.parent, seed=0)
    data = load_features(path)
    dm = DataModule(data)
    recipe = ROOT / "configs" / args.model / f"{args.recipe or args.preset}.yaml"
    cfg = load_config(recipe, [f"data.path={path}", *args.set])
    stages = build_stages(cfg, dims=dm.dims, task=dm.task)
    names = [s.name for s in stages]
    if args.stage is not None and args.stage not in names:
        p.error(f"--stage: expected one of {', '.join(names)}, found {args.stage!r}")
    stage = stages[-1] if args.stage is None else stages[names.index(args.stage)]
    model, objective = stage.model, stage.objective
    torch.manual_seed(derive_seed(cfg.train.seed, stage.name, "init"))
    objective.setup(model)
    optimizers = objective.optimizers(model, cfg.train)
    objective.prepare(dm, cfg=cfg.train, device=torch.device("cpu"))  # as the trainer does (a teacher's cache)
    protocol = train_missing_protocol(cfg) if stage.missing else None
    gen = torch.Generator().manual_seed(derive_seed(cfg.train.seed, stage.name, "masks", 0))
    batches = []
    for clean in dm.batches(
        "train",
        batch_size=cfg.train.batch_size,
        shuffle_seed=derive_seed(cfg.train.seed, stage.name, "order", 0),
        bucket=cfg.train.length_bucket,
        by_video=get_model_spec(cfg.model_name).batches_by_video,  # GCNet: whole conversations per batch
    ):
        batches.append((clean, protocol.apply(clean, generator=gen) if protocol is not None else clean))
    if args.max_batches:
        batches = batches[: args.max_batches]
    model.train()
    objective.train()
    objective.start_epoch(0)

    def epoch() -> None:
        for clean, batch in batches:
            objective.training_step(
                model=model, batch=batch, clean=clean, optimizers=optimizers, grad_clip=cfg.train.grad_clip
            )

    rate_before = matmul_gflops()
    torch.manual_seed(0)
    epoch()  # warm-up (allocator, kernels)
    with FlopCount() as counter:
        epoch()
    flops = counter.total
    seconds = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        epoch()
        seconds.append(time.perf_counter() - t)
    rate_after = matmul_gflops()
    matmul = max(rate_before, rate_after)
    step_rate = flops / min(seconds) / 1e9
    report = {
        "preset": args.preset,
        "model": args.model,
        "stage": stage.name,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "batches": len(batches),
        "batch_size": cfg.train.batch_size,
        "gflop_per_epoch": round(flops / 1e9, 2),
        "epoch_steps_s": [round(s, 3) for s in seconds],
        "ms_per_step": round(min(seconds) / len(batches) * 1e3, 2),
        "step_gflops": round(step_rate, 2),
        "matmul_gflops": [round(rate_before, 1), round(rate_after, 1)],
        "ratio": round(step_rate / matmul, 3),
    }
    print(json.dumps(report, indent=2))
    if args.profile:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            epoch()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile))


if __name__ == "__main__":
    main()
