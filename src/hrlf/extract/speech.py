"""Speech recognition with word timings: faster-whisper running the packaged Whisper-base (CTranslate2, int8).

Decoding is greedy at temperature 0 (no sampling fallback) so the same audio always gives the same words; the
Silero VAD bundled with faster-whisper skips non-speech, so music or silence yields an empty transcript, which is
how the language modality goes missing.
"""

from __future__ import annotations

import numpy as np

from hrlf.extract.align import Word

__all__ = ["SpeechRecognizer"]


class SpeechRecognizer:
    """``__call__(audio_16k) -> (transcript, words)``."""

    name = "faster-whisper-base-int8"

    def __init__(self, *, threads: int = 1, beam_size: int = 1, language: str = "en") -> None:
        import faster_whisper

        from hrlf.extract.assets import whisper_dir

        self._model = faster_whisper.WhisperModel(
            str(whisper_dir()), device="cpu", compute_type="int8", cpu_threads=threads, num_workers=1
        )
        self._beam_size = beam_size
        self._language = language
        self.version = faster_whisper.__version__

    def __call__(self, audio: np.ndarray) -> tuple[str, list[Word]]:
        segments, _ = self._model.transcribe(
            np.asarray(audio, dtype=np.float32),
            language=self._language,
            beam_size=self._beam_size,
            temperature=0.0,
            word_timestamps=True,
            vad_filter=True,
            condition_on_previous_text=False,
        )
        words: list[Word] = []
        for segment in segments:
            for w in segment.words or ():
                text = w.word.strip()
                if text:
                    words.append(Word(text=text, start=float(w.start), end=float(w.end)))
        return " ".join(w.text for w in words), words
