"""Proof that a refactor changed no number: train every model, then compare two such outputs byte for byte.

Usage::

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/refactor_check.py run --out /tmp/before \\
        --mosi data/synth/mosi/aligned_50.pkl --iemocap data/synth/iemocap/iemocap_data.pkl
    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/refactor_check.py --compare /tmp/before /tmp/after

``run`` trains each case through ``hrlf train`` itself (:func:`hrlf.cli.main`, i.e. ``run_experiment``), each in a
fresh process with one torch thread, for 2 epochs at seed 1111 (``--epochs``, ``--seed``). The cases: every
registered model with its MOSI recipe (``configs/<model>/mosi.yaml``) on the synthetic MOSI file; ``self_mm``
once more with its config defaults (the recipe sets ``min_unimodal_weight: 0``, the defaults keep the 1e-3
floor, so both code paths are covered); and one emotion model (``--emotion-model``, default ``corrkd``) with its
IEMOCAP recipe on the synthetic IEMOCAP file. Per case it keeps, under ``<out>/<case>/``:

* ``results.json``, ``checkpoint.json`` and every stage's ``log.csv`` (``logs/<stage>.csv``) as written;
* ``tensors.json``: per ``*.safetensors`` file of the run the sorted key list and a SHA-256 over every tensor
  (key, dtype, shape and raw bytes, in key order).

``--compare A B`` reports per case whether every kept file is identical. The only field left out is the wall
time ``"seconds"`` of each stage in ``results.json`` (``selection.<stage>.seconds``): its value is replaced by
``null`` in the text before the byte comparison, everything else is compared as bytes. Exit status 1 when any
case differs or is missing on one side.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECONDS = re.compile(rb'"seconds": [-+0-9.eE]+')


def cases(models: list[str], *, emotion_model: str) -> dict[str, tuple[str, str, str | None]]:
    """``{case: (model, dataset key, recipe path or None for the config defaults)}``."""
    out: dict[str, tuple[str, str, str | None]] = {
        name: (name, "mosi", str(ROOT / "configs" / name / "mosi.yaml")) for name in models
    }
    if "self_mm" in models:
        out["self_mm@defaults"] = ("self_mm", "mosi", None)
    if emotion_model:
        out[f"{emotion_model}@iemocap"] = (
            emotion_model,
            "iemocap",
            str(ROOT / "configs" / emotion_model / "iemocap.yaml"),
        )
    return out


def tensor_digest(path: Path) -> dict[str, object]:
    """Sorted keys and one SHA-256 over (key, dtype, shape, bytes) of every tensor of a safetensors file."""
    import torch
    from safetensors.torch import load_file

    state = load_file(str(path))
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return {"keys": sorted(state), "sha256": digest.hexdigest()}


def train_case(
    case: str, spec: tuple[str, str, str | None], *, data: dict[str, str], out: Path, epochs: int, seed: int
) -> None:
    model, dataset, recipe = spec
    run_dir = out / "runs" / case
    shutil.rmtree(run_dir, ignore_errors=True)  # a run interrupted by an earlier call starts over
    args = ["train", "--model", model, "--data", data[dataset], "--seed", str(seed), "--out", str(run_dir)]
    if recipe is not None:
        args += ["--config", recipe]
    args += ["--set", f"train.epochs={epochs}", "--set", "train.progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    code = "import sys; from hrlf.cli import main; sys.exit(main(sys.argv[1:]))"
    subprocess.run([sys.executable, "-c", code, *args], check=True, env=env, stdout=subprocess.DEVNULL)
    keep = out / case
    (keep / "logs").mkdir(parents=True, exist_ok=True)
    for name in ("results.json", "checkpoint.json"):
        (keep / name).write_bytes((run_dir / name).read_bytes())
    for log in sorted(run_dir.glob("*/log.csv")):
        (keep / "logs" / f"{log.parent.name}.csv").write_bytes(log.read_bytes())
    tensors = {p.name: tensor_digest(p) for p in sorted(run_dir.glob("*.safetensors"))}
    (keep / "tensors.json").write_text(json.dumps(tensors, indent=2, sort_keys=True) + "\n")
    threads = json.loads((keep / "results.json").read_text())["torch_threads"]
    if threads != 1:
        raise RuntimeError(f"{case}: trained with {threads} torch threads, expected 1")


def kept_files(folder: Path) -> dict[str, bytes]:
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        raw = path.read_bytes()
        if path.name == "results.json":
            raw = SECONDS.sub(b'"seconds": null', raw)  # the one timing field; everything else byte for byte
        files[str(path.relative_to(folder))] = raw
    return files


def compare(a: Path, b: Path) -> int:
    names = sorted(
        {p.name for p in a.iterdir() if p.is_dir() and p.name != "runs"}
        | {p.name for p in b.iterdir() if p.is_dir() and p.name != "runs"}
    )
    bad = 0
    for case in names:
        if not (a / case).is_dir() or not (b / case).is_dir():
            print(f"{case:20s} MISSING in {a if not (a / case).is_dir() else b}")
            bad += 1
            continue
        fa, fb = kept_files(a / case), kept_files(b / case)
        differ = sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))
        print(f"{case:20s} {'identical' if not differ else 'DIFFERS: ' + ', '.join(differ)} ({len(fa)} files)")
        bad += bool(differ)
    print(f"{len(names) - bad} of {len(names)} cases identical (excluded: selection.<stage>.seconds of results.json)")
    return 1 if bad else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), type=Path, help="compare two output folders")
    p.add_argument("command", nargs="?", choices=["run"], help="train every case into --out")
    p.add_argument("--out", type=Path)
    p.add_argument("--mosi", help="synthetic MOSI file (hrlf synth --preset mosi)")
    p.add_argument("--iemocap", help="synthetic IEMOCAP file (hrlf synth --preset iemocap)")
    p.add_argument("--models", nargs="+", default=None, help="default: every registered model")
    p.add_argument("--emotion-model", default="corrkd", help="the model also run on IEMOCAP ('' = none)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=1111)
    args = p.parse_args()
    if args.compare:
        return compare(*args.compare)
    if args.command != "run" or args.out is None or args.mosi is None:
        p.error("give --compare A B, or run --out DIR --mosi FILE [--iemocap FILE]")
    from hrlf.registry import list_models

    models = args.models or list_models()
    todo = cases(models, emotion_model=args.emotion_model if args.iemocap else "")
    data = {
        "mosi": str(Path(args.mosi).resolve()),
        "iemocap": str(Path(args.iemocap).resolve()) if args.iemocap else "",
    }
    for case, spec in todo.items():
        if (args.out / case / "tensors.json").exists():
            print(f"{case}: kept from an earlier call", flush=True)
            continue
        print(f"{case}: training", flush=True)
        train_case(case, spec, data=data, out=args.out, epochs=args.epochs, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
