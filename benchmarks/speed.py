"""Speed and memory of training and evaluation on the synthetic presets (numbers go to docs/performance.md).

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/speed.py --preset mosi [--model backbone] [--epochs 2]

Measures, in one process: data loading time, seconds per training epoch (train samples/s), a plain eval pass
(eval samples/s), the full inter + intra evaluation (7 + 11 conditions) on the test split, and the peak RSS.
Each run is a fresh process, so peak RSS is that of loading the file plus training.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from hrlf.config import load_config
from hrlf.data.datamodule import DataModule
from hrlf.data.features import load_features
from hrlf.data.synth import write_synth
from hrlf.engine.evaluate import evaluate_protocols, predict
from hrlf.engine.run import build_stages, train_missing_protocol
from hrlf.engine.trainer import fit
from hrlf.registry import get_model_spec

ROOT = Path(__file__).resolve().parents[1]
FILES = {"mosi": "aligned_50.pkl", "mosei": "aligned_50.pkl", "iemocap": "iemocap_data.pkl"}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="mosi", choices=sorted(FILES))
    p.add_argument("--model", default="backbone")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs (the first includes warm-up)")
    p.add_argument("--data-dir", default=str(ROOT / "data" / "synth"))
    p.add_argument("--skip-eval", action="store_true")
    args = p.parse_args()

    path = Path(args.data_dir) / args.preset / FILES[args.preset]
    if not path.exists():
        t = time.perf_counter()
        write_synth(args.preset, path.parent, seed=0)
        print(f"synth {args.preset}: {time.perf_counter() - t:.1f} s", file=sys.stderr)
    t = time.perf_counter()
    data = load_features(path)
    load_s = time.perf_counter() - t
    dm = DataModule(data)
    recipe = ROOT / "configs" / args.model / f"{args.preset}.yaml"
    cfg = load_config(recipe, [f"data.path={path}", f"train.epochs={args.epochs}", "train.patience=0"])
    cfg.train.progress = False
    stages = build_stages(cfg, dims=dm.dims, task=dm.task)
    spec = get_model_spec(cfg.model_name)
    epoch_s: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for stage in stages:
            result = fit(
                model=stage.model,
                objective=stage.objective,
                data=dm,
                cfg=cfg.train,
                stage_dir=Path(tmp) / stage.name,
                train_missing=train_missing_protocol(cfg) if stage.missing else None,
                stage=stage.name,
                by_video=spec.batches_by_video,
            )
            epoch_s[stage.name] = [result.seconds / max(len(result.history), 1)]
    model = stages[-1].model
    n_train, n_test = len(data.splits["train"]), len(data.splits["test"])
    t = time.perf_counter()
    predict(model, dm, "test", batch_size=cfg.train.eval_batch_size, by_video=spec.batches_by_video)
    eval_pass_s = time.perf_counter() - t
    full_eval_s = None
    if not args.skip_eval:
        t = time.perf_counter()
        evaluate_protocols(
            model, dm, "test", which="all", batch_size=cfg.train.eval_batch_size, by_video=spec.batches_by_video
        )
        full_eval_s = time.perf_counter() - t
    report = {
        "preset": args.preset,
        "model": args.model,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "load_s": round(load_s, 2),
        "epochs_timed": args.epochs,
        "epoch_s_incl_validation": {k: round(v[0], 2) for k, v in epoch_s.items()},
        "train_samples_per_s": {k: round(n_train / v[0], 1) for k, v in epoch_s.items()},
        "eval_samples_per_s": round(n_test / eval_pass_s, 1),
        "full_inter_intra_eval_s": None if full_eval_s is None else round(full_eval_s, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
