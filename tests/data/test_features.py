"""Reading MMSA and MulT/CMU-SDK feature pickles: round trips, padding masks, ids, validation, non-finite policy."""

from __future__ import annotations

import hashlib
import logging
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hrlf.data.features import DataFileError, FeatureFile, describe, load_features
from hrlf.types import IEMOCAP_EMOTIONS, TaskSpec

SIZES = {"train": 5, "valid": 3, "test": 4}
D_TEXT, D_AUDIO, D_VISION = 8, 3, 4
T_TEXT, T_AUDIO, T_VISION = 5, 8, 7  # unaligned lengths
T_ALIGNED = 6

Data = dict[str, dict[str, Any]]

# ------------------------------------------------------------------------------------------ file builders


def _lengths(n: int, t: int) -> np.ndarray:
    """Deterministic lengths 1..t, including a full-length sample."""
    return (np.arange(n) + t - 2) % t + 1


def _features(rng: np.random.Generator, lengths: np.ndarray, t: int, d: int, *, pad_start: bool) -> np.ndarray:
    """(N, T, D) non-zero features with zero padding at the start (CMU-SDK aligned) or the end (MMSA)."""
    x = (rng.uniform(0.5, 1.5, size=(len(lengths), t, d)) * rng.choice([-1, 1], size=(len(lengths), t, d))).astype(
        np.float32
    )
    for i, length in enumerate(lengths):
        if pad_start:
            x[i, : t - length] = 0
        else:
            x[i, length:] = 0
    return x


def _text_bert(rng: np.random.Generator, lengths: np.ndarray, t: int) -> np.ndarray:
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int64)
    input_ids = rng.integers(1000, 2000, size=(len(lengths), t)) * mask
    return np.stack([input_ids, mask, np.zeros_like(mask)], axis=1)  # (N, 3, T)


def _mmsa_split(rng: np.random.Generator, split: str, n: int, *, aligned: bool) -> dict[str, Any]:
    t_text, t_audio, t_vision = (T_ALIGNED,) * 3 if aligned else (T_TEXT, T_AUDIO, T_VISION)
    text_lengths = _lengths(n, t_text)
    labels = np.round(rng.uniform(-3, 3, size=n), 1).astype(np.float32)
    labels[0] = 0.0
    data: dict[str, Any] = {
        "raw_text": np.array([f"{split} sentence {i}" for i in range(n)], dtype=object),
        "id": np.array([f"video_{split}{i}$_${i}" for i in range(n)], dtype=object),
        "text": _features(rng, text_lengths, t_text, D_TEXT, pad_start=False),
        "text_bert": _text_bert(rng, text_lengths, t_text),
        "annotations": np.array(["Positive" if y > 0 else "Negative" for y in labels], dtype=object),
        "classification_labels": (labels > 0).astype(np.float32),
        "regression_labels": labels,
    }
    if aligned:
        # CMU-SDK aligned padding: shared by audio and vision, at the start
        shared = _lengths(n, T_ALIGNED)
        data["audio"] = _features(rng, shared, T_ALIGNED, D_AUDIO, pad_start=True)
        data["vision"] = _features(rng, shared, T_ALIGNED, D_VISION, pad_start=True)
        data["vision"][0, -1] = 0  # a real frame that happens to be zero in vision only
    else:
        audio_lengths, vision_lengths = _lengths(n, t_audio)[::-1].copy(), _lengths(n, t_vision)
        data["audio"] = _features(rng, audio_lengths, t_audio, D_AUDIO, pad_start=False)
        data["audio"][0, 0] = 0  # an all-zero frame inside the declared length stays valid
        data["vision"] = _features(rng, vision_lengths, t_vision, D_VISION, pad_start=False)
        data["audio_lengths"] = audio_lengths
        data["vision_lengths"] = vision_lengths.tolist()  # some writers store lists
    return data


def mmsa_file(*, aligned: bool, seed: int = 0) -> Data:
    rng = np.random.default_rng(seed)
    return {split: _mmsa_split(rng, split, n, aligned=aligned) for split, n in SIZES.items()}


def _emotion_pairs(rng: np.random.Generator, n: int) -> np.ndarray:
    present = rng.integers(0, 2, size=(n, len(IEMOCAP_EMOTIONS)))
    present[0] = [1, 0, 0, 1]
    return np.eye(2, dtype=np.float32)[present]  # (N, 4) -> (N, 4, 2) one-hot [absent, present]


def mult_file(*, emotions: bool, aligned: bool, seed: int = 0) -> Data:
    """MulT/CMU-SDK pickle: MOSI-style (labels (N, 1, 1), no ids) or IEMOCAP-style ((N, 4, 2), byte ids (N, 3))."""
    rng = np.random.default_rng(seed)
    data: Data = {}
    for split, n in SIZES.items():
        if aligned:
            shared = _lengths(n, T_ALIGNED)
            text = _features(rng, shared, T_ALIGNED, D_TEXT, pad_start=True)
            audio = _features(rng, shared, T_ALIGNED, D_AUDIO, pad_start=True)
            vision = _features(rng, shared, T_ALIGNED, D_VISION, pad_start=True)
            text[1, -1] = 0  # a real frame that is zero in one modality only
        else:
            text = _features(rng, _lengths(n, T_TEXT), T_TEXT, D_TEXT, pad_start=True)
            audio = _features(rng, _lengths(n, T_AUDIO)[::-1].copy(), T_AUDIO, D_AUDIO, pad_start=True)
            vision = _features(rng, _lengths(n, T_VISION), T_VISION, D_VISION, pad_start=True)
        entry: dict[str, Any] = {"text": text, "audio": audio.astype(np.float64), "vision": vision}
        if emotions:
            entry["labels"] = _emotion_pairs(rng, n)
            entry["id"] = np.array([[f"Ses0{i}F_impro0{i}".encode(), f"{i}.5".encode(), b"2.0"] for i in range(n)])
        else:
            entry["labels"] = np.round(rng.uniform(-3, 3, size=(n, 1, 1)), 2)
        data[split] = entry
    return data


def write(path: Path, data: object, protocol: int = 4) -> Path:
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    return path


def expected_valid(lengths: np.ndarray, t: int, *, pad_start: bool) -> np.ndarray:
    positions = np.arange(t)[None, :]
    return positions >= (t - lengths)[:, None] if pad_start else positions < lengths[:, None]


# ------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_mmsa_unaligned_round_trip(tmp_path: Path, protocol: int) -> None:
    data = mmsa_file(aligned=False)
    path = write(tmp_path / "unaligned_50.pkl", data, protocol)
    ff = load_features(path)

    assert isinstance(ff, FeatureFile)
    assert ff.format == "mmsa" and ff.path == str(path)
    assert ff.task == TaskSpec(kind="regression", label_range=(-3.0, 3.0))
    assert ff.dims == {"language": D_TEXT, "audio": D_AUDIO, "vision": D_VISION}
    assert ff.lengths == {"language": T_TEXT, "audio": T_AUDIO, "vision": T_VISION}
    assert ff.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert ff.nonfinite == {}
    for split, n in SIZES.items():
        raw, got = data[split], ff.splits[split]
        assert len(got) == n
        for modality, key in (("language", "text"), ("audio", "audio"), ("vision", "vision")):
            assert got.features[modality].dtype == np.float32
            np.testing.assert_array_equal(got.features[modality], raw[key])
            assert got.valid[modality].dtype == bool
        text_lengths = raw["text_bert"][:, 1].sum(axis=1)
        np.testing.assert_array_equal(got.valid["language"], expected_valid(text_lengths, T_TEXT, pad_start=False))
        np.testing.assert_array_equal(
            got.valid["audio"], expected_valid(raw["audio_lengths"], T_AUDIO, pad_start=False)
        )
        np.testing.assert_array_equal(
            got.valid["vision"], expected_valid(np.array(raw["vision_lengths"]), T_VISION, pad_start=False)
        )
        np.testing.assert_array_equal(got.labels, raw["regression_labels"])
        assert got.labels.dtype == np.float32
        assert got.ids == list(raw["id"])
        assert got.raw_text == list(raw["raw_text"])
    assert ff.splits["train"].valid["audio"][0, 0]  # declared lengths win over an all-zero frame


def test_mmsa_aligned_masks(tmp_path: Path) -> None:
    data = mmsa_file(aligned=True)
    for split in data.values():  # BERT hidden states are dense: non-zero at [PAD] positions too
        split["text"] = np.where(split["text"] == 0, np.float32(0.25), split["text"])
    ff = load_features(write(tmp_path / "aligned_50.pkl", data))
    for split in SIZES:
        raw, got = data[split], ff.splits[split]
        shared = expected_valid(_lengths(SIZES[split], T_ALIGNED), T_ALIGNED, pad_start=True)
        # audio and vision: inferred, shared (union) padding at the start
        np.testing.assert_array_equal(got.valid["audio"], shared)
        np.testing.assert_array_equal(got.valid["vision"], shared)
        # language: the BERT attention mask (padding at the end)
        np.testing.assert_array_equal(got.valid["language"], raw["text_bert"][:, 1].astype(bool))
    assert ff.splits["train"].valid["vision"][0, -1]  # zero in vision, present in audio -> valid


def test_mmsa_aligned_glove_text_ignores_the_token_mask(tmp_path: Path) -> None:
    # zero-padded word features (GloVe): the zero frames are the padding, shared with audio and vision
    data = mmsa_file(aligned=True)
    for split in data.values():
        shared_valid = np.abs(split["audio"]).sum(-1) + np.abs(split["vision"]).sum(-1) > 0  # (N, T)
        split["text"] = np.where(shared_valid[..., None], np.float32(0.5), np.float32(0.0))
    ff = load_features(write(tmp_path / "aligned_50.pkl", data))
    for split in SIZES:
        got = ff.splits[split]
        np.testing.assert_array_equal(got.valid["language"], got.valid["audio"])
        np.testing.assert_array_equal(got.valid["language"], got.valid["vision"])


def test_sims_like_labels_get_the_unit_range(tmp_path: Path) -> None:
    data = mmsa_file(aligned=False)
    for split in data.values():
        split["regression_labels"] = split["regression_labels"] / 3
        split["regression_labels_T"] = split["regression_labels"]
    assert load_features(write(tmp_path / "sims.pkl", data)).task.label_range == (-1.0, 1.0)

    for split in data.values():
        del split["regression_labels_T"]
    assert load_features(write(tmp_path / "mosi_small_labels.pkl", data)).task.label_range == (-3.0, 3.0)


def test_mult_mosi_aligned_round_trip(tmp_path: Path) -> None:
    data = mult_file(emotions=False, aligned=True)
    ff = load_features(write(tmp_path / "mosi_data.pkl", data))
    assert ff.format == "mult"
    assert ff.task == TaskSpec(kind="regression", label_range=(-3.0, 3.0))
    assert ff.dims == {"language": D_TEXT, "audio": D_AUDIO, "vision": D_VISION}
    for split, n in SIZES.items():
        raw, got = data[split], ff.splits[split]
        np.testing.assert_array_equal(got.labels, raw["labels"].reshape(n).astype(np.float32))
        assert got.labels.shape == (n,) and got.labels.dtype == np.float32
        assert got.ids == [f"{split}_{i}" for i in range(n)]
        assert got.raw_text is None
        assert got.features["audio"].dtype == np.float32  # converted from float64
        np.testing.assert_allclose(got.features["audio"], raw["audio"], rtol=1e-6)
        shared = expected_valid(_lengths(n, T_ALIGNED), T_ALIGNED, pad_start=True)
        for modality in ("language", "audio", "vision"):
            np.testing.assert_array_equal(got.valid[modality], shared)
    assert ff.splits["train"].valid["language"][1, -1]


def test_mult_iemocap_unaligned_round_trip(tmp_path: Path) -> None:
    data = mult_file(emotions=True, aligned=False)
    ff = load_features(write(tmp_path / "iemocap_data_noalign.pkl", data))
    assert ff.task == TaskSpec(kind="emotions", label_names=IEMOCAP_EMOTIONS)
    assert ff.lengths == {"language": T_TEXT, "audio": T_AUDIO, "vision": T_VISION}
    for split, n in SIZES.items():
        raw, got = data[split], ff.splits[split]
        assert got.labels.shape == (n, 4) and got.labels.dtype == np.int64
        np.testing.assert_array_equal(got.labels, raw["labels"].argmax(-1))
        assert got.ids[1] == "Ses01F_impro01$_$1.5$_$2.0"
        # different T per modality: each mask is inferred on its own (CMU-SDK pads at the start)
        np.testing.assert_array_equal(
            got.valid["language"], expected_valid(_lengths(n, T_TEXT), T_TEXT, pad_start=True)
        )
        audio_lengths = _lengths(n, T_AUDIO)[::-1]
        np.testing.assert_array_equal(got.valid["audio"], expected_valid(audio_lengths, T_AUDIO, pad_start=True))
    np.testing.assert_array_equal(ff.splits["train"].labels[0], [1, 0, 0, 1])


def test_string_ids_of_shape_n_by_k_are_joined(tmp_path: Path) -> None:
    data = mult_file(emotions=False, aligned=True)
    for split, entry in data.items():
        entry["id"] = np.array([[f"vid{split}", str(i)] for i in range(SIZES[split])])  # unicode (N, 2)
    ff = load_features(write(tmp_path / "ids.pkl", data))
    assert ff.splits["valid"].ids == ["vidvalid$_$0", "vidvalid$_$1", "vidvalid$_$2"]


# -------------------------------------------------------------------------------------------- non-finite


def _with_inf(data: Data) -> Data:
    data["train"]["audio"][1, -1, 0] = -np.inf
    data["train"]["audio"][2, -1, :2] = -np.inf
    data["test"]["audio"][0, -1, 1] = np.nan
    return data


def test_nonfinite_zero_policy_replaces_counts_and_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "mosei_like.pkl", _with_inf(mmsa_file(aligned=True)))
    with caplog.at_level(logging.WARNING, logger="hrlf.data.features"):
        ff = load_features(path)
    assert ff.nonfinite == {"train/audio": 3, "test/audio": 1}
    for split in ff.splits.values():
        assert np.isfinite(split.features["audio"]).all()
    assert ff.splits["train"].features["audio"][2, -1, :2].tolist() == [0.0, 0.0]
    assert any("non-finite" in r.message and "train/audio 3" in r.message for r in caplog.records)


def test_nonfinite_error_policy_refuses(tmp_path: Path) -> None:
    path = write(tmp_path / "mosei_like.pkl", _with_inf(mmsa_file(aligned=True)))
    with pytest.raises(DataFileError) as info:
        load_features(path, nonfinite="error")
    message = str(info.value)
    assert "mosei_like.pkl" in message and "split 'train' key 'audio'" in message and "3 non-finite" in message


def test_unknown_nonfinite_policy_is_a_value_error(tmp_path: Path) -> None:
    path = write(tmp_path / "ok.pkl", mmsa_file(aligned=True))
    with pytest.raises(ValueError, match="nonfinite"):
        load_features(path, nonfinite="drop")


# -------------------------------------------------------------------------------------------- validation


def _set(split: str, key: str, fn: Callable[[Any], Any]) -> Callable[[Data], None]:
    def mutate(data: Data) -> None:
        data[split][key] = fn(data[split][key])

    return mutate


def _delete(split: str, key: str) -> Callable[[Data], None]:
    def mutate(data: Data) -> None:
        del data[split][key]

    return mutate


def _empty(split: str) -> Callable[[Data], None]:
    def mutate(data: Data) -> None:
        for key, value in data[split].items():
            data[split][key] = value[:0]

    return mutate


def _set_item(split: str, key: str, index: Any, value: Any) -> Callable[[Data], None]:
    def mutate(data: Data) -> None:
        data[split][key][index] = value

    return mutate


MMSA_ERRORS = {
    "missing key": (_delete("valid", "audio"), "valid", "audio", "expected the key in an MMSA file"),
    "missing id": (_delete("test", "id"), "test", "id", "expected the key"),
    "wrong ndim": (
        _set("valid", "audio", lambda x: x[:, :, 0]),
        "valid",
        "audio",
        f"expected a 3-D array (N, T, D), found shape ({SIZES['valid']}, {T_AUDIO})",
    ),
    "not an array": (_set("train", "vision", lambda x: x.tolist()), "train", "vision", "found list"),
    "N across modalities": (_set("train", "vision", lambda x: x[:-1]), "train", "vision", "N = 5"),
    "N of labels": (_set("train", "regression_labels", lambda x: x[:-1]), "train", "text", "N = 4"),
    "N of ids": (_set("test", "id", lambda x: x[:-1]), "test", "id", "N = 4"),
    "N of lengths": (_set("test", "audio_lengths", lambda x: x[:-1]), "test", "audio_lengths", "N = 4"),
    "N of raw_text": (_set("valid", "raw_text", lambda x: x[:-1]), "valid", "raw_text", "N = 3"),
    "dims across splits": (
        _set("test", "audio", lambda x: np.concatenate([x, x[..., :1]], axis=-1)),
        "test",
        "audio",
        f"feature dim D = {D_AUDIO} (as in split 'train'), found D = {D_AUDIO + 1}",
    ),
    "length > T": (_set_item("train", "audio_lengths", 2, T_AUDIO + 1), "train", "audio_lengths", f"T = {T_AUDIO}"),
    "length < 0": (_set_item("valid", "audio_lengths", 0, -1), "valid", "audio_lengths", "min -1"),
    "fractional length": (
        _set("valid", "vision_lengths", lambda x: np.asarray(x) + 0.5),
        "valid",
        "vision_lengths",
        "integer lengths",
    ),
    "label out of range": (_set_item("test", "regression_labels", 1, 3.5), "test", "regression_labels", "[-3, 3]"),
    "label not finite": (
        _set_item("train", "regression_labels", 0, np.nan),
        "train",
        "regression_labels",
        "1 non-finite",
    ),
    "empty split": (_empty("valid"), "valid", "regression_labels", "N = 0"),
    "non-numeric dtype": (_set("test", "vision", lambda x: x.astype(object)), "test", "vision", "dtype object"),
    "string features": (_set("train", "text", lambda x: x.astype(str)), "train", "text", "numeric"),
    "text_bert shape": (_set("train", "text_bert", lambda x: x[:, :2]), "train", "text_bert", "(5, 3, 5)"),
    "text_bert mask": (_set_item("valid", "text_bert", (0, 1, 0), 7), "valid", "text_bert", "0/1"),
    "undecodable id": (_set_item("train", "id", 0, b"\xff\xfe"), "train", "id", "UTF-8"),
}


@pytest.mark.parametrize("case", list(MMSA_ERRORS), ids=list(MMSA_ERRORS))
def test_mmsa_schema_errors_name_file_split_and_key(tmp_path: Path, case: str) -> None:
    mutate, split, key, fragment = MMSA_ERRORS[case]
    data = mmsa_file(aligned=False)
    mutate(data)
    path = write(tmp_path / "broken_mmsa.pkl", data)
    with pytest.raises(DataFileError) as info:
        load_features(path)
    message = str(info.value)
    assert message.startswith(f"{path}: split '{split}' key '{key}': expected ")
    assert fragment in message
    assert "\n" not in message


MULT_ERRORS = {
    "labels (N, 1)": (_set("train", "labels", lambda x: x[:, :, 0]), "train", "labels", "(N, 1, 1)"),
    "labels (N, 3, 2)": (_set("train", "labels", lambda x: x[:, :3]), "train", "labels", "(N, 4, 2)"),
    "labels differ between splits": (_set("test", "labels", lambda x: x[:, :1, :1]), "test", "labels", "(N, 4, 2)"),
    "not one-hot": (_set_item("valid", "labels", (0, 2), [1.0, 1.0]), "valid", "labels", "1 pairs"),
    "not 0/1": (_set_item("test", "labels", (1, 0), [0.5, 0.5]), "test", "labels", "one-hot"),
    "ids shape": (_set("train", "id", lambda x: x[:, :, None]), "train", "id", "(N,) or (N, K)"),
    "missing key": (_delete("test", "labels"), "test", "labels", "MulT/CMU-SDK"),
}


@pytest.mark.parametrize("case", list(MULT_ERRORS), ids=list(MULT_ERRORS))
def test_mult_schema_errors_name_file_split_and_key(tmp_path: Path, case: str) -> None:
    mutate, split, key, fragment = MULT_ERRORS[case]
    data = mult_file(emotions=True, aligned=False)
    mutate(data)
    path = write(tmp_path / "broken_iemocap.pkl", data)
    with pytest.raises(DataFileError) as info:
        load_features(path)
    message = str(info.value)
    assert message.startswith(f"{path}: split '{split}' key '{key}': expected ")
    assert fragment in message
    assert "\n" not in message


def test_mult_regression_labels_out_of_range(tmp_path: Path) -> None:
    data = mult_file(emotions=False, aligned=True)
    data["valid"]["labels"][2, 0, 0] = -3.25
    with pytest.raises(DataFileError, match=r"mosi\.pkl: split 'valid' key 'labels': expected .*\[-3, 3\]"):
        load_features(write(tmp_path / "mosi.pkl", data))


def test_missing_split_and_wrong_top_level(tmp_path: Path) -> None:
    data = mmsa_file(aligned=True)
    del data["test"]
    with pytest.raises(DataFileError, match=r"no_test\.pkl: split 'test': expected the splits .*found keys"):
        load_features(write(tmp_path / "no_test.pkl", data))
    with pytest.raises(DataFileError, match=r"list\.pkl: expected a dict with the splits"):
        load_features(write(tmp_path / "list.pkl", [1, 2]))
    with pytest.raises(DataFileError, match=r"split 'valid': expected a dict of arrays, found str"):
        load_features(write(tmp_path / "str_split.pkl", {"train": {}, "valid": "x", "test": {}}))


def test_unknown_label_key_is_reported(tmp_path: Path) -> None:
    data = mmsa_file(aligned=True)
    for split in data.values():
        split["sentiment"] = split.pop("regression_labels")
    with pytest.raises(DataFileError, match=r"split 'train' key 'regression_labels': expected .*'labels' \(MulT"):
        load_features(write(tmp_path / "odd.pkl", data))


def test_missing_file_and_malformed_pickle(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="absent.pkl"):
        load_features(tmp_path / "absent.pkl")
    (tmp_path / "cut.pkl").write_bytes(pickle.dumps(mmsa_file(aligned=True))[:100])
    with pytest.raises(DataFileError, match=r"cut\.pkl: not a readable pickle"):
        load_features(tmp_path / "cut.pkl")


# ------------------------------------------------------------------------------------------------ describe


def test_describe_regression_file(tmp_path: Path) -> None:
    ff = load_features(write(tmp_path / "mosei_like.pkl", _with_inf(mmsa_file(aligned=False))))
    text = describe(ff)
    assert "format: mmsa" in text and "task: regression, labels in [-3, 3]" in text
    assert ff.sha256[:16] in text
    assert "train: N = 5" in text and "valid: N = 3" in text and "test: N = 4" in text
    assert f"audio    (T, D) = ({T_AUDIO}, {D_AUDIO}), mean valid length" in text
    assert "zero 20.0%" in text and "positive" in text and "std" in text
    assert "train/audio 3" in text


def test_describe_emotions_file(tmp_path: Path) -> None:
    data = mult_file(emotions=True, aligned=True)
    data["train"]["text"][3] = 0
    data["train"]["audio"][3] = 0
    data["train"]["vision"][3] = 0
    ff = load_features(write(tmp_path / "iemocap.pkl", data))
    text = describe(ff)
    positives = data["train"]["labels"].argmax(-1).sum(axis=0)
    assert f"Neutral {positives[0]}, Happy {positives[1]}, Sad {positives[2]}, Angry {positives[3]}" in text
    assert "(1 sample without any valid frame)" in text
    assert "non-finite feature values: none" in text


def test_the_dataset_name_comes_from_the_file_never_its_folder() -> None:
    from types import SimpleNamespace

    from hrlf.data.features import dataset_name

    def fake(kind: str, sizes: tuple[int, int, int], path: str) -> Any:
        splits = dict(zip(("train", "valid", "test"), (range(n) for n in sizes), strict=True))
        return SimpleNamespace(task=TaskSpec(kind=kind), splits=splits, path=path)  # type: ignore[arg-type]

    assert dataset_name(fake("regression", (1284, 229, 686), "/data/mt/minilm.pkl")) == "mosi"
    assert dataset_name(fake("regression", (16326, 1871, 4659), "/x/mt/aligned_50.pkl")) == "mosei"
    assert dataset_name(fake("emotions", (2717, 798, 938), "/x/mt/iemocap_data.pkl")) == "iemocap"
    assert dataset_name(fake("regression", (48, 16, 16), "/data/mt/minilm.pkl")) == "minilm"  # not "mt"
