"""The agent's time scale: parsed from the environment, refused when meaningless, and
applied to the poll periods of the loops that wake an idle agent."""

from __future__ import annotations

import pytest

from cni_cilium import pacing
from cni_cilium.agent import nodehealth
from cni_cilium.pacing import CostPacer

pytestmark = pytest.mark.unit


def test_time_scale_defaults_to_native_speed():
    assert pacing.time_scale({}) == 1.0
    assert pacing.paced(0.25, {}) == 0.25


def test_time_scale_stretches_poll_periods():
    assert pacing.paced(0.5, {pacing.ENV: "8"}) == 4.0


@pytest.mark.parametrize("raw, problem", [("fast", "not a number"), ("0.5", "must be >= 1"),
                                          ("nan", "must be >= 1")])
def test_time_scale_refuses_values_that_are_not_a_slowdown(raw, problem):
    with pytest.raises(ValueError, match=rf"{pacing.ENV}=.*{problem}"):
        pacing.time_scale({pacing.ENV: raw})


def test_health_poller_reads_the_scale_when_built(monkeypatch):
    monkeypatch.setenv(pacing.ENV, "4")
    poller = nodehealth.NodeHealth("node1", port=0)
    assert poller.poll_seconds == pytest.approx(4 * nodehealth.POLL_SECONDS)


def test_a_costly_job_runs_at_most_its_share_of_a_cpu():
    pacer = CostPacer(share=0.02, floor=1.0)
    assert pacer.due(0.0)
    pacer.ran(10.0, 10.1)                    # 0.1 s of work: next due 5 s after it started
    assert not pacer.due(14.9) and pacer.due(15.0)
    pacer.ran(15.0, 15.001)                  # cheap: the floor decides
    assert not pacer.due(15.9) and pacer.due(16.0)


@pytest.mark.parametrize("share", [0.0, -0.1, 1.5])
def test_a_share_outside_zero_to_one_is_refused(share):
    with pytest.raises(ValueError, match="share"):
        CostPacer(share)
