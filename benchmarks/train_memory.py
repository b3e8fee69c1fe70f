"""Resident memory of one model's training steps and evaluation pass on a feature file (docs/performance.md).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_memory.py --model smil --preset mosei --steps 80
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_memory.py --model smil --preset mosei --trim-every 10

One process per configuration, since the peak (``getrusage``'s ``ru_maxrss``) only rises. Prints, as JSON: the
process's RSS before and after loading the file, the current RSS (``/proc/self/statm``) and the peak after every
``--report-every`` training steps, the mean seconds per step, then the peak after one pass over the validation
split at ``--eval-batch``. ``--trim-every K`` calls glibc's ``malloc_trim(0)`` after every K steps, which hands
freed heap pages back to the system: whether what a long run holds above its working set is memory the
allocator keeps, and what giving it back costs per step.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import time
from pathlib import Path

import torch

from hrlf.config import load_config
from hrlf.data.datamodule import DataModule
from hrlf.data.features import load_features
from hrlf.engine.evaluate import predict
from hrlf.engine.run import build_stages, train_missing_protocol
from hrlf.engine.trainer import derive_seed
from hrlf.registry import get_model_spec

ROOT = Path(__file__).resolve().parents[1]
FILES = {"mosi": "aligned_50.pkl", "mosei": "aligned_50.pkl", "iemocap": "iemocap_data.pkl"}


def rss_mb() -> float:
    """Current resident memory of this process in MiB (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="mosei", choices=sorted(FILES))
    p.add_argument("--model", default="smil")
    p.add_argument("--recipe", default=None, help="recipe name under configs/<model>/ (default: the preset)")
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--report-every", type=int, default=10)
    p.add_argument("--trim-every", type=int, default=0, help="malloc_trim(0) after every K steps (0: never)")
    p.add_argument("--eval-batch", type=int, default=0, help="validation pass batch (0: the recipe's)")
    p.add_argument("--data-dir", default=str(ROOT / "data" / "synth"))
    p.add_argument("--set", nargs="*", default=[], help="extra config overrides, key=value")
    args = p.parse_args()

    libc = ctypes.CDLL("libc.so.6") if args.trim_every else None
    report: dict[str, object] = {"model": args.model, "preset": args.preset, "trim_every": args.trim_every}
    report["rss_start_mb"] = rss_mb()
    path = Path(args.data_dir) / args.preset / FILES[args.preset]
    data = load_features(path)
    dm = DataModule(data)
    report["rss_after_load_mb"] = rss_mb()
    report["peak_after_load_mb"] = peak_mb()
    recipe = ROOT / "configs" / args.model / f"{args.recipe or args.preset}.yaml"
    cfg = load_config(recipe, [f"data.path={path}", *args.set])
    stage = build_stages(cfg, dims=dm.dims, task=dm.task)[-1]
    model, objective = stage.model, stage.objective
    torch.manual_seed(derive_seed(cfg.train.seed, stage.name, "init"))
    objective.setup(model)
    optimizers = objective.optimizers(model, cfg.train)
    objective.prepare(dm, cfg=cfg.train, device=torch.device("cpu"))
    protocol = train_missing_protocol(cfg) if stage.missing else None
    gen = torch.Generator().manual_seed(derive_seed(cfg.train.seed, stage.name, "masks", 0))
    model.train()
    objective.train()
    objective.start_epoch(0)
    trace = []
    seconds = 0.0
    steps = 0
    while steps < args.steps:
        for clean in dm.batches(
            "train",
            batch_size=cfg.train.batch_size,
            shuffle_seed=derive_seed(cfg.train.seed, stage.name, "order", steps),
            bucket=cfg.train.length_bucket,
            by_video=get_model_spec(cfg.model_name).batches_by_video,
        ):
            batch = protocol.apply(clean, generator=gen) if protocol is not None else clean
            t = time.perf_counter()
            objective.training_step(
                model=model, batch=batch, clean=clean, optimizers=optimizers, grad_clip=cfg.train.grad_clip
            )
            steps += 1
            if libc is not None and steps % args.trim_every == 0:
                libc.malloc_trim(0)
            seconds += time.perf_counter() - t
            if steps % args.report_every == 0:
                trace.append({"step": steps, "rss_mb": rss_mb(), "peak_mb": peak_mb()})
            if steps >= args.steps:
                break
    report["train_trace"] = trace
    report["seconds_per_step"] = round(seconds / steps, 4)
    report["peak_after_train_mb"] = peak_mb()
    eval_batch = args.eval_batch or cfg.train.eval_batch_size
    if libc is not None:
        libc.malloc_trim(0)
    report["rss_before_eval_mb"] = rss_mb()
    predict(model, dm, "valid", batch_size=eval_batch, by_video=get_model_spec(cfg.model_name).batches_by_video)
    report["eval_batch"] = eval_batch
    report["rss_after_eval_mb"] = rss_mb()
    report["peak_after_eval_mb"] = peak_mb()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
