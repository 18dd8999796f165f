"""The agent's time scale: parsed from the environment, refused when meaningless, and
applied to the poll periods of the loops that wake an idle agent."""

from __future__ import annotations

import pytest

from cni_cilium import pacing
from cni_cilium.agent import nodehealth

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
