"""``hrlf serve``: a web page and a JSON endpoint for prediction on uploaded clips or typed transcripts.

A small Starlette app served by uvicorn (the ``serve`` extra, installed into the media venv by ``make serve``):

* ``GET /`` — the page (``page.html`` beside this file: plain HTML, CSS and JavaScript, nothing loaded from
  elsewhere, so it works with the network off);
* ``GET /api/info`` — the model: task, emotions, the modalities it reads, the upload limit;
* ``POST /api/predict`` — multipart form with ``files`` (any number) and/or ``text``; answers
  ``{"results": [row, ...]}`` where each row is the JSON line ``hrlf predict`` prints for that input (``input``
  is the uploaded file's name, or ``--text``), plus ``seconds`` (extraction steps, prediction) and, with
  ``?frames=N``, up to N sampled video frames with the detected face box drawn in.

With files, the typed text is the transcript of each file (used instead of speech recognition, as a label file's
transcript is); without files, it is a language-only prediction.

Safety: the server binds to 127.0.0.1 unless told otherwise; a request body over the upload limit is refused
(413), also when it does not announce its length; an upload is accepted only when its first bytes are those of a
container the extractors read (:mod:`hrlf.serve.media_type`), whatever its name; every request's uploads go to
a temporary folder of its own that is removed when the request ends; an uploaded file's name is only shown,
never used to open anything (the stored file is named by the server). One prediction runs at a time (the
extractors and the model are not shared between threads).
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import shutil
import tempfile
import threading
import time
import unicodedata
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from hrlf.errors import HrlfError
from hrlf.predict import Predictor, json_row
from hrlf.serve.media_type import HEADER_BYTES, MediaType, describe, sniff

__all__ = ["ServeCfg", "ServeError", "Service", "create_app", "serve"]

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("page.html")
ACCEPTED = "MP4, MOV, MKV/WebM, AVI video; WAV, MP3, FLAC, Ogg, M4A, AAC audio; JPEG, PNG images"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ServeError(HrlfError, ValueError):
    """``hrlf serve`` cannot start (missing extra, port in use, bad settings); one line for the user."""


@dataclass(frozen=True, kw_only=True)
class ServeCfg:
    host: str = "127.0.0.1"
    port: int = 7860
    max_upload_mb: float = 200.0  # a whole request's body, all files together
    max_files: int = 16  # files in one request
    max_frames: int = 8  # most sampled frames a request may ask for (?frames=N)
    upload_dir: str | None = None  # where the per-request folders go (default: the system's temporary folder)

    def __post_init__(self) -> None:
        if not self.max_upload_mb > 0:
            raise ServeError(f"--max-upload-mb must be > 0, got {self.max_upload_mb}")
        if not 0 < self.port < 65536:
            raise ServeError(f"--port must be in 1..65535, got {self.port}")
        if self.max_files < 1:
            raise ServeError(f"max_files must be >= 1, got {self.max_files}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def display_name(filename: str | None, index: int) -> str:
    """The name an upload is shown under: the last path component of what the browser sent, without control
    characters, at most 120 characters; never used to open a file."""
    raw = (filename or "").replace("\\", "/")
    name = PurePosixPath(raw).name
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C").strip()
    if name in ("", ".", ".."):
        name = f"upload-{index + 1}"
    return name[:120]


# ------------------------------------------------------------------------------------------------ the work


class Service:
    """The trained model and the extractors behind the page; one prediction at a time."""

    def __init__(self, predictor: Predictor, cfg: ServeCfg) -> None:
        self.predictor = predictor
        self.cfg = cfg
        self._lock = threading.Lock()

    def info(self) -> dict[str, Any]:
        run = self.predictor.run
        task = run.task
        return {
            "run": self.predictor.run_dir.name,
            "model": run.spec.name,
            "task": task.kind,
            "emotions": list(task.label_names) if task.kind != "regression" else [],
            "uses": [m for m in ("language", "audio", "vision") if m not in self.predictor.unused],
            "max_upload_bytes": self.cfg.max_upload_bytes,
            "max_files": self.cfg.max_files,
            "accepted": ACCEPTED,
        }

    def warm_up(self) -> None:
        """Load every extractor now, so that the first request does not wait for them."""
        from hrlf.extract.pipeline import Extractor

        extractor: Extractor = self.predictor.extractor
        extractor.text.encode(["warm up"])
        for part in ("audio", "vision", "asr"):
            try:
                getattr(extractor, part)
            except HrlfError as exc:  # a missing media package: text still works, media requests say why
                log.warning("%s", exc)

    def predict_text(self, text: str) -> list[dict[str, Any]]:
        with self._lock:
            t0 = time.perf_counter()
            rows = self.predictor.predict_text([text])
            seconds = round(time.perf_counter() - t0, 3)
        for row in rows:
            row["seconds"] = {"total": seconds}
        return rows

    def predict_upload(self, name: str, path: Path, kind: MediaType, *, transcript: str, frames: int) -> dict[str, Any]:
        """One stored upload: extraction, prediction, and optionally a few frames with the face box."""
        from hrlf.extract.media import MediaError, decode, load_image

        extractor = self.predictor.extractor
        with self._lock:
            t0 = time.perf_counter()
            try:
                media = load_image(path) if kind.kind == "image" else decode(path, fps=extractor.cfg.vision_fps)
                clip = extractor.extract(media, sample_id=name, transcript=transcript or None)
            except MediaError as exc:  # this file cannot be decoded: its row says why, in the user's name for it
                message = " ".join(str(exc).replace(str(path), name).split())
                return {"id": name, "input": name, "error": message}
            except HrlfError:  # a missing package or asset: the server's problem, answered as such (500)
                raise
            except Exception as exc:  # an extractor failing on this one file; the row says so, the server goes on
                return {"id": name, "input": name, "error": f"{name}: {type(exc).__name__}: {exc}"}
            t1 = time.perf_counter()
            row = self.predictor.predict_clips([clip], inputs=[name])[0]
            t2 = time.perf_counter()
            if frames and media.frames is not None:
                row["frames"] = self._frames(media, frames)
        steps = {k: round(v, 3) for k, v in clip.timings.items() if k != "total"}
        row["media"] = kind.label
        row["seconds"] = {**steps, "extract": round(t1 - t0, 3), "predict": round(t2 - t1, 3)}
        return row

    def _frames(self, media: Any, n: int) -> list[dict[str, Any]]:
        """Up to ``n`` evenly spaced sampled frames, each a small JPEG with the face box drawn in (when a face)."""
        import cv2

        assert media.frames is not None and media.frame_times is not None
        picks = np.unique(np.linspace(0, len(media.frames) - 1, num=min(n, len(media.frames))).round().astype(int))
        out = []
        for i in picks.tolist():
            rgb = media.frames[i]
            vector = self.predictor.extractor.vision(rgb)
            h, w = rgb.shape[:2]
            scale = min(1.0, 320 / max(h, w))
            small = cv2.resize(rgb, (max(1, int(w * scale)), max(1, int(h * scale))), interpolation=cv2.INTER_AREA)
            box = None
            if vector[0] > 0:
                cx, cy, bw, bh = (float(v) for v in vector[1:5])
                box = [round(cx - bw / 2, 4), round(cy - bh / 2, 4), round(cx + bw / 2, 4), round(cy + bh / 2, 4)]
                sh, sw = small.shape[:2]
                p0 = (int(box[0] * sw), int(box[1] * sh))
                p1 = (int(box[2] * sw), int(box[3] * sh))
                small = np.ascontiguousarray(small)
                cv2.rectangle(small, p0, p1, (46, 204, 113), 2)
            ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
            if not ok:  # pragma: no cover - OpenCV failing on its own array
                continue
            out.append(
                {
                    "time": round(float(media.frame_times[i]), 2),
                    "face": box is not None,
                    "box": box,
                    "jpeg": "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode("ascii"),
                }
            )
        return out


# ------------------------------------------------------------------------------------------------ HTTP


#: most bytes of an oversized request read (and dropped) before its 413 is sent; past that the connection closes
DRAIN_BYTES = 64 * 1024 * 1024


class UploadTooLarge(Exception):
    """Raised inside the request body's reader once the body passes the limit."""


class UploadLimit:
    """ASGI middleware: a request whose body is over ``max_bytes`` gets 413, announced or not (chunked)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            # read (and drop) what the client sends, up to a bound, before answering: a client still writing its
            # body when the connection closes sees a broken pipe instead of the 413
            drained = 0
            while drained <= DRAIN_BYTES:
                message = await receive()
                if message["type"] != "http.request":
                    break
                drained += len(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            await _too_large(send, self.max_bytes, int(length))
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise UploadTooLarge
            return message

        await self.app(scope, counted, send)


def _limit_message(max_bytes: int, found: int | None) -> str:
    got = f"{found / 1024 / 1024:.1f} MB" if found is not None else "more"
    return f"the upload is over the size limit of {max_bytes / 1024 / 1024:g} MB (found {got}); send smaller files"


async def _too_large(send: Send, max_bytes: int, found: int) -> None:
    import json

    body = json.dumps({"error": _limit_message(max_bytes, found)}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close")],
        }
    )  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def create_app(service: Service) -> ASGIApp:
    """The Starlette app (page, info, predict) wrapped in the upload limit."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    cfg = service.cfg
    page = PAGE.read_text(encoding="utf-8")

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def index(_: Request) -> Response:
        return HTMLResponse(page, headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})

    async def info(_: Request) -> Response:
        return JSONResponse(service.info())

    async def predict(request: Request) -> Response:
        try:
            frames = int(request.query_params.get("frames", "0"))
        except ValueError:
            return error(400, f"frames must be a whole number, found {request.query_params.get('frames')!r}")
        frames = max(0, min(frames, cfg.max_frames))
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            return error(400, f"send a multipart form with 'files' and/or 'text' (found content type {ctype!r})")
        try:
            form = await request.form(max_files=cfg.max_files, max_fields=8)
        except UploadTooLarge:
            return error(413, _limit_message(cfg.max_upload_bytes, None))
        except MultiPartException as exc:
            return error(400, f"the request is not a form this server reads: {exc}")
        try:
            text = form.get("text")
            text = text.strip() if isinstance(text, str) else ""
            files = [f for f in form.getlist("files") if isinstance(f, UploadFile) and f.filename]
            if not files and not text:
                return error(400, "nothing to predict: upload a video, audio file or image, or type a transcript")
            root = cfg.upload_dir or tempfile.gettempdir()
            folder = Path(tempfile.mkdtemp(prefix="hrlf-serve-", dir=root))
            try:
                results = await _predict_form(service, files, text, folder, frames=frames, run=run_in_threadpool)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        except UploadTooLarge:
            return error(413, _limit_message(cfg.max_upload_bytes, None))
        except HrlfError as exc:  # e.g. a missing extractor package: said on the page, the server stays up
            return error(500, " ".join(str(exc).split()))
        finally:
            await form.close()
        return JSONResponse({"results": [json_row(r) for r in results]})

    app = Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/api/info", info, methods=["GET"]),
            Route("/api/predict", predict, methods=["POST"]),
        ]
    )
    return UploadLimit(app, cfg.max_upload_bytes)


async def _predict_form(
    service: Service, files: Sequence[Any], text: str, folder: Path, *, frames: int, run: Any
) -> list[dict[str, Any]]:
    """Rows in the order of the form: a text-only row when there are no files, else one row per file."""
    if not files:
        return list(await run(service.predict_text, text))
    rows: list[dict[str, Any]] = []
    for i, upload in enumerate(files):
        name = display_name(upload.filename, i)
        head = await upload.read(HEADER_BYTES)
        kind = sniff(head)
        if kind is None:
            rows.append(
                {"id": name, "input": name, "error": f"{name}: not a file this server reads (accepted: {ACCEPTED}); "
                 f"found {describe(head)}"}
            )  # fmt: skip
            continue
        path = folder / f"upload-{i + 1}{kind.suffix}"  # named here, never after the upload
        with open(path, "wb") as out:
            out.write(head)
            while block := await upload.read(1 << 20):
                out.write(block)
        rows.append(await run(service.predict_upload, name, path, kind, transcript=text, frames=frames))
        path.unlink(missing_ok=True)
    return rows


# ------------------------------------------------------------------------------------------------ the command


def _check_port(host: str, port: int) -> None:
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ServeError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port or --host"
            ) from None


def require_serve_extra() -> None:
    import importlib.util

    for module in ("starlette", "uvicorn", "multipart"):
        if importlib.util.find_spec(module) is None:
            raise ServeError(
                f"hrlf serve needs the package '{module}' (the serve extra): run `make serve`, or pip install "
                "'hrlf[media,serve]' in the media venv"
            )


def build_server(run_dir: str | Path, cfg: ServeCfg, *, warm_up: bool = True) -> Any:
    """A ready ``uvicorn.Server`` for ``run_dir`` (not started): ``server.run()`` serves until stopped."""
    require_serve_extra()
    import uvicorn

    _check_port(cfg.host, cfg.port)  # before the slow part: a taken port fails at once
    predictor = Predictor.from_checkpoint(run_dir)
    service = Service(predictor, cfg)
    if warm_up:
        service.warm_up()
    config = uvicorn.Config(
        create_app(service), host=cfg.host, port=cfg.port, log_level="warning", access_log=False, lifespan="off"
    )
    return uvicorn.Server(config)


def serve(run_dir: str | Path, cfg: ServeCfg) -> None:
    """Serve the page until Ctrl-C."""
    import sys

    if not is_loopback(cfg.host):
        print(
            f"warning: listening on {cfg.host}: anyone who can reach this machine can upload files to it and run "
            "the model; there is no authentication",
            file=sys.stderr,
        )
    server = build_server(run_dir, cfg)
    shown = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    print(f"serving {run_dir} at http://{shown}:{cfg.port}/ (Ctrl-C to stop)", flush=True)
    server.run()
    if not server.started:  # uvicorn logs its own reason, e.g. a port taken since the check
        raise ServeError(f"the server on {cfg.host}:{cfg.port} did not start")
