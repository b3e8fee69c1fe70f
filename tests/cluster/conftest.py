"""The local Ray cluster of the tests in this folder, one per test module (see ``tests/ray_cluster.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ray_cluster import LocalCluster, local_cluster


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[LocalCluster]:
    with local_cluster() as cluster:
        yield cluster
