"""``hrlf serve`` over HTTP: the JSON of ``hrlf predict``, uploads checked by content, limits, no user paths."""

from __future__ import annotations

import http.client
import json
import re
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from tests.serve.conftest import LIMIT_MB

from hrlf.cli import main

pytestmark = pytest.mark.serve


def multipart(files=(), text=None) -> tuple[bytes, str]:
    """(body, content type) of a form with ``files`` [(field name, file name, bytes)] and a ``text`` field."""
    boundary = uuid.uuid4().hex
    parts = []
    for field, name, data in files:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
        parts.append(head.encode() + b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n")
    if text is not None:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="text"\r\n\r\n'
        parts.append(head.encode() + text.encode() + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post(url, files=(), text=None, query="") -> tuple[int, dict]:
    body, ctype = multipart(files, text)
    req = urllib.request.Request(f"{url}/api/predict{query}", data=body, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def predict_cli(run, capsys, *argv) -> list[dict]:
    capsys.readouterr()
    assert main(["predict", str(run), *argv]) == 0
    return [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]


def same_prediction(served: dict, printed: dict) -> None:
    """The served row carries what `hrlf predict` printed for the same input (the name aside)."""
    for key in ("available", "uses", "polarity", "transcript", "alignment", "duration"):
        assert served.get(key) == printed.get(key), key
    assert served["score"] == pytest.approx(printed["score"], abs=1e-4)
    assert set(served["removed"]) == set(printed["removed"])
    for m, change in printed["removed"].items():
        assert served["removed"][m]["change"] == pytest.approx(change["change"], abs=1e-4)


def test_page_loads_nothing_from_elsewhere(server):
    with urllib.request.urlopen(server + "/", timeout=30) as r:
        page = r.read().decode()
        assert r.headers["Content-Type"].startswith("text/html")
    assert "<form" in page and 'id="predict"' in page
    # no script, style, font or image from another origin (the page must work with the network off)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page and not re.search(r"url\(\s*['\"]?(https?:)?//", page)
    with urllib.request.urlopen(server + "/api/info", timeout=30) as r:
        info = json.loads(r.read())
    assert info["model"] == "backbone" and info["task"] == "regression"
    assert info["uses"] == ["language", "audio", "vision"]
    assert info["max_upload_bytes"] == int(LIMIT_MB * 1024 * 1024)


def test_a_clip_gets_the_json_of_hrlf_predict(server, trained_run, media_dir, capsys):
    clip = media_dir / "talk" / "1.mp4"
    status, answer = post(server, [("files", "talk.mp4", clip.read_bytes())], query="?frames=3")
    assert status == 200
    [row] = answer["results"]
    [printed] = predict_cli(trained_run, capsys, str(clip))
    assert row["input"] == "talk.mp4" and row["media"] == "MP4/QuickTime"
    same_prediction(row, printed)
    assert row["available"] == ["language", "audio", "vision"] and "movie" in row["transcript"].lower()
    assert set(row["seconds"]) >= {"decode", "asr", "text", "audio", "vision", "extract", "predict"}
    frames = row["frames"]
    assert 1 <= len(frames) <= 3 and all(f["jpeg"].startswith("data:image/jpeg;base64,") for f in frames)
    assert all(f["face"] and 0 <= f["box"][0] < f["box"][2] <= 1 for f in frames)  # the real face video


def test_text_only_and_text_as_a_clips_transcript(server, trained_run, media_dir, capsys):
    status, answer = post(server, text="what a great day")
    assert status == 200
    [row] = answer["results"]
    [printed] = predict_cli(trained_run, capsys, "--text", "what a great day")
    assert row["input"] == "--text"
    same_prediction(row, printed)
    assert row["available"] == ["language"]
    # with a file, the typed text is that clip's transcript (instead of speech recognition)
    status, answer = post(server, [("files", "r.wav", (media_dir / "radio" / "1.wav").read_bytes())], text="awful")
    assert status == 200 and answer["results"][0]["transcript"] == "awful"
    assert answer["results"][0]["alignment"] == "uniform" and answer["results"][0]["available"] == ["language", "audio"]


def test_content_decides_not_the_name(server, media_dir):
    files = [
        ("files", "movie.mp4", b"this is not a video\n" * 50),  # text named .mp4
        ("files", "song.txt", (media_dir / "radio" / "1.wav").read_bytes()),  # a WAV named .txt
        ("files", "cut.mp4", (media_dir / "talk" / "1.mp4").read_bytes()[:3000]),  # a real MP4 header, cut
    ]
    status, answer = post(server, files)
    assert status == 200
    text, wav, cut = answer["results"]
    assert text["input"] == "movie.mp4" and "not a file this server reads" in text["error"]
    assert "found text" in text["error"] and "score" not in text
    assert wav["media"] == "WAV" and wav["available"] == ["language", "audio"] and "score" in wav
    assert cut["input"] == "cut.mp4" and "cannot decode" in cut["error"]
    assert "upload-" not in cut["error"] and "/" not in cut["error"].split(":")[0]  # the server's own path is not shown


def test_names_are_never_paths_and_uploads_are_removed(server, media_dir, upload_root, tmp_path):
    target = tmp_path / f"evil-{uuid.uuid4().hex}.wav"
    names = [f"../../../../../..{target}", "..\\..\\..\\win.wav", "/etc/passwd"]
    wav = (media_dir / "radio" / "1.wav").read_bytes()
    status, answer = post(server, [("files", n, wav) for n in names])
    assert status == 200
    assert [r["input"] for r in answer["results"]] == [target.name, "win.wav", "passwd"]
    assert all("score" in r for r in answer["results"])
    assert not target.exists() and Path("/etc/passwd").read_bytes() != wav
    assert list(upload_root.iterdir()) == []  # each request's folder is gone


def test_limits_and_bad_requests_leave_the_server_up(server):
    big = b"\x00" * int((LIMIT_MB + 0.5) * 1024 * 1024)
    status, answer = post(server, [("files", "big.wav", b"RIFF\x00\x00\x00\x00WAVE" + big)])
    assert status == 413 and "over the size limit of 1 MB" in answer["error"]
    # the same without a length announced (chunked): refused while reading
    body, ctype = multipart([("files", "big.wav", b"RIFF\x00\x00\x00\x00WAVE" + big)])
    conn = http.client.HTTPConnection(server.removeprefix("http://"), timeout=60)
    conn.request("POST", "/api/predict", body=iter([body[i : i + 65536] for i in range(0, len(body), 65536)]),
                 headers={"Content-Type": ctype}, encode_chunked=True)  # fmt: skip
    reply = conn.getresponse()
    assert reply.status == 413 and "size limit" in json.loads(reply.read())["error"]
    conn.close()
    assert post(server) == (
        400,
        {"error": "nothing to predict: upload a video, audio file or image, or type a transcript"},
    )
    req = urllib.request.Request(server + "/api/predict", data=b"{}", headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(req, timeout=30)
    assert caught.value.code == 400 and "multipart form" in json.loads(caught.value.read())["error"]
    status, answer = post(server, text="still here")
    assert status == 200 and answer["results"][0]["available"] == ["language"]


def test_an_emotion_checkpoint_answers_with_emotions(emotion_server, emotion_run, media_dir, capsys):
    with urllib.request.urlopen(emotion_server + "/api/info", timeout=30) as r:
        info = json.loads(r.read())
    assert info["task"] != "regression" and len(info["emotions"]) == 4
    status, answer = post(emotion_server, [("files", "talk.mp4", (media_dir / "talk" / "1.mp4").read_bytes())])
    assert status == 200
    [row] = answer["results"]
    [printed] = predict_cli(emotion_run, capsys, str(media_dir / "talk" / "1.mp4"))
    assert "score" not in row and list(row["emotions"]) == info["emotions"]
    assert row["emotions"] == pytest.approx(printed["emotions"], abs=1e-4)
    assert set(row["removed"]) == {"language", "audio", "vision"}
    for m, changes in printed["removed"].items():
        assert row["removed"][m] == pytest.approx(changes, abs=1e-4)
