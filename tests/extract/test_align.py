"""Token intervals and frame pooling: the alignment rules of hrlf.extract.align."""

from __future__ import annotations

import numpy as np
import pytest

from hrlf.extract.align import Word, pool_frames, token_intervals, uniform_intervals


def test_word_intervals_follow_word_timings_and_specials_span_the_clip():
    words = [Word("i", 0.0, 0.2), Word("loved", 0.2, 0.7), Word("it", 0.8, 1.0)]
    # [CLS] i lov ##ed it [SEP]
    out = token_intervals([None, 0, 1, 1, 2, None], duration=1.5, words=words)
    np.testing.assert_allclose(out, [[0, 1.5], [0, 0.2], [0.2, 0.7], [0.2, 0.7], [0.8, 1.0], [0, 1.5]])


def test_word_intervals_are_clipped_to_the_clip():
    out = token_intervals([0], duration=1.0, words=[Word("x", -0.5, 3.0)])
    np.testing.assert_allclose(out, [[0.0, 1.0]])


def test_uniform_intervals_split_the_clip_by_words_in_reading_order():
    out = token_intervals([None, 0, 1, 1, 2, None], duration=3.0)
    np.testing.assert_allclose(out[1:5], [[0, 1.0], [1.0, 2.0], [1.0, 2.0], [2.0, 3.0]])
    np.testing.assert_allclose(out[[0, 5]], [[0, 3.0], [0, 3.0]])


def test_a_truncated_transcript_keeps_its_words_at_their_share_of_the_clip():
    # 3 of 10 words survived truncation: they cover the first 30% of the clip, not all of it
    out = token_intervals([None, 0, 1, 2, None], duration=10.0, n_words=10)
    np.testing.assert_allclose(out[1:4], [[0, 1.0], [1.0, 2.0], [2.0, 3.0]])


def test_only_special_tokens_give_whole_clip_intervals():
    np.testing.assert_allclose(token_intervals([None, None], duration=3.0), [[0, 3], [0, 3]])


def test_uniform_units_cover_the_clip_and_respect_the_cap():
    out = uniform_intervals(3.0, unit_seconds=0.3, max_units=50)
    assert out.shape == (10, 2) and out[0, 0] == 0 and out[-1, 1] == pytest.approx(3.0)
    assert uniform_intervals(100.0, unit_seconds=0.3, max_units=50).shape == (50, 2)
    assert uniform_intervals(0.05, unit_seconds=0.3, max_units=50).shape == (1, 2)
    with pytest.raises(ValueError):
        uniform_intervals(0.0, unit_seconds=0.3, max_units=5)


def test_pool_frames_averages_inside_each_interval():
    times = np.arange(10) * 0.1  # 0.0 .. 0.9
    frames = np.arange(10, dtype=np.float64)[:, None] * np.array([[1.0, -1.0]])
    out = pool_frames(frames, times, np.array([[0.0, 0.3], [0.3, 1.0]]))
    np.testing.assert_allclose(out, [[1.0, -1.0], [6.0, -6.0]], rtol=1e-6)


def test_pool_frames_takes_the_nearest_frame_for_an_interval_without_frames():
    times = np.array([0.0, 1.0, 2.0])
    frames = np.array([[0.0], [10.0], [20.0]])
    out = pool_frames(frames, times, np.array([[1.2, 1.4], [1.7, 1.9], [5.0, 6.0], [1.0, 1.0]]))
    np.testing.assert_allclose(out[:, 0], [10.0, 20.0, 20.0, 10.0])


def test_pool_frames_rejects_bad_input():
    with pytest.raises(ValueError):
        pool_frames(np.zeros((0, 2)), np.zeros(0), np.zeros((1, 2)))
    with pytest.raises(ValueError):
        pool_frames(np.zeros((2, 2)), np.array([1.0, 0.0]), np.zeros((1, 2)))
