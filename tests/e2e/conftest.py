"""What every e2e suite attaches when one of its cases fails on a deployed cluster."""

from __future__ import annotations

import json
import os

import pytest

from cni_harness.suites.runner import RESULTS_ENV
from cni_harness.testing import record_failure


def pytest_runtest_logreport(report):
    """A failed phase's traceback into the suite's results directory at once."""
    record_failure(report, os.environ.get(RESULTS_ENV))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item (`item.rep_call`), for teardown to read."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(autouse=True)
def datapath_counters_on_failure(request, record_property):
    """After a failed case, every node's non-zero datapath counters (drops by reason,
    redirects, DSR options...) as evidence: the first thing to read when packets vanish,
    above all from a guest whose cluster is gone once the run ends."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is None or not report.failed:
        return
    from cni_harness.suites.lab import Lab

    labs = [value.lab for value in request.node.funcargs.values()
            if isinstance(getattr(value, "lab", None), Lab)]
    if not labs:
        return
    try:
        counters = labs[0].datapath_counters()
    except Exception as exc:      # whatever it was, the evidence says why it is missing
        counters = {"error": f"{type(exc).__name__}: {exc}"}
    record_property("evidence", json.dumps({"onFailure": {"datapathCounters": counters}},
                                           sort_keys=True))
