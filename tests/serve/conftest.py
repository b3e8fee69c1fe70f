"""A small model trained on clips the tests make, and ``hrlf serve`` on a free port of 127.0.0.1 for it."""

from __future__ import annotations

import csv
import socket
import threading
import time
from pathlib import Path

import pytest
from tests.extract.conftest import extractor, media_dir  # noqa: F401  (fixtures, re-exported for tests/serve)

#: request body limit of the test server (MB): the oversized-upload tests send a little more
LIMIT_MB = 1.0


def _serve_stack() -> None:
    for module in ("starlette", "uvicorn", "multipart"):
        pytest.importorskip(module, reason="serve extra not installed (make test-serve)")


@pytest.fixture(scope="session")
def trained_run(media_dir, tmp_path_factory) -> Path:  # noqa: F811
    """A backbone trained for two epochs on features `hrlf extract` wrote for the test clips (all three
    modalities occur in training, so the model reads each of them)."""
    _serve_stack()
    from hrlf.cli import main

    root = tmp_path_factory.mktemp("serve_model")
    labels = root / "label.csv"
    rows = [
        ("talk", "1", 2.0, "train"), ("talk", "2", -2.0, "train"), ("screen", "1", -1.0, "train"),
        ("radio", "1", 1.6, "valid"), ("talk", "2", -2.0, "test"),
    ]  # fmt: skip
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "clip_id", "text", "label", "label_T", "label_A", "label_V", "annotation", "mode"])
        for video, clip, label, mode in rows:
            w.writerow([video, clip, "", label, label, label, label, "", mode])
    data = root / "feats.pkl"
    argv = ["extract", "--labels", str(labels), "--media", str(media_dir), "--out", str(data), "--no-progress"]
    assert main(argv) == 0
    run = root / "run"
    overrides = ["train.epochs=2", "train.batch_size=2", "model.d_model=8", "model.num_heads=2", "train.progress=false"]
    argv = ["train", "--model", "backbone", "--data", str(data), "--out", str(run), "--protocol", "inter"]
    assert main([*argv, *(x for o in overrides for x in ("--set", o))]) == 0
    return run


@pytest.fixture(scope="session")
def emotion_run(tmp_path_factory) -> Path:
    """An IEMOCAP-style (four emotions) backbone, one epoch on a tiny synthetic file whose feature sizes are the
    extractors' own, so that uploads and typed text can be predicted with it."""
    _serve_stack()
    import dataclasses

    from hrlf.cli import main
    from hrlf.data.synth import PRESETS, write_synth
    from hrlf.extract.pipeline import EXTRACTOR_DIMS

    root = tmp_path_factory.mktemp("serve_emotions")
    dims = {"text_dim": EXTRACTOR_DIMS["language"], "audio_dim": EXTRACTOR_DIMS["audio"]}
    cfg = dataclasses.replace(PRESETS["iemocap"], n_train=32, n_valid=8, n_test=8, **dims,
                              vision_dim=EXTRACTOR_DIMS["vision"])  # fmt: skip
    data = write_synth("iemocap", root / "data", seed=0, cfg=cfg)
    run = root / "run"
    overrides = ["train.epochs=1", "train.batch_size=8", "model.d_model=8", "model.num_heads=2", "train.progress=false"]
    argv = ["train", "--model", "backbone", "--data", str(data), "--out", str(run), "--protocol", "inter"]
    assert main([*argv, *(x for o in overrides for x in ("--set", o))]) == 0
    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def upload_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("uploads")


def _serving(run: Path, upload_root: Path):
    """Start the server for ``run`` in a thread of this process; yields its base URL, then stops it."""
    from hrlf.serve.app import ServeCfg, build_server

    cfg = ServeCfg(port=free_port(), max_upload_mb=LIMIT_MB, upload_dir=str(upload_root))
    srv = build_server(run, cfg)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{cfg.port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="session")
def server(trained_run, upload_root):
    yield from _serving(trained_run, upload_root)


@pytest.fixture(scope="session")
def emotion_server(emotion_run, upload_root):
    yield from _serving(emotion_run, upload_root)
