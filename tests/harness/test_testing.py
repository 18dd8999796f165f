"""Test clusters get names unique to the run (pure)."""

from __future__ import annotations

import pytest

from cni_harness.providers.local.addressing import PlanError
from cni_harness.testing import RUN_SUFFIX, run_cluster_name

pytestmark = pytest.mark.unit


def test_run_cluster_names_share_the_run_suffix_and_stay_valid():
    assert run_cluster_name("lct") == "lct" + RUN_SUFFIX == run_cluster_name("lct")
    assert run_cluster_name("lcd") != run_cluster_name("lct")
    assert len(run_cluster_name("qmprov")) <= 12


def test_a_prefix_too_long_for_a_cluster_name_is_refused():
    with pytest.raises(PlanError, match="1-12 lowercase letters"):
        run_cluster_name("toolongpre")
