"""Upload types told from content: every container the extractors read, and what is refused (core venv)."""

from __future__ import annotations

import struct

import pytest

from hrlf.serve.app import display_name, is_loopback
from hrlf.serve.media_type import HEADER_BYTES, describe, sniff


def _box(kind: bytes, brand: bytes) -> bytes:
    return struct.pack(">I", 24) + kind + brand + b"\x00\x00\x02\x00" + b"isomiso2"


@pytest.mark.parametrize(
    ("head", "kind", "suffix"),
    [
        (_box(b"ftyp", b"isom"), "video", ".mp4"),
        (_box(b"ftyp", b"qt  "), "video", ".mp4"),
        (_box(b"ftyp", b"M4A "), "audio", ".m4a"),
        (struct.pack(">I", 8) + b"moov", "video", ".mov"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01", "video", ".mkv"),
        (b"RIFF\x24\x08\x00\x00WAVEfmt ", "audio", ".wav"),
        (b"RIFF\x24\x08\x00\x00AVI LIST", "video", ".avi"),
        (b"ID3\x04\x00\x00\x00\x00\x00\x00", "audio", ".mp3"),
        (b"\xff\xfb\x90\x64\x00", "audio", ".mp3"),
        (b"\xff\xf1\x50\x80\x02\x1f\xfc", "audio", ".aac"),
        (b"fLaC\x00\x00\x00\x22", "audio", ".flac"),
        (b"OggS\x00\x02\x00\x00", "audio", ".ogg"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "image", ".jpg"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "image", ".png"),
    ],
)
def test_known_containers_are_told_by_their_first_bytes(head, kind, suffix):
    found = sniff(head[:HEADER_BYTES])
    assert found is not None and (found.kind, found.suffix) == (kind, suffix)


@pytest.mark.parametrize(
    ("head", "what"),
    [
        (b"", "an empty file"),
        (b"this is not a video\n" * 3, "text"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3", "unrecognised binary content"),
        (b"PK\x03\x04\x14\x00\x00\x00", "unrecognised"),  # a zip (e.g. .docx) renamed .mp4
        (b"RIFF\x24\x08\x00\x00WEBPVP8 ", "unrecognised"),  # RIFF, but neither WAVE nor AVI
        (b"GIF89a\x01\x00", "unrecognised"),  # GIF is not read by the extractor
    ],
)
def test_other_content_is_refused_and_described(head, what):
    assert sniff(head) is None
    assert describe(head).startswith(what)


def test_a_shown_name_is_the_last_component_without_control_characters():
    assert display_name("../../../etc/passwd", 0) == "passwd"
    assert display_name("..\\..\\windows\\evil.wav", 0) == "evil.wav"
    assert display_name("/abs/path/clip.mp4", 0) == "clip.mp4"
    assert display_name("bad\x00name\n.mp4", 0) == "badname.mp4"
    assert display_name("..", 2) == "upload-3" and display_name(None, 0) == "upload-1"
    assert len(display_name("a" * 500 + ".mp4", 0)) == 120


def test_loopback_hosts():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.9")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.org")
