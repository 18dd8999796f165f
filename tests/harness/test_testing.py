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


class _Report:
    def __init__(self, failed: bool, nodeid: str = "tests/e2e/test_x.py::test_y"):
        self.failed, self.nodeid, self.when = failed, nodeid, "call"
        self.longreprtext = "E   assert 1 == 2"


def test_a_failed_phase_is_written_at_once_and_a_passed_one_not(tmp_path):
    from cni_harness.testing import FAILURES_FILE, record_failure

    assert record_failure(_Report(False), str(tmp_path)) is None
    assert record_failure(_Report(True), None) is None
    path = record_failure(_Report(True), str(tmp_path))
    record_failure(_Report(True, "tests/e2e/test_x.py::test_z"), str(tmp_path))
    assert path == str(tmp_path / FAILURES_FILE)
    text = (tmp_path / FAILURES_FILE).read_text()
    assert text.count("E   assert 1 == 2") == 2
    assert "==== tests/e2e/test_x.py::test_y (call)" in text and "test_z (call)" in text
