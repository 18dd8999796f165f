"""The systemd unit subset nodeinit runs (pure)."""

from __future__ import annotations

import pytest

from cni_harness.providers.local.units import UnitError, parse_unit

pytestmark = pytest.mark.unit

AGENT = """\
[Unit]
Description=cni-cilium node agent
After=network-online.target

[Service]
Type=simple
Environment=CNI_CILIUM_BPF_DIR=/opt/cni-cilium/bpf "A=b c"
ExecStart=/opt/cni-cilium/venv/bin/cni-cilium agent \\
    --config /etc/cni-cilium/config.yaml --node-name node1
Restart=on-failure
RestartSec=2s
TimeoutStopSec=10
StandardOutput=append:/var/log/cni-cilium/agent.log
StandardError=append:/var/log/cni-cilium/agent.log
RuntimeDirectory=cni-cilium
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
"""


def test_the_agent_unit_parses_into_what_nodeinit_needs():
    unit = parse_unit(AGENT, "cni-cilium-agent.service")
    assert unit.exec_start == ("/opt/cni-cilium/venv/bin/cni-cilium", "agent", "--config",
                               "/etc/cni-cilium/config.yaml", "--node-name", "node1")
    assert unit.environment == {"CNI_CILIUM_BPF_DIR": "/opt/cni-cilium/bpf", "A": "b c"}
    assert (unit.restart, unit.restart_sec, unit.timeout_stop_sec) == ("on-failure", 2.0, 10.0)
    assert unit.stdout_path == unit.stderr_path == "/var/log/cni-cilium/agent.log"
    assert unit.runtime_directories == ("cni-cilium",)
    assert unit.description == "cni-cilium node agent"
    assert unit.ignored == ("LimitNOFILE",)


def test_the_template_in_the_install_role_parses(tmp_path):
    import os

    import jinja2

    from cni_harness import PROJECT_ROOT
    path = os.path.join(PROJECT_ROOT, "playbooks", "roles", "install", "templates",
                        "cni-cilium-agent.service.j2")
    with open(path, encoding="utf-8") as fh:
        template = jinja2.Template(fh.read())
    text = template.render(cni_cilium_install_dir="/opt/cni-cilium", inventory_hostname="node1",
                           ansible_managed="managed", cni_cilium_maglev_table_size=16381,
                           cni_time_scale=8.0)
    unit = parse_unit(text, "cni-cilium-agent.service")
    assert unit.exec_start[0] == "/opt/cni-cilium/venv/bin/cni-cilium"
    assert unit.environment["CNI_CILIUM_TIME_SCALE"] == "8.0"   # the agent's poll periods
    assert unit.ignored == ()


@pytest.mark.parametrize("text, problem", [
    ("[Unit]\nDescription=x\n", "no [Service] section"),
    ("[Service]\nRestart=sometimes\nExecStart=/bin/true\n", "Restart=sometimes: allowed"),
    ("[Service]\nType=forking\nExecStart=/bin/true\n", "Type=forking: allowed"),
    ("[Service]\nExecStart=true\n", "must start with an absolute path"),
    ("[Service]\nExecStart=-/bin/true\n", "prefix '-' is not supported"),
    ("[Service]\nStandardOutput=syslog\nExecStart=/bin/true\n", "StandardOutput=syslog"),
    ("[Service]\nRestartSec=soon\nExecStart=/bin/true\n", "not a number of seconds"),
    ("[Service]\n", "ExecStart= is required"),
    ("ExecStart=/bin/true\n", "expected [Section] or Key=Value"),
])
def test_bad_units_name_the_problem(text, problem):
    with pytest.raises(UnitError) as err:
        parse_unit(text, "x.service")
    assert any(problem in p for p in err.value.problems), err.value.problems
