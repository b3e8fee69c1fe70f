"""Built-in synthetic benchmarks written in the exact schema of the field's feature files.

``hrlf synth --preset mosi|mosei|iemocap --out DIR [--seed N]`` calls :func:`write_synth`, which writes

* ``mosi`` / ``mosei``: an MMSA ``aligned_50.pkl`` (``field_conventions.md`` §2.1, aligned: no ``*_lengths`` keys);
* ``iemocap``: a MulT/CMU-SDK ``iemocap_data.pkl`` (§2.2, labels (N, 4, 2) one-hot [absent, present]).

The generative model (equations, knobs, calibration table and the ways it differs from real data are in
``docs/data_model.md``), per clip i and modality m:

* latent target z_i: a sentiment score y_i resampled from the real MOSI ``label`` column (regression presets), or
  a (valence, arousal) point around the centre of a latent class c_i in {Neutral, Happy, Sad, Angry} (IEMOCAP);
* noisy view s_im = z_i + lambda_m * e_shared_i + e_im (e_shared couples audio and vision, and partly language);
* valid frames (the last L_i of T: pre-padding shared by all modalities) each express the view with probability
  p_m through a fixed random 2-layer tanh map of [alpha_m * g_t * phi_m(s_im) ; beta_m * u_im ; gamma_m * r_it],
  where u_im is a per-clip nuisance vector (partly shared by the clips of one video) and r_it a per-frame content
  vector, plus i.i.d. Gaussian frame noise.

Every random draw comes from a ``numpy.random.Generator(PCG64)`` seeded from ``SeedSequence`` keys that name the
seed, split, stream, modality and chunk, so output is byte-identical for the same seed (on the same numpy/BLAS) and
independent of global state. The random maps come from ``SynthCfg.map_seed`` alone, so every split and every
``--seed`` share them.
"""

from __future__ import annotations

import logging
import os
import pickle
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from hrlf.data.features import FILE_KEYS, ID_SEPARATOR, LABEL_KEYS
from hrlf.data.labels import MOSI_LABELS_ENV, LabelRow, find_mosi_label_csv, read_label_csv
from hrlf.io import atomic_write
from hrlf.types import IEMOCAP_EMOTIONS, MODALITIES, SPLITS, Modality, Split, TaskKind

logger = logging.getLogger(__name__)

#: pickle protocol of the written files (readable by Python >= 3.4, as the field's files are)
PICKLE_PROTOCOL = 4
#: BERT special token ids (bert-base-uncased); [PAD] = 0
CLS_ID, SEP_ID = 101, 102
#: range of the fake word-piece ids: bert-base-uncased's ordinary word pieces start at 1996; vocab size 30522
_WORD_ID_LOW, _WORD_ID_HIGH = 1996, 30522
#: characters of YouTube video ids (base64url, so ids may contain "_" and "-")
_YOUTUBE_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
#: SeedSequence domains and stream numbers (part of the stream layout: changing them changes every file)
_DOMAIN_SAMPLE, _DOMAIN_MAP, _DOMAIN_STAND_IN = 0, 1, 2
_STREAM_META, _STREAM_LATENT, _STREAM_VIEW, _STREAM_NUISANCE, _STREAM_FRAMES, _STREAM_IDS = range(6)


@dataclass(frozen=True)
class ModalityCfg:
    """How strongly one modality carries the target, and how much else it carries.

    Attributes:
        view_noise: sigma_m, std of the modality-specific view noise e_m (in label units).
        shared_weight: lambda_m, weight of the shared noise e_shared in this modality's view.
        signal_frac: p_m, probability that a valid frame expresses the view (the rest carry no target signal).
        signal_gain: alpha_m, scale of the view embedding phi_m(s_m) in the map's input.
        nuisance_scale: beta_m, scale of the per-clip nuisance vector u_m in the map's input.
        content_scale: gamma_m, scale of the per-frame content vector r_t in the map's input.
        frame_noise: sigma_f,m, std of the i.i.d. Gaussian frame noise relative to the map's output scale.
    """

    view_noise: float  # sigma_m: std of modality-specific view noise e_m (label units)
    shared_weight: float  # lambda_m: weight of the shared noise e_shared in this view
    signal_frac: float  # p_m: probability that a valid frame expresses the view
    signal_gain: float  # alpha_m: scale of phi_m(s_m) in the map's input
    nuisance_scale: float  # beta_m: scale of the per-clip nuisance vector u_m in the map's input
    content_scale: float  # gamma_m: scale of the per-frame content vector r_t in the map's input
    frame_noise: float  # sigma_f,m: std of i.i.d. frame noise, relative to the map's output scale


@dataclass(frozen=True)
class SynthCfg:
    """All knobs of one synthetic benchmark (see ``docs/data_model.md`` for the equations).

    Override any knob with ``dataclasses.replace(PRESETS["mosi"], n_train=40, ...)``.
    """

    file_format: Literal["mmsa", "mult"]  # schema written: MMSA pickle (§2.1) or MulT/CMU-SDK pickle (§2.2)
    file_name: str  # name of the file written inside out_dir
    task: TaskKind  # "regression": sentiment score from MOSI labels; "emotions": 4-way latent emotion class
    n_train: int  # clips in the train split
    n_valid: int  # clips in the valid split
    n_test: int  # clips in the test split
    seq_len: int  # T: aligned sequence length shared by all modalities
    text_dim: int  # D_l: language feature size (300 = GloVe flavour, 768 = BERT flavour)
    audio_dim: int  # D_a: audio feature size (COVAREP: MOSI 5, MOSEI/IEMOCAP 74)
    vision_dim: int  # D_v: vision feature size (Facet: MOSI 20, MOSEI/IEMOCAP 35)
    lengths: Literal["transcripts", "negbin"]  # valid lengths: word counts of MOSI transcripts, or negative binomial
    length_mean: float  # negbin only: mean word count before clipping to [1, T]
    length_shape: float  # negbin only: shape r of the negative binomial (smaller = heavier tail)
    class_probs: tuple[float, ...]  # emotions only: prior of each class (Neutral, Happy, Sad, Angry)
    class_centers: tuple[tuple[float, float], ...]  # emotions only: (valence, arousal) centre of each class
    class_spread: float  # emotions only: std of a clip's latent point around its class centre
    latent_scale: float  # s_ref: latent values are divided by this before the embedding phi_m
    shared_noise: float  # sigma_shared: std of the noise e_shared common to all views (weighted by lambda_m)
    language: ModalityCfg  # signal knobs of language
    audio: ModalityCfg  # signal knobs of audio
    vision: ModalityCfg  # signal knobs of vision
    embed_dim: int  # size of the view embedding phi_m(s)
    nuisance_dim: int  # size of the per-clip nuisance vector u_m
    content_dim: int  # size of the per-frame content vector r_t
    hidden_dim: int  # H: hidden width of each modality's random 2-layer tanh map
    speaker_share: float  # rho: fraction of nuisance variance shared by the clips of one video (speaker identity)
    clips_per_video: float  # mean number of clips per video (videos never cross splits)
    map_seed: int  # fixes the random maps; shared by all splits and every --seed
    chunk_size: int  # clips generated per chunk (part of the random-stream layout: changing it changes the data)

    def modality(self, modality: Modality) -> ModalityCfg:
        """The signal knobs of one modality."""
        return {"language": self.language, "audio": self.audio, "vision": self.vision}[modality]

    def dim(self, modality: Modality) -> int:
        """Feature size D_m of one modality."""
        return {"language": self.text_dim, "audio": self.audio_dim, "vision": self.vision_dim}[modality]

    def split_size(self, split: Split) -> int:
        """Number of clips in one split."""
        return {"train": self.n_train, "valid": self.n_valid, "test": self.n_test}[split]


#: signal knobs of the sentiment presets (calibrated with benchmarks/synth_calibration.py; docs/data_model.md)
_SENTIMENT_LANGUAGE = ModalityCfg(
    view_noise=1.2,
    shared_weight=0.1,
    signal_frac=0.3,
    signal_gain=1.0,
    nuisance_scale=2.0,
    content_scale=2.0,
    frame_noise=0.8,
)
_SENTIMENT_AUDIO = ModalityCfg(
    view_noise=2.8,
    shared_weight=1.0,
    signal_frac=0.6,
    signal_gain=1.0,
    nuisance_scale=1.0,
    content_scale=1.0,
    frame_noise=0.5,
)
_SENTIMENT_VISION = ModalityCfg(
    view_noise=3.4,
    shared_weight=1.0,
    signal_frac=0.6,
    signal_gain=1.0,
    nuisance_scale=1.0,
    content_scale=1.0,
    frame_noise=0.5,
)
#: signal knobs of the emotion preset (latent units: class centres about 1.5 to 2.5 apart)
_EMOTION_LANGUAGE = replace(_SENTIMENT_LANGUAGE, view_noise=0.6, signal_frac=0.5)
_EMOTION_AUDIO = replace(_SENTIMENT_AUDIO, view_noise=1.5)
_EMOTION_VISION = replace(_SENTIMENT_VISION, view_noise=1.6)

_SENTIMENT = SynthCfg(
    file_format="mmsa",
    file_name="aligned_50.pkl",
    task="regression",
    n_train=1284,
    n_valid=229,
    n_test=686,
    seq_len=50,
    text_dim=300,
    audio_dim=5,
    vision_dim=20,
    lengths="transcripts",
    length_mean=11.0,
    length_shape=2.5,
    class_probs=(0.38, 0.13, 0.24, 0.25),
    class_centers=((0.0, 0.0), (1.5, 0.8), (-1.3, -1.0), (-1.2, 1.3)),
    class_spread=0.5,
    latent_scale=1.5,
    shared_noise=1.5,
    language=_SENTIMENT_LANGUAGE,
    audio=_SENTIMENT_AUDIO,
    vision=_SENTIMENT_VISION,
    embed_dim=16,
    nuisance_dim=8,
    content_dim=8,
    hidden_dim=64,
    speaker_share=0.5,
    clips_per_video=24.0,
    map_seed=1001,
    chunk_size=1024,
)

#: the built-in benchmarks (``hrlf synth --preset NAME``)
PRESETS: dict[str, SynthCfg] = {
    # CMU-MOSI, MMSA aligned_50.pkl, GloVe flavour (text_dim=768 gives the BERT flavour)
    "mosi": _SENTIMENT,
    # CMU-MOSEI, MMSA aligned_50.pkl (labels and transcripts still resampled from MOSI's label.csv)
    "mosei": replace(
        _SENTIMENT,
        n_train=16326,
        n_valid=1871,
        n_test=4659,
        audio_dim=74,
        vision_dim=35,
        # 13x more training clips make the probe more efficient: slightly noisier views keep the same targets
        language=replace(_SENTIMENT_LANGUAGE, view_noise=1.4),
        audio=replace(_SENTIMENT_AUDIO, view_noise=3.2),
        clips_per_video=7.0,
        map_seed=1002,
    ),
    # IEMOCAP 4 emotions, MulT iemocap_data.pkl (aligned to 20 words)
    "iemocap": replace(
        _SENTIMENT,
        file_format="mult",
        file_name="iemocap_data.pkl",
        task="emotions",
        n_train=2717,
        n_valid=798,
        n_test=938,
        seq_len=20,
        audio_dim=74,
        vision_dim=35,
        lengths="negbin",
        shared_noise=0.6,
        language=_EMOTION_LANGUAGE,
        audio=_EMOTION_AUDIO,
        vision=_EMOTION_VISION,
        clips_per_video=30.0,
        map_seed=1003,
    ),
}


# ----------------------------------------------------------------------------------------------------------------
# random streams and fixed maps


def _generator(domain: int, *keys: int) -> np.random.Generator:
    """A PCG64 generator seeded from a domain tag and explicit non-negative integer keys (never global state).

    The key count is part of the entropy because ``SeedSequence`` ignores trailing zeros: without it
    ``(seed, 0)`` and ``(seed, 0, 0)`` would give the same stream.
    """
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([domain, len(keys), *keys])))


@dataclass(frozen=True)
class _ModalityMap:
    """The fixed random nonlinear map of one modality (drawn from ``map_seed`` only)."""

    embed_weight: np.ndarray  # (K, E): phi(s) = tanh(s / s_ref @ embed_weight + embed_bias)
    embed_bias: np.ndarray  # (E,)
    w1: np.ndarray  # (E + Q + C, H)
    b1: np.ndarray  # (H,)
    w2: np.ndarray  # (H, D), per-dimension output scale folded in
    b2: np.ndarray  # (D,), per-dimension output scale folded in
    noise_std: np.ndarray  # (D,): frame_noise times the per-dimension output scale


def _build_map(cfg: SynthCfg, modality: Modality, latent_dim: int) -> _ModalityMap:
    """Draw the fixed map of one modality from ``(map_seed, modality index)``."""
    rng = _generator(_DOMAIN_MAP, cfg.map_seed, MODALITIES.index(modality))
    dim, hidden = cfg.dim(modality), cfg.hidden_dim
    in_dim = cfg.embed_dim + cfg.nuisance_dim + cfg.content_dim
    f32 = np.float32
    embed_weight = rng.standard_normal((latent_dim, cfg.embed_dim)).astype(f32)
    embed_bias = rng.uniform(-1.0, 1.0, cfg.embed_dim).astype(f32)
    w1 = (rng.standard_normal((in_dim, hidden)) * (1.5 / np.sqrt(in_dim))).astype(f32)
    b1 = (0.2 * rng.standard_normal(hidden)).astype(f32)
    w2 = rng.standard_normal((hidden, dim)) / np.sqrt(hidden)
    b2 = 0.5 * rng.standard_normal(dim)
    # real feature dimensions live on very different scales (e.g. COVAREP pitch vs. voicing flags)
    out_scale = np.exp(0.5 * rng.standard_normal(dim))
    noise_std = cfg.modality(modality).frame_noise * out_scale
    return _ModalityMap(
        embed_weight=embed_weight,
        embed_bias=embed_bias,
        w1=w1,
        b1=b1,
        w2=(w2 * out_scale).astype(f32),
        b2=(b2 * out_scale).astype(f32),
        noise_std=noise_std.astype(f32),
    )


# ----------------------------------------------------------------------------------------------------------------
# per-split metadata: targets, lengths, transcripts, ids


@dataclass
class _SplitMeta:
    """What one split's clips are, before any feature is drawn."""

    latent: np.ndarray  # (N, K) float32 target in latent space (K = 1 regression, 2 emotions)
    lengths: np.ndarray  # (N,) int64 valid length in [1, T]
    video: np.ndarray  # (N,) int64 video index within the split
    n_videos: int
    label: np.ndarray  # regression: (N,) float32 score; emotions: (N,) int64 class
    raw_text: list[str]  # regression: real transcripts (empty for emotions)


def _assign_videos(rng: np.random.Generator, n: int, clips_per_video: float) -> tuple[np.ndarray, int]:
    """Group n consecutive clips into videos of 1 + Poisson(clips_per_video - 1) clips."""
    sizes = 1 + rng.poisson(max(clips_per_video - 1.0, 0.0), size=n)
    ends = np.cumsum(sizes)
    video = np.searchsorted(ends, np.arange(n), side="right")  # clip j belongs to the first video ending after j
    return video.astype(np.int64), int(video[-1]) + 1


def _split_meta(cfg: SynthCfg, split: Split, seed: int, rows: Sequence[LabelRow] | None) -> _SplitMeta:
    """Draw targets, lengths, transcripts and video grouping of one split."""
    n = cfg.split_size(split)
    rng = _generator(_DOMAIN_SAMPLE, seed, SPLITS.index(split), _STREAM_META)
    if cfg.task == "regression":
        if not rows:
            raise ValueError("the regression presets need label rows (the MOSI label.csv) to resample labels from")
        pool = [r for r in rows if r.mode == split] or list(rows)  # same real split when the file has it
        pick = rng.integers(0, len(pool), size=n)
        label = np.array([pool[i].label for i in pick], dtype=np.float32)
        raw_text = [pool[i].text for i in pick]
        latent = label[:, None].copy()  # (N,) -> (N, 1)
    else:
        probs = np.asarray(cfg.class_probs, dtype=np.float64)
        label = rng.choice(len(probs), size=n, p=probs / probs.sum()).astype(np.int64)
        centers = np.asarray(cfg.class_centers, dtype=np.float32)
        latent = centers[label] + cfg.class_spread * rng.standard_normal((n, 2), dtype=np.float32)  # (N, 2)
        raw_text = []
    if cfg.lengths == "transcripts":
        if not rows:
            raise ValueError("lengths='transcripts' needs label rows (the MOSI label.csv) to draw word counts from")
        if cfg.task == "regression":
            words = np.array([len(t.split()) for t in raw_text], dtype=np.int64)
        else:
            counts = np.array([len(r.text.split()) for r in rows], dtype=np.int64)
            words = counts[rng.integers(0, len(counts), size=n)]
    else:
        shape = cfg.length_shape
        mean_extra = max(cfg.length_mean - 1.0, 1e-6)
        words = 1 + rng.negative_binomial(shape, shape / (shape + mean_extra), size=n)
    lengths = np.clip(words, 1, cfg.seq_len).astype(np.int64)
    video, n_videos = _assign_videos(rng, n, cfg.clips_per_video)
    return _SplitMeta(
        latent=latent.astype(np.float32),
        lengths=lengths,
        video=video,
        n_videos=n_videos,
        label=label,
        raw_text=raw_text,
    )


def _youtube_ids(rng: np.random.Generator, count: int, used: set[str]) -> list[str]:
    """``count`` fresh 11-character YouTube-like ids not in ``used`` (which is updated)."""
    out: list[str] = []
    while len(out) < count:
        for chars in _YOUTUBE_ALPHABET[rng.integers(0, len(_YOUTUBE_ALPHABET), size=(count - len(out), 11))]:
            name = "".join(chars)
            if name not in used:
                used.add(name)
                out.append(name)
    return out


def _mmsa_ids(meta: _SplitMeta, rng: np.random.Generator, used: set[str]) -> np.ndarray:
    """(N,) ``"<video>$_$<clip>"`` strings, clip numbers counting from 1 within each video."""
    names = _youtube_ids(rng, meta.n_videos, used)
    starts = np.searchsorted(meta.video, np.arange(meta.n_videos))  # first clip of each video
    clip_no = np.arange(meta.video.size) - starts[meta.video] + 1
    return np.array([f"{names[v]}{ID_SEPARATOR}{c}" for v, c in zip(meta.video, clip_no, strict=True)], dtype=np.str_)


def _mult_ids(meta: _SplitMeta, rng: np.random.Generator, first_video: int) -> np.ndarray:
    """(N, 3) byte strings ``[video, start, end]`` in the CMU-SDK style (IEMOCAP-like session names)."""
    rows: list[tuple[bytes, bytes, bytes]] = []
    clock: dict[int, float] = {}
    gaps = rng.uniform(0.2, 3.0, size=meta.video.size)
    extra = rng.uniform(0.5, 2.0, size=meta.video.size)
    for j, (v, length) in enumerate(zip(meta.video.tolist(), meta.lengths.tolist(), strict=True)):
        k = first_video + v  # global video number: a bijection onto (session, speaker, kind, number)
        name = f"Ses{k % 5 + 1:02d}{'FM'[(k // 5) % 2]}_{('impro', 'script')[(k // 10) % 2]}{k // 20 + 1:02d}"
        start = clock.get(v, 0.0) + gaps[j]
        end = start + 0.3 * length + extra[j]
        clock[v] = end
        rows.append((name.encode(), f"{start:.3f}".encode(), f"{end:.3f}".encode()))
    return np.array(rows, dtype=np.bytes_).reshape(len(rows), 3)


def _text_bert(raw_text: Sequence[str], seq_len: int) -> np.ndarray:
    """(N, 3, T) int64 ``[input_ids; attention_mask; token_type_ids]``, post-padded as a BERT tokenizer does.

    Ids are fake but well formed: [CLS] = 101 first, [SEP] = 102 at ``len - 1``, one stable id per word
    (CRC-32 of the word mapped into bert-base-uncased's word-piece range), padding 0, token types 0.
    """
    out = np.zeros((len(raw_text), 3, seq_len), dtype=np.int64)
    span = _WORD_ID_HIGH - _WORD_ID_LOW
    for i, text in enumerate(raw_text):
        words = text.split()[: seq_len - 2]
        ids = [_WORD_ID_LOW + zlib.crc32(w.encode("utf-8")) % span for w in words]
        n_tok = len(ids) + 2
        out[i, 0, :n_tok] = [CLS_ID, *ids, SEP_ID]
        out[i, 1, :n_tok] = 1
    return out


# ----------------------------------------------------------------------------------------------------------------
# features


def _nuisance(cfg: SynthCfg, meta: _SplitMeta, rng: np.random.Generator) -> np.ndarray:
    """(N, Q) per-clip nuisance: sqrt(rho) * video part + sqrt(1 - rho) * clip part."""
    n, q, rho = meta.video.size, cfg.nuisance_dim, cfg.speaker_share
    per_video = rng.standard_normal((meta.n_videos, q), dtype=np.float32)
    per_clip = rng.standard_normal((n, q), dtype=np.float32)
    return (np.sqrt(rho) * per_video[meta.video] + np.sqrt(1.0 - rho) * per_clip).astype(np.float32)


def _dense(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """(F, I) @ (I, O) -> (F, O) without BLAS.

    numpy's matmul calls BLAS, whose float32 results change with its thread count (measured: OMP_NUM_THREADS=1 and
    2 gave different bytes); einsum without path optimisation runs numpy's own single-threaded loops, so the same
    seed gives the same bytes however many threads the host allows.
    """
    return np.einsum("fi,io->fo", x, weight, optimize=False)


def _features(
    cfg: SynthCfg,
    modality: Modality,
    view: np.ndarray,
    nuisance: np.ndarray,
    lengths: np.ndarray,
    fmap: _ModalityMap,
    stream: tuple[int, ...],
) -> np.ndarray:
    """(N, T, D) float32 features of one modality, generated chunk by chunk into one preallocated array."""
    knobs = cfg.modality(modality)
    n, seq_len, dim = view.shape[0], cfg.seq_len, cfg.dim(modality)
    out = np.zeros((n, seq_len, dim), dtype=np.float32)
    # phi_m(s_m): (N, K) -> (N, E), premultiplied by the signal gain
    embed = knobs.signal_gain * np.tanh(_dense(view / cfg.latent_scale, fmap.embed_weight) + fmap.embed_bias)
    scaled_nuisance = knobs.nuisance_scale * nuisance  # (N, Q)
    positions = np.arange(seq_len)
    for chunk, begin in enumerate(range(0, n, cfg.chunk_size)):
        end = min(begin + cfg.chunk_size, n)
        rng = _generator(*stream, chunk)
        valid = positions[None, :] >= (seq_len - lengths[begin:end])[:, None]  # (c, T): pre-padding
        flat = np.flatnonzero(valid)  # valid frames of the chunk, as indices into (c * T)
        clip = flat // seq_len  # (F,) clip of each valid frame within the chunk
        gate = rng.random(flat.size) < knobs.signal_frac  # (F,) frame expresses the view
        # every clip expresses its view in at least one frame (a random one when the draw picked none)
        chunk_lengths = lengths[begin:end]  # (c,)
        first = np.cumsum(chunk_lengths) - chunk_lengths  # (c,) position in `flat` of each clip's first frame
        fallback = first + (rng.random(end - begin) * chunk_lengths).astype(np.int64)  # (c,) one frame per clip
        silent = np.bincount(clip, weights=gate, minlength=end - begin) == 0  # (c,)
        gate[fallback[silent]] = True
        gate = gate.astype(np.float32)
        content = rng.standard_normal((flat.size, cfg.content_dim), dtype=np.float32)  # (F, C)
        inputs = np.concatenate(
            [
                gate[:, None] * embed[begin + clip],  # (F, E)
                scaled_nuisance[begin + clip],  # (F, Q)
                knobs.content_scale * content,  # (F, C)
            ],
            axis=1,
        )  # (F, E + Q + C)
        hidden = np.tanh(_dense(inputs, fmap.w1) + fmap.b1)  # (F, E + Q + C) -> (F, H)
        frames = _dense(hidden, fmap.w2) + fmap.b2  # (F, H) -> (F, D)
        noise = rng.standard_normal((flat.size, dim), dtype=np.float32)  # (F, D)
        noise *= fmap.noise_std
        frames += noise
        # a real frame must never be all-zero (loaders find padding as all-zero frames)
        dead = ~np.any(frames != 0.0, axis=1)
        if dead.any():
            frames[dead, 0] = np.float32(1e-3)
        out[begin:end].reshape(-1, dim)[flat] = frames  # scatter into (c, T, D); padding stays zero
    return out


def _views(cfg: SynthCfg, meta: _SplitMeta, split_index: int, seed: int) -> dict[Modality, np.ndarray]:
    """(N, K) view s_m = z + lambda_m * e_shared + e_m of every modality."""
    shape = meta.latent.shape
    shared_rng = _generator(_DOMAIN_SAMPLE, seed, split_index, _STREAM_LATENT)
    shared = cfg.shared_noise * shared_rng.standard_normal(shape, dtype=np.float32)  # (N, K) e_shared
    views: dict[Modality, np.ndarray] = {}
    for m_index, modality in enumerate(MODALITIES):
        knobs = cfg.modality(modality)
        own_rng = _generator(_DOMAIN_SAMPLE, seed, split_index, _STREAM_VIEW, m_index)
        own = own_rng.standard_normal(shape, dtype=np.float32)  # (N, K) e_m before scaling
        views[modality] = (meta.latent + knobs.shared_weight * shared + knobs.view_noise * own).astype(np.float32)
    return views


def _annotations(label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MMSA annotation strings and class indices: Negative = 0 (y < 0), Neutral = 1 (y = 0), Positive = 2."""
    classes = (np.sign(label).astype(np.int64) + 1).astype(np.int64)
    names = np.array(["Negative", "Neutral", "Positive"], dtype=np.str_)
    return names[classes], classes


#: pool sizes of the stand-in label rows per split (CMU-MOSI's standard split, as in the MMSA files)
STAND_IN_SPLIT_SIZES: dict[Split, int] = {"train": 1284, "valid": 229, "test": 686}
_CONSONANTS = np.array(list("bdfgklmnprstvwz"))
_VOWELS = np.array(list("aeiou"))


def stand_in_label_rows(*, seed: int = 0) -> list[LabelRow]:
    """MOSI-like label rows for when the real ``label.csv`` is not available (a standalone install).

    Scores imitate how MOSI's were made: each clip has a latent opinion ``o = ±1.4 + N(0, 0.8²)`` (positive with
    probability 0.51), three annotators rate it ``round(o + N(0, 1))`` clipped to the 7-point scale [-3, 3], and the
    label is their mean (a multiple of 1/3). The constants were chosen so the 7-bin histogram is close to the real
    file's (seed 0: std 1.59 vs 1.57, exactly neutral 4.8% vs 4.4%, positive 48.0% vs 49.1%; the real one is more
    strongly bimodal). Transcripts are pseudo-words with ``1 + NegBin`` word counts of mean 12.6 and std 9.1, the real
    transcripts' mean and std. Nothing here is read from the real file; the numbers in ``docs/`` are made with it.
    """
    rng = _generator(_DOMAIN_STAND_IN, seed)
    consonants = rng.integers(0, len(_CONSONANTS), size=(2000, 3))
    vowels = rng.integers(0, len(_VOWELS), size=(2000, 3))
    syllables = rng.integers(1, 4, size=2000)  # 1-3 consonant-vowel syllables per pseudo-word
    vocabulary = np.array(
        [
            "".join(np.char.add(_CONSONANTS[c[:k]], _VOWELS[v[:k]]))
            for c, v, k in zip(consonants, vowels, syllables, strict=True)
        ]
    )
    mean_extra, std = 12.6 - 1.0, 9.1
    shape = mean_extra**2 / (std**2 - mean_extra)  # NegBin(shape, q): mean shape(1-q)/q, var mean/q
    rows: list[LabelRow] = []
    for split, n in STAND_IN_SPLIT_SIZES.items():
        opinion = np.where(rng.random(n) < 0.51, 1.4, -1.4) + 0.8 * rng.standard_normal(n)
        ratings = np.clip(np.rint(opinion[:, None] + rng.standard_normal((n, 3))), -3, 3)
        labels = ratings.sum(axis=1) / 3.0
        words = 1 + rng.negative_binomial(shape, shape / (shape + mean_extra), size=n)
        for i in range(n):
            video_id, clip_id = f"standin{split}{i // 8:04d}", str(i % 8 + 1)
            rows.append(
                LabelRow(
                    video_id=video_id,
                    clip_id=clip_id,
                    text=" ".join(vocabulary[rng.integers(0, len(vocabulary), size=int(words[i]))]),
                    label=float(round(labels[i], 6)),
                    mode=split,
                    sample_id=f"{video_id}{ID_SEPARATOR}{clip_id}",
                )
            )
    return rows


def _check_cfg(cfg: SynthCfg, seed: int) -> None:
    """Raise ValueError on knob values the generator cannot honour."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    problems: list[str] = []
    if min(cfg.n_train, cfg.n_valid, cfg.n_test) < 1:
        problems.append(f"split sizes must be >= 1, got {cfg.n_train}/{cfg.n_valid}/{cfg.n_test}")
    if cfg.seq_len < 3:
        problems.append(f"seq_len must be >= 3 ([CLS], a word, [SEP]), got {cfg.seq_len}")
    if min(cfg.text_dim, cfg.audio_dim, cfg.vision_dim, cfg.embed_dim, cfg.hidden_dim) < 1:
        problems.append("feature, embedding and hidden sizes must be >= 1")
    if min(cfg.nuisance_dim, cfg.content_dim, cfg.chunk_size) < 1:
        problems.append("nuisance_dim, content_dim and chunk_size must be >= 1")
    if not 0.0 <= cfg.speaker_share <= 1.0:
        problems.append(f"speaker_share must lie in [0, 1], got {cfg.speaker_share}")
    for modality in MODALITIES:
        if not 0.0 <= cfg.modality(modality).signal_frac <= 1.0:
            problems.append(f"{modality}.signal_frac must lie in [0, 1], got {cfg.modality(modality).signal_frac}")
    if cfg.task == "emotions":
        if cfg.file_format != "mult":
            problems.append("task 'emotions' is written in the MulT format only (file_format='mult')")
        if len(cfg.class_probs) != len(IEMOCAP_EMOTIONS) or len(cfg.class_centers) != len(IEMOCAP_EMOTIONS):
            problems.append(f"class_probs and class_centers need {len(IEMOCAP_EMOTIONS)} entries ({IEMOCAP_EMOTIONS})")
        elif min(cfg.class_probs) < 0 or sum(cfg.class_probs) <= 0:
            problems.append(f"class_probs must be non-negative with a positive sum, got {cfg.class_probs}")
    elif cfg.file_format != "mmsa":
        problems.append("task 'regression' is written in the MMSA format only (file_format='mmsa')")
    if problems:
        raise ValueError("invalid SynthCfg: " + "; ".join(problems))


def generate_synth(
    cfg: SynthCfg, *, seed: int = 0, label_rows: Sequence[LabelRow] | None = None
) -> dict[Split, dict[str, np.ndarray]]:
    """Generate all three splits in memory, in the exact key layout of the file ``cfg`` describes.

    Args:
        cfg: the benchmark's knobs (a preset or a ``dataclasses.replace`` of one).
        seed: sampling seed (targets, lengths, noise); the random maps depend on ``cfg.map_seed`` only.
        label_rows: MOSI label rows to resample labels, transcripts and word counts from; needed by the
            regression presets and by ``lengths="transcripts"``.

    Returns:
        ``{"train": {...}, "valid": {...}, "test": {...}}`` with the MMSA (§2.1, aligned) or MulT (§2.2) keys.

    Raises:
        ValueError: invalid knobs or seed, or label rows needed but not given.
    """
    _check_cfg(cfg, seed)
    seed = int(seed)
    latent_dim = 1 if cfg.task == "regression" else 2
    maps = {modality: _build_map(cfg, modality, latent_dim) for modality in MODALITIES}
    used_ids: set[str] = set()
    next_video = 0
    data: dict[Split, dict[str, np.ndarray]] = {}
    for s_index, split in enumerate(SPLITS):
        meta = _split_meta(cfg, split, seed, label_rows)
        views = _views(cfg, meta, s_index, seed)
        features: dict[Modality, np.ndarray] = {}
        for m_index, modality in enumerate(MODALITIES):
            nuisance = _nuisance(cfg, meta, _generator(_DOMAIN_SAMPLE, seed, s_index, _STREAM_NUISANCE, m_index))
            features[modality] = _features(
                cfg,
                modality,
                views[modality],
                nuisance,
                meta.lengths,
                maps[modality],
                (_DOMAIN_SAMPLE, seed, s_index, _STREAM_FRAMES, m_index),
            )
        id_rng = _generator(_DOMAIN_SAMPLE, seed, s_index, _STREAM_IDS)
        if cfg.file_format == "mmsa":
            annotations, classes = _annotations(meta.label)
            data[split] = {  # the reader's key names (FILE_KEYS, LABEL_KEYS), in the real files' key order
                "raw_text": np.array(meta.raw_text, dtype=np.str_),
                "id": _mmsa_ids(meta, id_rng, used_ids),
                FILE_KEYS["language"]: features["language"],
                "text_bert": _text_bert(meta.raw_text, cfg.seq_len),
                FILE_KEYS["audio"]: features["audio"],
                FILE_KEYS["vision"]: features["vision"],
                "annotations": annotations,
                "classification_labels": classes,
                LABEL_KEYS["mmsa"]: meta.label.astype(np.float32),
            }
        else:
            n_classes = len(IEMOCAP_EMOTIONS)
            labels = np.zeros((meta.label.size, n_classes, 2), dtype=np.float32)  # (N, 4, [absent, present])
            labels[:, :, 0] = 1.0
            rows = np.arange(meta.label.size)
            labels[rows, meta.label, 0] = 0.0
            labels[rows, meta.label, 1] = 1.0
            data[split] = {
                FILE_KEYS["vision"]: features["vision"],
                FILE_KEYS["language"]: features["language"],
                FILE_KEYS["audio"]: features["audio"],
                LABEL_KEYS["mult"]: labels,
                "id": _mult_ids(meta, id_rng, next_video),
            }
            next_video += meta.n_videos
        del features, views
    return data


def write_synth(
    preset: str,
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    cfg: SynthCfg | None = None,
    label_csv: str | os.PathLike[str] | None = None,
) -> Path:
    """Generate a synthetic benchmark and write it atomically into ``out_dir``.

    Args:
        preset: ``"mosi"``, ``"mosei"`` or ``"iemocap"`` (see :data:`PRESETS`); only names the run when ``cfg``
            is given.
        out_dir: folder to write into (created if needed).
        seed: sampling seed; the same seed gives a byte-identical file.
        cfg: knobs overriding the preset (e.g. ``dataclasses.replace(PRESETS["mosi"], n_train=40)``).
        label_csv: MOSI ``label.csv`` to resample labels/transcripts/word counts from; defaults to
            :func:`hrlf.data.labels.default_mosi_label_csv` when the preset needs it. When no path is given and no
            file is found (a standalone install without ``shared/``), :func:`stand_in_label_rows` are used with a
            warning; the result then differs from the files the documented numbers were made with.

    Returns:
        Path of the written pickle (``out_dir / cfg.file_name``).

    Raises:
        ValueError: unknown preset or invalid knobs.
        LabelFileError: the label file is needed but malformed, or given (argument or ``$HRLF_MOSI_LABELS``)
            and missing.
    """
    if cfg is None:
        if preset not in PRESETS:
            raise ValueError(f"unknown synth preset {preset!r}; expected one of {', '.join(PRESETS)}")
        cfg = PRESETS[preset]
    _check_cfg(cfg, seed)
    rows: list[LabelRow] | None = None
    if cfg.task == "regression" or cfg.lengths == "transcripts":
        source = label_csv if label_csv is not None else find_mosi_label_csv()
        if source is None:
            logger.warning(
                "MOSI label file not found (no shared/data/mosi/label.csv, $%s unset): labels and transcripts are "
                "MOSI-like stand-ins, so numbers differ from docs/results.md",
                MOSI_LABELS_ENV,
            )
            rows = stand_in_label_rows(seed=seed)
        else:
            rows = read_label_csv(source)
    started = time.perf_counter()
    data = generate_synth(cfg, seed=seed, label_rows=rows)
    target = Path(out_dir) / cfg.file_name

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            pickler = pickle.Pickler(handle, protocol=PICKLE_PROTOCOL)
            # no memo: each array's temporary byte copy is freed as soon as it is written (protocol 4 copies every
            # array once), so peak memory is the data plus its largest array, not twice the data; safe because the
            # object tree has no shared or self-referencing parts
            pickler.fast = True
            pickler.dump(data)

    # readers see the old file or the complete new one; shared (0644), as a benchmark file is meant to be
    atomic_write(target, write, fsync=True, mode=0o644)
    logger.info(
        "wrote synthetic %s (seed %d, %d/%d/%d clips) to %s in %.1f s",
        preset,
        seed,
        cfg.n_train,
        cfg.n_valid,
        cfg.n_test,
        target,
        time.perf_counter() - started,
    )
    return target
