"""The LB mode the agent programs follows the tunnel mode in effect since boot (pure parts
of the agent: no maps, no programs)."""

from __future__ import annotations

import pytest

from cni_cilium.agent.reconcile import Agent
from cni_cilium.config import settings_from_mapping

pytestmark = pytest.mark.unit


def agent_with(settings: dict, tunnel_in_effect: str) -> Agent:
    agent = Agent(settings_from_mapping(settings), "/nonexistent/config.yaml", "node1")
    agent.tunnel_in_effect = tunnel_in_effect
    return agent


@pytest.mark.parametrize("configured,in_effect,tcp", [
    ({"bpfLBMode": "Hybrid"}, "Disabled", "DSR"),
    ({"bpfLBMode": "DSR", "tunnelMode": "VXLAN"}, "VXLAN", "SNAT"),     # running VXLAN
    ({"bpfLBMode": "DSR", "tunnelMode": "VXLAN"}, "Disabled", "DSR"),  # until the reboot
    ({"bpfLBMode": "DSR"}, "VXLAN", "SNAT"),                           # until the reboot
])
def test_lb_mode_follows_the_tunnel_mode_in_effect(configured, in_effect, tcp):
    agent = agent_with(configured, in_effect)
    assert agent.settings_in_effect().lb_mode_for("TCP") == tcp
    assert agent.reboot_required == (agent.settings.tunnelMode != in_effect)
