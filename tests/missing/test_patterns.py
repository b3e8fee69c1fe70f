"""Tests for the pure mask functions in hrlf.missing.patterns."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hrlf.missing.patterns import (
    PROPER_SUBSETS,
    frame_mask,
    modality_mask,
    ranked_drop,
    sample_subsets,
    unk_tokens,
)
from hrlf.types import MODALITIES

RATES = tuple(round(0.1 * i, 1) for i in range(11))


def _valid(lengths: list[int], length: int) -> torch.Tensor:
    """(B, T) right-padded valid mask."""
    return torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------ ranked_drop


def test_ranked_drop_hand_example() -> None:
    # row 0: L = 4 (last frame padding), rate 0.5 -> drop 2 smallest uniforms among 0..3 -> positions 1 and 3
    # row 1: L = 5, rate 0.4 -> drop 2 -> positions 4 (0.05) and 0 (0.1)
    valid = _valid([4, 5], 5)
    uniforms = torch.tensor([[0.9, 0.1, 0.5, 0.2, 0.0], [0.1, 0.6, 0.7, 0.8, 0.05]])
    missing = ranked_drop(valid, torch.tensor([0.5, 0.4], dtype=torch.float64), uniforms)
    expected = torch.tensor([[False, True, False, True, False], [True, False, False, False, True]])
    assert torch.equal(missing, expected)


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 23), min_size=1, max_size=6),
    pad=st.integers(0, 5),
    seed=st.integers(0, 2**31),
)
def test_exact_count_padding_and_nesting(lengths: list[int], pad: int, seed: int) -> None:
    length = max(lengths) + pad
    valid = _valid(lengths, length)
    uniforms = torch.rand(valid.shape, generator=_gen(seed), dtype=torch.float64)
    previous = torch.zeros_like(valid)
    for r in RATES:
        missing = ranked_drop(valid, torch.full((len(lengths),), r, dtype=torch.float64), uniforms)
        assert missing.dtype == torch.bool and missing.shape == valid.shape
        assert not (missing & ~valid).any(), "padding marked missing"
        expected = [math.floor(r * n + 1e-6) for n in lengths]
        assert missing.sum(dim=1).tolist() == expected
        assert not (previous & ~missing).any(), "masks not nested across rates"
        previous = missing


def test_float_error_in_rate_times_length() -> None:
    # 0.3 * 10 = 2.9999999999999996 and 0.7 * 10 = 7.000000000000001: counts must be 3 and 7
    valid = torch.ones(2, 10, dtype=torch.bool)
    uniforms = torch.rand(2, 10, generator=_gen(0))
    missing = ranked_drop(valid, torch.tensor([0.3, 0.7], dtype=torch.float64), uniforms)
    assert missing.sum(dim=1).tolist() == [3, 7]


def test_ranked_drop_rejects_bad_inputs() -> None:
    valid = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ranked_drop(valid, torch.tensor([0.5, 1.5]), torch.rand(2, 3))
    with pytest.raises(ValueError, match="uniforms"):
        ranked_drop(valid, torch.tensor([0.5, 0.5]), torch.rand(2, 4))
    with pytest.raises(ValueError, match="bool"):
        ranked_drop(valid.long(), torch.tensor([0.5, 0.5]), torch.rand(2, 3))


# ------------------------------------------------------------------------------------------------- frame_mask


def test_frame_mask_rate_and_determinism() -> None:
    valid = _valid([50, 37, 12, 0, 50], 50)
    a = frame_mask(valid, 0.3, generator=_gen(7))
    b = frame_mask(valid, 0.3, generator=_gen(7))
    c = frame_mask(valid, 0.3, generator=_gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.sum(dim=1).tolist() == [15, 11, 3, 0, 15]
    assert not (a & ~valid).any()


def test_frame_mask_fresh_per_call_and_per_row_rates() -> None:
    valid = torch.ones(4, 20, dtype=torch.bool)
    gen = _gen(0)
    first = frame_mask(valid, 0.5, generator=gen)
    second = frame_mask(valid, 0.5, generator=gen)
    assert not torch.equal(first, second)  # the generator advances
    rates = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    assert frame_mask(valid, rates, generator=gen).sum(dim=1).tolist() == [0, 5, 10, 20]


def test_frame_mask_does_not_touch_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    frame_mask(torch.ones(3, 9, dtype=torch.bool), 0.5, generator=_gen(1))
    assert torch.equal(torch.rand(3), expected)


def test_frame_mask_rate_one_drops_every_valid_frame() -> None:
    valid = _valid([5, 3, 0], 6)
    missing = frame_mask(valid, 1.0, generator=_gen(0))
    assert torch.equal(missing, valid)


# ---------------------------------------------------------------------------------------------- modality_mask


def test_modality_mask_rows() -> None:
    valid = {"language": _valid([3, 1], 4), "audio": _valid([2, 2], 5), "vision": _valid([0, 6], 6)}
    out = modality_mask(valid, ("language",))
    assert not out["language"].any()
    assert out["audio"].all() and out["vision"].all()
    assert {m: x.shape for m, x in out.items()} == {m: x.shape for m, x in valid.items()}
    assert all(not x.any() for x in modality_mask(valid, MODALITIES).values())
    assert all(x.all() for x in modality_mask(valid, ()).values())
    with pytest.raises(ValueError, match="unknown"):
        modality_mask(valid, ("text",))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- sample_subsets


def test_sample_subsets_frequencies() -> None:
    n = 60_000
    avail = sample_subsets(n, subset_prob=0.5, generator=_gen(0))
    assert avail.shape == (n, 3) and avail.dtype == torch.bool
    assert avail.any(dim=1).all(), "a sample lost every modality"
    complete = avail.all(dim=1).float().mean().item()
    assert complete == pytest.approx(0.5, abs=0.01)
    for subset in PROPER_SUBSETS:
        pattern = torch.tensor([m in subset for m in MODALITIES])
        freq = (avail == pattern).all(dim=1).float().mean().item()
        assert freq == pytest.approx(0.5 / 6, abs=0.006), subset


def test_sample_subsets_extremes_and_determinism() -> None:
    assert sample_subsets(100, subset_prob=0.0, generator=_gen(0)).all()
    always = sample_subsets(100, subset_prob=1.0, generator=_gen(0))
    assert not always.all(dim=1).any()
    a = sample_subsets(64, subset_prob=0.5, generator=_gen(3))
    assert torch.equal(a, sample_subsets(64, subset_prob=0.5, generator=_gen(3)))
    assert not torch.equal(a, sample_subsets(64, subset_prob=0.5, generator=_gen(4)))
    with pytest.raises(ValueError):
        sample_subsets(4, subset_prob=1.5, generator=_gen(0))


# ------------------------------------------------------------------------------------------------- unk_tokens


def test_unk_tokens_keeps_cls_sep_and_padding() -> None:
    # ids: [CLS]=101 w w w [SEP]=102 pad pad ; second row has 3 real tokens
    ids = torch.tensor([[101, 7, 8, 9, 102, 0, 0], [101, 5, 102, 0, 0, 0, 0]])
    attention = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0, 0]])
    missing = torch.ones_like(ids, dtype=torch.bool)  # try to drop everything, padding included
    out = unk_tokens(ids, missing, unk_id=3, attention_mask=attention)
    assert out.tolist() == [[101, 3, 3, 3, 102, 0, 0], [101, 3, 102, 0, 0, 0, 0]]
    no_keep = unk_tokens(ids, missing, unk_id=3, attention_mask=attention, keep_special=False)
    assert no_keep.tolist() == [[3, 3, 3, 3, 3, 0, 0], [3, 3, 3, 0, 0, 0, 0]]
    assert ids.tolist()[0] == [101, 7, 8, 9, 102, 0, 0]  # input untouched


def test_unk_tokens_with_frame_mask_and_unk_id_from_tokenizer() -> None:
    attention = _valid([10, 6], 12)
    ids = torch.randint(1000, 2000, (2, 12), generator=_gen(0)) * attention
    missing = frame_mask(attention, 0.5, generator=_gen(1))
    out = unk_tokens(ids, missing, unk_id=17, attention_mask=attention.long())
    dropped = out == 17
    assert not (dropped & ~attention).any()
    assert not dropped[:, 0].any() and not dropped[0, 9] and not dropped[1, 5]
    assert torch.equal(out[~dropped], ids[~dropped])
    with pytest.raises(ValueError, match="unk_id"):
        unk_tokens(ids, missing, unk_id=True, attention_mask=attention)  # type: ignore[arg-type]
