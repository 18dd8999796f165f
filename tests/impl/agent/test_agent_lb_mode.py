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


def test_a_running_agent_refuses_the_extra_lb_algorithms_on_an_old_kernel(
        tmp_path, monkeypatch):
    import os
    from collections import namedtuple

    from cni_cilium.agent import reconcile as agent_module

    config = tmp_path / "config.yaml"
    config.write_text("extraLoadBalancerAlgorithmsEnabled: true\n")
    running = Agent(settings_from_mapping({}), str(config), "node1")
    uname = namedtuple("uname", "sysname nodename release version machine")
    machine = os.uname().machine
    for release, refused in (("5.10.0-32-amd64", True), ("6.1.0-50-amd64", False)):
        monkeypatch.setattr(agent_module.os, "uname", lambda r=release: uname(
            "Linux", "node1", r, "#1", machine))
        running.settings = settings_from_mapping({})
        running._reload_settings()
        assert running.settings.extraLoadBalancerAlgorithmsEnabled is not refused
        assert running.config_problems == ([
            f"extraLoadBalancerAlgorithmsEnabled needs kernel >= 5.15; running {release}"]
            if refused else [])
