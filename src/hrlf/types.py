"""Shared types, mask conventions and the shape legend.

Shape legend (used in every shape comment):
    B  batch size
    T  sequence length of one modality (T_m when it differs per modality)
    D  input feature size of one modality (D_m)
    d  model width (``d_model``)
    K  number of targets (IEMOCAP: 4 emotions)

Mask conventions:
    * masks are ``bool`` tensors of shape (B, T) with **True = present**;
    * ``valid`` marks real frames (False = padding, a property of the data file);
    * ``missing`` marks frames removed by a missing-modality protocol (True = removed);
    * the two are combined only as ``present = valid & ~missing``;
    * missing frames are zero vectors in ``features`` (the HRLF paper's rule) and models zero every
      non-present frame themselves, so noise written at padded or missing positions cannot leak.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal, get_args

import torch
from torch import Tensor

Modality = Literal["language", "audio", "vision"]
MODALITIES: tuple[Modality, ...] = get_args(Modality)
#: one-letter short names used in protocol condition names ("la" = language + audio)
SHORT: dict[Modality, str] = {"language": "l", "audio": "a", "vision": "v"}

Split = Literal["train", "valid", "test"]
SPLITS: tuple[Split, ...] = get_args(Split)

TaskKind = Literal["regression", "emotions"]

#: IEMOCAP emotion order in the MulT/CMU-SDK files (index 0..3)
IEMOCAP_EMOTIONS: tuple[str, ...] = ("Neutral", "Happy", "Sad", "Angry")


@dataclass(frozen=True)
class TaskSpec:
    """What the labels are and what a model must output.

    ``regression``: labels (N,) float sentiment scores, model output (B,).
    ``emotions``: labels (N, K) int64 in {0, 1} (one binary "present" target per emotion, MulT convention),
    model output (B, K, 2) logits.
    """

    kind: TaskKind
    label_names: tuple[str, ...] = ()
    label_range: tuple[float, float] = (-3.0, 3.0)

    @property
    def num_targets(self) -> int:
        return len(self.label_names) if self.kind == "emotions" else 1


@dataclass
class Batch:
    """One mini-batch with named modalities.

    Attributes:
        features: per modality (B, T_m, D_m) float32; missing frames are zero.
        valid: per modality (B, T_m) bool, True = real frame (not padding).
        missing: per modality (B, T_m) bool, True = removed by a protocol.
        label: (B,) float32 for regression, (B, K) int64 for emotions.
        index: (B,) int64 position of each sample in its split.
        ids: sample ids as stored in the data file.
        tokens: (B, T_language) int64 token ids of the language frames (the file's ``text_bert[:, 0]``), None
            when the file has none; read only by a model that runs a text encoder inside it
            (:mod:`hrlf.models.text_encoder`). Which of them are present is ``present("language")``.
    """

    features: dict[Modality, Tensor]
    valid: dict[Modality, Tensor]
    missing: dict[Modality, Tensor]
    label: Tensor
    index: Tensor
    ids: list[str] = field(default_factory=list)
    tokens: Tensor | None = None

    def present(self, modality: Modality) -> Tensor:
        """(B, T) bool: frames that are real and not removed."""
        return self.valid[modality] & ~self.missing[modality]

    @property
    def size(self) -> int:
        return int(self.label.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        return replace(
            self,
            features={m: x.to(device) for m, x in self.features.items()},
            valid={m: x.to(device) for m, x in self.valid.items()},
            missing={m: x.to(device) for m, x in self.missing.items()},
            label=self.label.to(device),
            index=self.index.to(device),
            tokens=None if self.tokens is None else self.tokens.to(device),
        )

    def take(self, rows: Tensor) -> Batch:
        """The sub-batch of ``rows`` ((n,) int64 row indices), in that order."""
        return replace(
            self,
            features={m: x[rows] for m, x in self.features.items()},
            valid={m: x[rows] for m, x in self.valid.items()},
            missing={m: x[rows] for m, x in self.missing.items()},
            label=self.label[rows],
            index=self.index[rows],
            ids=[self.ids[i] for i in rows.tolist()] if self.ids else [],
            tokens=None if self.tokens is None else self.tokens[rows],
        )


@dataclass
class ModelOutput:
    """What every model's ``forward`` returns, in train and eval alike.

    A model whose training system reads intermediates returns a subclass with typed fields for them (e.g.
    ``SelfMMOutput.features``, ``HRLFOutput.q``); ``aux`` holds named intermediates that only tests and
    inspection read (the backbone's Z and hourglass features, CubeMLP's cube).

    Attributes:
        pred: (B,) regression scores or (B, K, 2) emotion logits.
        aux: named intermediates for inspection (e.g. ``cube``); never losses.
    """

    pred: Tensor
    aux: dict[str, Tensor] = field(default_factory=dict)
