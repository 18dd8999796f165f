"""The LB algorithm figures of `cni-harness bench datapath` (the pure part)."""

from __future__ import annotations

import pytest

from cni_cilium.maglev import chunk_count
from cni_harness.bench import format_maglev_results, maglev_benchmark

pytestmark = pytest.mark.unit


def test_the_maglev_figures_come_from_real_tables():
    (row,) = maglev_benchmark(size=1021, counts=(10,))
    assert row["backends"] == 10 and row["chunks"] == chunk_count(1021)
    assert row["moved"] >= row["ofRemoved"] >= 1021 // 10
    assert 0 < row["chunksRewritten"] <= row["chunks"]
    assert "M = 1021" in format_maglev_results([row])
