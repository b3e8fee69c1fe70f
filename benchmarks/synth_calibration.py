"""Linear-probe calibration of the synthetic benchmarks (``hrlf.data.synth``).

For each availability condition {l}, {a}, {v}, {l,a}, {l,v}, {a,v}, {l,a,v} a linear model is fitted on the train
split's mean- and max-pooled valid frames of the available modalities (zeros for the absent ones), its
regularisation chosen on valid, and scored once on test:

* MOSI / MOSEI: ``Ridge`` on the score; Non0 weighted F1 of (pred > 0) vs (y > 0) over y != 0 (MMSA's ``F1_score``),
  plus Non0 Acc-2 and MAE;
* IEMOCAP: multinomial ``LogisticRegression`` on the latent class; per-emotion weighted F1 of "present" (MulT's
  convention), and their mean.

The ``ceiling`` column fits the same model on the latent views s_m themselves (which no model sees): the score a
model could reach if it recovered each available view perfectly from the frames.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/synth_calibration.py --preset mosi --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, f1_score
from sklearn.preprocessing import StandardScaler

from hrlf.data import synth
from hrlf.data.labels import default_mosi_label_csv, read_label_csv
from hrlf.data.synth import PRESETS, SynthCfg, generate_synth
from hrlf.types import IEMOCAP_EMOTIONS, SPLITS, Modality

CONDITIONS: tuple[tuple[Modality, ...], ...] = (
    ("language",),
    ("audio",),
    ("vision",),
    ("language", "audio"),
    ("language", "vision"),
    ("audio", "vision"),
    ("language", "audio", "vision"),
)
FILE_KEY: dict[Modality, str] = {"language": "text", "audio": "audio", "vision": "vision"}
SHORT: dict[Modality, str] = {"language": "l", "audio": "a", "vision": "v"}


def pooled(split: dict[str, np.ndarray], modality: Modality) -> np.ndarray:
    """(N, 2 D) mean and max over the valid (not all-zero) frames of one modality."""
    x = split[FILE_KEY[modality]]  # (N, T, D)
    valid = np.any(x != 0, axis=-1)  # (N, T)
    count = np.maximum(valid.sum(axis=1, keepdims=True), 1)  # (N, 1)
    mean = x.sum(axis=1) / count  # (N, T, D) -> (N, D)
    maxed = np.where(valid[:, :, None], x, -np.inf).max(axis=1)  # (N, T, D) -> (N, D)
    maxed = np.where(np.isfinite(maxed), maxed, 0.0)
    return np.concatenate([mean, maxed], axis=1).astype(np.float64)


def design(pools: dict[Modality, np.ndarray], available: Sequence[Modality]) -> np.ndarray:
    """Concatenate the pooled blocks of all modalities, zeroing the absent ones."""
    blocks = [pools[m] if m in available else np.zeros_like(pools[m]) for m in ("language", "audio", "vision")]
    return np.concatenate(blocks, axis=1)


def non0_scores(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    """Non0 weighted F1 and accuracy of (pred > 0) vs (y > 0) over y != 0, in percent."""
    keep = y_true != 0
    truth, pred = y_true[keep] > 0, y_pred[keep] > 0
    return 100 * f1_score(truth, pred, average="weighted"), 100 * accuracy_score(truth, pred)


def probe_regression(data: dict, available: Sequence[Modality]) -> dict[str, float]:
    """Ridge probe, alpha selected on valid Non0 F1."""
    xs = {s: design({m: pooled(data[s], m) for m in FILE_KEY}, available) for s in SPLITS}
    ys = {s: data[s]["regression_labels"].astype(np.float64) for s in SPLITS}
    scaler = StandardScaler().fit(xs["train"])
    xs = {s: scaler.transform(x) for s, x in xs.items()}
    best: tuple[float, Ridge] | None = None
    for alpha in (1.0, 10.0, 100.0, 1000.0, 10000.0):
        model = Ridge(alpha=alpha).fit(xs["train"], ys["train"])
        score = non0_scores(ys["valid"], model.predict(xs["valid"]))[0]
        if best is None or score > best[0]:
            best = (score, model)
    assert best is not None
    pred = best[1].predict(xs["test"])
    f1, acc = non0_scores(ys["test"], pred)
    return {"f1": f1, "acc": acc, "mae": float(np.mean(np.abs(pred - ys["test"])))}


def probe_emotions(data: dict, available: Sequence[Modality]) -> dict[str, float]:
    """Multinomial logistic probe, C selected on valid mean per-emotion F1."""
    xs = {s: design({m: pooled(data[s], m) for m in FILE_KEY}, available) for s in SPLITS}
    ys = {s: data[s]["labels"][:, :, 1].argmax(axis=1) for s in SPLITS}
    scaler = StandardScaler().fit(xs["train"])
    xs = {s: scaler.transform(x) for s, x in xs.items()}

    def per_emotion(truth: np.ndarray, pred: np.ndarray) -> list[float]:
        return [100 * f1_score(truth == k, pred == k, average="weighted") for k in range(len(IEMOCAP_EMOTIONS))]

    best: tuple[float, LogisticRegression] | None = None
    for c in (0.001, 0.01, 0.1, 1.0):
        model = LogisticRegression(C=c, max_iter=2000).fit(xs["train"], ys["train"])
        score = float(np.mean(per_emotion(ys["valid"], model.predict(xs["valid"]))))
        if best is None or score > best[0]:
            best = (score, model)
    assert best is not None
    scores = per_emotion(ys["test"], best[1].predict(xs["test"]))
    out = {name: s for name, s in zip(IEMOCAP_EMOTIONS, scores, strict=True)}
    out["mean"] = float(np.mean(scores))
    return out


def latent_views(cfg: SynthCfg, seed: int, rows: list) -> dict[str, dict[Modality, np.ndarray]]:
    """The (N, K) latent views s_m of every split, drawn exactly as ``generate_synth`` draws them."""
    out: dict[str, dict[Modality, np.ndarray]] = {}
    for s_index, split in enumerate(SPLITS):
        meta = synth._split_meta(cfg, split, seed, rows)
        out[split] = synth._views(cfg, meta, s_index, seed)
    return out


def ceiling(cfg: SynthCfg, data: dict, views: dict, available: Sequence[Modality]) -> float:
    """Headline score of the probe fitted on the latent views themselves (no frames, no map, no frame noise)."""
    latent = {s: {FILE_KEY[m]: views[s][m][:, None, :] for m in FILE_KEY} for s in SPLITS}  # (N, K) -> (N, 1, K)
    for split in SPLITS:
        latent[split].update({k: v for k, v in data[split].items() if k not in FILE_KEY.values()})
    if cfg.task == "regression":
        return probe_regression(latent, available)["f1"]
    return probe_emotions(latent, available)["mean"]


def calibrate(cfg: SynthCfg, seeds: Sequence[int], rows: list) -> dict[str, dict[str, float]]:
    """Probe every condition for every seed; mean over seeds."""
    results: dict[str, list[dict[str, float]]] = {}
    for seed in seeds:
        started = time.perf_counter()
        data = generate_synth(cfg, seed=seed, label_rows=rows)
        generated = time.perf_counter() - started
        views = latent_views(cfg, seed, rows)
        for available in CONDITIONS:
            name = "".join(SHORT[m] for m in available)
            probe = probe_regression if cfg.task == "regression" else probe_emotions
            scores = probe(data, available)
            scores["ceiling"] = ceiling(cfg, data, views, available)
            results.setdefault(name, []).append(scores)
        print(
            f"seed {seed}: generated in {generated:.1f} s, probed in {time.perf_counter() - started - generated:.1f} s"
        )
    return {name: {k: float(np.mean([r[k] for r in runs])) for k in runs[0]} for name, runs in results.items()}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="mosi")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--label-csv", default=None, help="MOSI label.csv (default: hrlf's lookup)")
    parser.add_argument("--set", nargs="*", default=[], help="knob overrides, e.g. audio.view_noise=3 n_train=500")
    args = parser.parse_args(argv)
    cfg = PRESETS[args.preset]
    for item in args.set:
        key, value = item.split("=", 1)
        if "." in key:
            group, knob = key.split(".", 1)
            sub = getattr(cfg, group)
            sub = dataclasses.replace(sub, **{knob: type(getattr(sub, knob))(value)})
            cfg = dataclasses.replace(cfg, **{group: sub})
        else:
            cfg = dataclasses.replace(cfg, **{key: type(getattr(cfg, key))(value)})
    rows = read_label_csv(args.label_csv or default_mosi_label_csv())
    table = calibrate(cfg, args.seeds, rows)
    cols = list(next(iter(table.values())))
    print(f"\npreset {args.preset}, seeds {args.seeds}, overrides {args.set or 'none'}")
    print("| condition | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name, scores in table.items():
        print(f"| {{{','.join(name)}}} | " + " | ".join(f"{scores[c]:.1f}" for c in cols) + " |")


if __name__ == "__main__":
    main()
