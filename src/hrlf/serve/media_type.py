"""What an uploaded file is, told from its first bytes, never from its name (``hrlf serve``'s upload check).

Only the containers the offline extractors read (:mod:`hrlf.extract.media`, :func:`hrlf.extract.media.load_image`)
are accepted. The answer is the kind (``video`` | ``audio`` | ``image``) and the file suffix the server gives the
upload on disk, so that the extractor's dispatch by suffix follows the content, not what the user called it.
A match here only says the container's signature is right; a file that is cut or corrupt past its header still
fails in the decoder, and the page shows that error.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HEADER_BYTES", "MediaType", "describe", "sniff"]

#: bytes :func:`sniff` needs from the start of a file
HEADER_BYTES = 64


@dataclass(frozen=True)
class MediaType:
    kind: str  # video | audio | image
    suffix: str  # given to the stored upload (the extractor dispatches on it)
    label: str  # for messages, e.g. "MP4/QuickTime"


_MP4_AUDIO_BRANDS = (b"M4A ", b"M4B ", b"F4A ")


def _iso_media(head: bytes) -> MediaType | None:
    """MP4 / QuickTime / M4A: a box of type ``ftyp`` (or an old QuickTime ``moov``/``mdat``/``wide``) first."""
    box = head[4:8]
    if box == b"ftyp":
        if head[8:12] in _MP4_AUDIO_BRANDS:
            return MediaType("audio", ".m4a", "MPEG-4 audio")
        return MediaType("video", ".mp4", "MP4/QuickTime")
    if box in (b"moov", b"mdat", b"wide", b"free"):
        return MediaType("video", ".mov", "QuickTime")
    return None


def _riff(head: bytes) -> MediaType | None:
    if head[:4] != b"RIFF":
        return None
    form = head[8:12]
    if form == b"WAVE":
        return MediaType("audio", ".wav", "WAV")
    if form == b"AVI ":
        return MediaType("video", ".avi", "AVI")
    return None


def _mpeg_audio(head: bytes) -> MediaType | None:
    if head[:3] == b"ID3":
        return MediaType("audio", ".mp3", "MP3")
    if len(head) >= 2 and head[0] == 0xFF:
        if head[1] & 0xF6 == 0xF0:  # ADTS: sync 12 bits, layer 00
            return MediaType("audio", ".aac", "AAC (ADTS)")
        if head[1] & 0xE0 == 0xE0 and head[1] & 0x06 != 0:  # MPEG audio frame sync, layer I-III
            return MediaType("audio", ".mp3", "MP3")
    return None


_FIXED = (
    (b"\x1a\x45\xdf\xa3", MediaType("video", ".mkv", "Matroska/WebM")),
    (b"fLaC", MediaType("audio", ".flac", "FLAC")),
    (b"OggS", MediaType("audio", ".ogg", "Ogg")),
    (b"\xff\xd8\xff", MediaType("image", ".jpg", "JPEG")),
    (b"\x89PNG\r\n\x1a\n", MediaType("image", ".png", "PNG")),
)


def sniff(head: bytes) -> MediaType | None:
    """The media type of a file that starts with ``head`` (its first :data:`HEADER_BYTES` bytes), or None."""
    for magic, kind in _FIXED:
        if head.startswith(magic):
            return kind
    return _iso_media(head) or _riff(head) or _mpeg_audio(head)


def describe(head: bytes) -> str:
    """A few words on what a refused file looks like, for the error message."""
    if not head:
        return "an empty file"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"unrecognised binary content (starts {head[:8].hex(' ')})"
    return "text" if all(c.isprintable() or c.isspace() for c in text) else "unrecognised content"
