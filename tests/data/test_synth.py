"""Tests of the synthetic benchmarks: exact file schema, padding, labels, determinism and atomic writes."""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hrlf.data import synth
from hrlf.data.labels import LabelRow, read_label_csv
from hrlf.data.synth import PRESETS, SynthCfg, generate_synth, write_synth

SPLITS = ("train", "valid", "test")
MMSA_KEYS = [
    "raw_text",
    "id",
    "text",
    "text_bert",
    "audio",
    "vision",
    "annotations",
    "classification_labels",
    "regression_labels",
]
MULT_KEYS = ["vision", "text", "audio", "labels", "id"]
TINY = {"n_train": 40, "n_valid": 12, "n_test": 12}
LONG_TEXT = " ".join(f"w{i}" for i in range(60))  # longer than T = 50: lengths and [SEP] must be clipped


@pytest.fixture
def label_csv(tmp_path: Path) -> Path:
    """A small MOSI-layout label file with ids containing '_', dev rows, a zero label and a 60-word text."""
    lines = ["id,text,label,mode"]
    texts = ["good", "not bad at all", "i hated it so much really", "meh", LONG_TEXT, "the plot was fine i guess"]
    values = [2.4, 0.6, -2.8, 0.0, -1.2, 1.0]
    for i in range(30):
        mode = ("train", "dev", "test")[i % 3]
        lines.append(f"vid_{i // 4}_{i},{texts[i % 6]},{values[i % 6]},{mode}")
    path = tmp_path / "label.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def load(path: Path) -> dict:
    with path.open("rb") as handle:
        return pickle.load(handle)


def valid_mask(features: np.ndarray) -> np.ndarray:
    """(N, T) True where a frame is not all-zero."""
    return np.any(features != 0, axis=-1)


def check_pre_padding(split: dict[str, np.ndarray], lengths: np.ndarray, seq_len: int) -> None:
    """Real frames are exactly the last L of T in every modality; padding is exactly zero."""
    expected = np.arange(seq_len)[None, :] >= (seq_len - lengths)[:, None]
    for key in ("text", "audio", "vision"):
        assert np.array_equal(valid_mask(split[key]), expected), key
        assert np.all(split[key][~expected] == 0), key


def test_presets_match_the_real_files() -> None:
    mosi, mosei, iemocap = PRESETS["mosi"], PRESETS["mosei"], PRESETS["iemocap"]
    assert (mosi.n_train, mosi.n_valid, mosi.n_test, mosi.seq_len) == (1284, 229, 686, 50)
    assert (mosi.text_dim, mosi.audio_dim, mosi.vision_dim, mosi.file_name) == (300, 5, 20, "aligned_50.pkl")
    assert (mosei.n_train, mosei.n_valid, mosei.n_test, mosei.seq_len) == (16326, 1871, 4659, 50)
    assert (mosei.text_dim, mosei.audio_dim, mosei.vision_dim, mosei.file_name) == (300, 74, 35, "aligned_50.pkl")
    assert (iemocap.n_train, iemocap.n_valid, iemocap.n_test, iemocap.seq_len) == (2717, 798, 938, 20)
    assert (iemocap.text_dim, iemocap.audio_dim, iemocap.vision_dim) == (300, 74, 35)
    assert iemocap.file_name == "iemocap_data.pkl" and iemocap.file_format == "mult"
    # language carries the strongest signal
    for cfg in PRESETS.values():
        assert cfg.language.view_noise < min(cfg.audio.view_noise, cfg.vision.view_noise)


@pytest.mark.parametrize("preset", ["mosi", "mosei"])
def test_mmsa_schema(preset: str, label_csv: Path, tmp_path: Path) -> None:
    cfg = replace(PRESETS[preset], **TINY)
    path = write_synth(preset, tmp_path / "out", seed=3, cfg=cfg, label_csv=label_csv)
    assert path == tmp_path / "out" / "aligned_50.pkl"
    assert path.read_bytes()[:2] == b"\x80\x04"  # pickle protocol 4
    data = load(path)
    rows = read_label_csv(label_csv)
    known_text = {r.text: len(r.text.split()) for r in rows}
    known_labels = {np.float32(r.label) for r in rows}
    assert list(data) == list(SPLITS)
    all_ids: list[str] = []
    for split_name in SPLITS:
        split = data[split_name]
        n = TINY[f"n_{split_name}"]
        assert list(split) == MMSA_KEYS  # aligned: no *_lengths keys
        assert split["text"].shape == (n, 50, cfg.text_dim) and split["text"].dtype == np.float32
        assert split["audio"].shape == (n, 50, cfg.audio_dim) and split["audio"].dtype == np.float32
        assert split["vision"].shape == (n, 50, cfg.vision_dim) and split["vision"].dtype == np.float32
        assert split["text_bert"].shape == (n, 3, 50) and split["text_bert"].dtype == np.int64
        assert split["regression_labels"].shape == (n,) and split["regression_labels"].dtype == np.float32
        for key in ("raw_text", "id", "annotations"):
            assert split[key].shape == (n,) and split[key].dtype.kind == "U"
        # transcripts, labels and lengths come from the label file
        words = np.array([known_text[t] for t in split["raw_text"]])
        assert set(split["regression_labels"].tolist()) <= known_labels
        assert np.all(np.abs(split["regression_labels"]) <= 3)
        lengths = np.clip(words, 1, 50)
        check_pre_padding(split, lengths, 50)
        # text_bert: [CLS] first, [SEP] at len - 1, mask row, zero token types, zero padding
        ids, mask, types = split["text_bert"][:, 0], split["text_bert"][:, 1], split["text_bert"][:, 2]
        n_tok = np.minimum(words, 48) + 2
        assert np.array_equal(mask.sum(axis=1), n_tok)
        assert np.array_equal(mask, (np.arange(50)[None, :] < n_tok[:, None]).astype(np.int64))
        assert np.all(ids[:, 0] == 101) and np.all(ids[np.arange(n), n_tok - 1] == 102)
        assert np.all(ids[mask == 0] == 0) and np.all(types == 0)
        inner = ids[(mask == 1) & (ids != 101) & (ids != 102)]
        assert np.all((inner >= 1996) & (inner < 30522))
        # annotations and classes follow the sign of the score
        sign = np.sign(split["regression_labels"]).astype(int)
        assert np.array_equal(split["classification_labels"], sign + 1)
        names = np.array(["Negative", "Neutral", "Positive"])[sign + 1]
        assert np.array_equal(split["annotations"], names)
        for sample_id in split["id"]:
            video, sep, clip = sample_id.rpartition("$_$")
            assert sep and len(video) == 11 and clip.isdigit() and int(clip) >= 1
        all_ids.extend(split["id"].tolist())
    assert len(set(all_ids)) == len(all_ids)
    assert LONG_TEXT in set(np.concatenate([data[s]["raw_text"] for s in SPLITS]).tolist())


def test_bert_flavour_has_768_dim_text(label_csv: Path) -> None:
    cfg = replace(PRESETS["mosi"], text_dim=768, **TINY)
    data = generate_synth(cfg, seed=0, label_rows=read_label_csv(label_csv))
    assert data["valid"]["text"].shape == (12, 50, 768)


def test_iemocap_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the emotion preset needs no label file: a broken lookup must not matter
    monkeypatch.setenv("HRLF_MOSI_LABELS", str(tmp_path / "missing.csv"))
    cfg = replace(PRESETS["iemocap"], **TINY)
    path = write_synth("iemocap", tmp_path, seed=1, cfg=cfg)
    assert path.name == "iemocap_data.pkl"
    data = load(path)
    assert list(data) == list(SPLITS)
    all_ids: set[tuple[bytes, ...]] = set()
    for split_name in SPLITS:
        split = data[split_name]
        n = TINY[f"n_{split_name}"]
        assert list(split) == MULT_KEYS
        for key, dim in (("text", 300), ("audio", 74), ("vision", 35)):
            assert split[key].shape == (n, 20, dim) and split[key].dtype == np.float32
        labels = split["labels"]
        assert labels.shape == (n, 4, 2) and labels.dtype == np.float32
        assert set(np.unique(labels).tolist()) <= {0.0, 1.0}
        assert np.all(labels.sum(axis=2) == 1)  # one-hot [absent, present] per emotion
        assert np.all(labels[:, :, 1].sum(axis=1) == 1)  # exactly one emotion present
        assert split["id"].shape == (n, 3) and split["id"].dtype.kind == "S"
        lengths = valid_mask(split["text"]).sum(axis=1)
        assert np.all((lengths >= 1) & (lengths <= 20))
        check_pre_padding(split, lengths, 20)
        for video, start, end in split["id"]:
            assert video.startswith(b"Ses") and float(start) < float(end)
        all_ids.update(tuple(row) for row in split["id"].tolist())
    assert len(all_ids) == sum(TINY.values())


def test_all_emotions_occur() -> None:
    cfg = replace(PRESETS["iemocap"], n_train=200, n_valid=12, n_test=12)
    data = generate_synth(cfg, seed=0)
    counts = data["train"]["labels"][:, :, 1].sum(axis=0)
    assert np.all(counts > 0)
    assert counts[0] == counts.max()  # Neutral is the most frequent class, as in IEMOCAP


def test_same_seed_same_bytes_different_seed_different(label_csv: Path, tmp_path: Path) -> None:
    cfg = replace(PRESETS["mosi"], **TINY)

    def digest(folder: str, seed: int) -> str:
        path = write_synth("mosi", tmp_path / folder, seed=seed, cfg=cfg, label_csv=label_csv)
        return hashlib.sha256(path.read_bytes()).hexdigest()

    assert digest("a", 7) == digest("b", 7)
    assert digest("c", 8) != digest("a", 7)


def test_iemocap_is_deterministic(tmp_path: Path) -> None:
    cfg = replace(PRESETS["iemocap"], **TINY)
    first = write_synth("iemocap", tmp_path / "a", seed=2, cfg=cfg).read_bytes()
    second = write_synth("iemocap", tmp_path / "b", seed=2, cfg=cfg).read_bytes()
    assert first == second


def test_maps_are_shared_across_seeds_and_splits() -> None:
    cfg = replace(PRESETS["mosi"], **TINY)
    first, second = synth._build_map(cfg, "audio", 1), synth._build_map(cfg, "audio", 1)
    assert np.array_equal(first.w1, second.w1) and np.array_equal(first.w2, second.w2)
    other = synth._build_map(replace(cfg, map_seed=cfg.map_seed + 1), "audio", 1)
    assert not np.array_equal(first.w1, other.w1)


def test_write_is_atomic(label_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = replace(PRESETS["mosi"], **TINY)
    out = tmp_path / "out"
    path = write_synth("mosi", out, seed=0, cfg=cfg, label_csv=label_csv)
    assert sorted(p.name for p in out.iterdir()) == ["aligned_50.pkl"]
    before = path.read_bytes()

    class FailingPickler:
        def __init__(self, handle: object, protocol: int) -> None:  # noqa: ARG002 - pickle.Pickler's signature
            self.handle = handle

        def dump(self, _obj: object) -> None:
            self.handle.write(b"partial")  # type: ignore[attr-defined]
            raise OSError("disk full")

    monkeypatch.setattr(synth.pickle, "Pickler", FailingPickler)
    with pytest.raises(OSError, match="disk full"):
        write_synth("mosi", out, seed=1, cfg=cfg, label_csv=label_csv)
    assert sorted(p.name for p in out.iterdir()) == ["aligned_50.pkl"]  # no temp file left behind
    assert path.read_bytes() == before  # the old file is untouched


def test_real_frames_are_never_all_zero(label_csv: Path) -> None:
    # one audio dimension and a huge chunk count stress the guard; every valid frame must stay non-zero
    cfg = replace(PRESETS["mosi"], audio_dim=1, chunk_size=3, **TINY)
    data = generate_synth(cfg, seed=5, label_rows=read_label_csv(label_csv))
    for split in data.values():
        text_valid = valid_mask(split["text"])
        assert np.array_equal(valid_mask(split["audio"]), text_valid)


def test_language_carries_the_strongest_signal() -> None:
    rng = np.random.default_rng(0)
    rows = [
        LabelRow("v", str(i), " ".join(["w"] * (8 + i % 10)), float(rng.uniform(-3, 3)), "train", f"v$_${i}")
        for i in range(60)
    ]  # MOSI-like word counts (8 to 17) so that lengths do not limit the signal
    cfg = replace(PRESETS["mosi"], n_train=1000, n_valid=12, n_test=12)
    data = generate_synth(cfg, seed=0, label_rows=rows)["train"]
    y = data["regression_labels"].astype(np.float64)

    def held_out_corr(key: str) -> float:
        x = data[key]
        pooled = x.sum(axis=1) / valid_mask(x).sum(axis=1, keepdims=True)  # (N, T, D) -> (N, D)
        pooled = (pooled - pooled[:700].mean(axis=0)) / (pooled[:700].std(axis=0) + 1e-6)
        design = np.concatenate([pooled, np.ones((len(y), 1))], axis=1)
        fit, held = design[:700], design[700:]
        coef = np.linalg.solve(fit.T @ fit + 100.0 * np.eye(design.shape[1]), fit.T @ y[:700])
        return float(np.corrcoef(held @ coef, y[700:])[0, 1])

    language, audio, vision = held_out_corr("text"), held_out_corr("audio"), held_out_corr("vision")
    assert language > max(audio, vision) + 0.1
    assert min(audio, vision) > 0.1  # weaker, but not empty


def test_invalid_requests_raise(label_csv: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown synth preset"):
        write_synth("sims", tmp_path)
    bad: list[SynthCfg] = [
        replace(PRESETS["mosi"], n_valid=0),
        replace(PRESETS["mosi"], seq_len=2),
        replace(PRESETS["mosi"], language=replace(PRESETS["mosi"].language, signal_frac=1.5)),
        replace(PRESETS["iemocap"], class_probs=(0.5, 0.5)),
        replace(PRESETS["mosi"], file_format="mult"),
    ]
    for cfg in bad:
        with pytest.raises(ValueError, match="invalid SynthCfg"):
            write_synth("mosi", tmp_path, cfg=cfg, label_csv=label_csv)
    with pytest.raises(ValueError, match="seed"):
        write_synth("mosi", tmp_path, seed=-1, cfg=replace(PRESETS["mosi"], **TINY), label_csv=label_csv)
    assert not any(tmp_path.glob("*.pkl"))


def test_all_zero_guard_keeps_real_frames_visible() -> None:
    cfg = replace(PRESETS["mosi"], **TINY)
    base = synth._build_map(cfg, "audio", 1)
    dead = replace(base, w2=np.zeros_like(base.w2), b2=np.zeros_like(base.b2), noise_std=np.zeros_like(base.noise_std))
    lengths = np.array([1, 5, 50])
    view = np.zeros((3, 1), dtype=np.float32)
    nuisance = np.zeros((3, cfg.nuisance_dim), dtype=np.float32)
    out = synth._features(cfg, "audio", view, nuisance, lengths, dead, (0, 0, 0, 0, 0))
    assert np.array_equal(valid_mask(out).sum(axis=1), lengths)


def test_bytes_do_not_depend_on_blas_threads(label_csv: Path) -> None:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    cfg = replace(PRESETS["mosi"], **TINY)
    rows = read_label_csv(label_csv)
    outputs = []
    for threads in (1, 2):
        with threadpoolctl.threadpool_limits(limits=threads):
            outputs.append(pickle.dumps(generate_synth(cfg, seed=4, label_rows=rows), protocol=4))
    assert outputs[0] == outputs[1]


def test_stand_in_label_rows_look_like_mosi() -> None:
    rows = synth.stand_in_label_rows(seed=0)
    assert rows == synth.stand_in_label_rows(seed=0)  # deterministic
    assert rows != synth.stand_in_label_rows(seed=1)
    for split, n in synth.STAND_IN_SPLIT_SIZES.items():
        assert sum(r.mode == split for r in rows) == n
    assert len({r.sample_id for r in rows}) == len(rows)
    labels = np.array([r.label for r in rows])
    assert labels.min() >= -3 and labels.max() <= 3
    assert np.allclose(labels * 3, np.rint(labels * 3), atol=1e-5)  # the mean of three 7-point ratings
    assert 0.4 < (labels > 0).mean() < 0.6 and 0.02 < (labels == 0).mean() < 0.08
    assert 1.4 < labels.std() < 1.8  # the real file: 1.57
    words = np.array([len(r.text.split()) for r in rows])
    assert words.min() >= 1 and 11 < words.mean() < 14  # the real file: 12.6


def test_regression_presets_work_without_the_label_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(synth, "find_mosi_label_csv", lambda: None)  # a standalone install: no shared/ folder
    path = write_synth("mosi", tmp_path, seed=0, cfg=replace(PRESETS["mosi"], **TINY))
    assert "stand-ins" in caplog.text
    data = load(path)
    pool = {r.text: r.label for r in synth.stand_in_label_rows(seed=0)}
    for split_name in SPLITS:
        split = data[split_name]
        assert list(split) == MMSA_KEYS
        for text, label in zip(split["raw_text"], split["regression_labels"], strict=True):
            assert pool[str(text)] == pytest.approx(float(label), abs=1e-6)  # drawn from the stand-in rows


def test_a_stated_label_path_that_is_missing_stays_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hrlf.data.labels import LabelFileError

    monkeypatch.setenv("HRLF_MOSI_LABELS", str(tmp_path / "missing.csv"))
    with pytest.raises(LabelFileError, match="missing.csv"):
        write_synth("mosi", tmp_path, seed=0, cfg=replace(PRESETS["mosi"], **TINY))
    with pytest.raises(LabelFileError, match="nope.csv"):
        write_synth("mosi", tmp_path, seed=0, cfg=replace(PRESETS["mosi"], **TINY), label_csv=tmp_path / "nope.csv")
