"""Batches: every sample once per epoch, order a pure function of the seed, eval order fixed, length buckets."""

from __future__ import annotations

import pytest
import torch

from hrlf.data.datamodule import DataModule
from hrlf.data.features import load_features


@pytest.fixture(scope="module")
def dm(tiny_mosi):
    return DataModule(load_features(tiny_mosi))


def indices(batches):
    return [b.index.tolist() for b in batches]


@pytest.mark.parametrize("bucket", [1, 2, 8])
def test_each_sample_once_and_deterministic(dm, bucket):
    a = indices(dm.batches("train", batch_size=10, shuffle_seed=3, bucket=bucket))
    b = indices(dm.batches("train", batch_size=10, shuffle_seed=3, bucket=bucket))
    c = indices(dm.batches("train", batch_size=10, shuffle_seed=4, bucket=bucket))
    assert a == b and a != c
    flat = sorted(i for batch in a for i in batch)
    assert flat == list(range(len(dm.datasets["train"])))


def test_buckets_group_similar_lengths(dm):
    lengths = dm.lengths["train"]

    def mean_spread(bucket):
        spreads = [
            float(lengths[b].max() - lengths[b].min())
            for b in indices(dm.batches("train", batch_size=8, shuffle_seed=0, bucket=bucket))
        ]
        return sum(spreads) / len(spreads)

    assert mean_spread(6) < mean_spread(1)


def test_eval_splits_keep_file_order_and_ids(dm):
    got = indices(dm.batches("test", batch_size=5))
    assert [i for b in got for i in b] == list(range(len(dm.datasets["test"])))
    batch = next(dm.batches("test", batch_size=4))
    assert batch.ids == dm.datasets["test"].ids[:4]
    assert all(not m.any() for m in batch.missing.values())


def test_workers_give_the_same_batches(dm):
    plain = list(dm.batches("train", batch_size=10, shuffle_seed=1))
    workers = DataModule(dm.file, num_workers=2)
    parallel = list(workers.batches("train", batch_size=10, shuffle_seed=1))
    assert indices(plain) == indices(parallel)
    for a, b in zip(plain, parallel, strict=True):
        assert all(torch.equal(a.features[m], b.features[m]) for m in a.features)


def test_drop_last(dm):
    full = indices(dm.batches("train", batch_size=10, shuffle_seed=0, drop_last=True))
    assert all(len(b) == 10 for b in full)


def test_video_batches_hold_whole_videos(dm):
    videos = dm.videos["train"]
    assert sorted(i for v in videos for i in v) == list(range(len(dm.datasets["train"])))
    owner = {i: k for k, v in enumerate(videos) for i in v}
    for shuffle in (None, 3):
        batches = indices(dm.batches("train", batch_size=10, shuffle_seed=shuffle, by_video=True))
        assert sorted(i for b in batches for i in b) == list(range(len(dm.datasets["train"])))
        for b in batches:
            for k in {owner[i] for i in b}:
                assert set(videos[k]) <= set(b)  # no video is cut by a batch boundary
    orders = {str(indices(dm.batches("train", batch_size=10, shuffle_seed=s, by_video=True))) for s in range(8)}
    assert len(orders) > 1  # shuffling permutes videos
