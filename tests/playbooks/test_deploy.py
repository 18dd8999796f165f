"""Deploying with playbooks/site.yml on a local cluster: idempotency, testinfra checks,
kube-proxy replacement, the module config, boot-time start, and preflight refusal."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from cni_cilium.cni import conflist
from cni_harness import PROJECT_ROOT
from cni_harness.deploy.playbook import run_playbook
from cni_harness.testing import fresh_local_cluster, run_cluster_name

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

KUBE_CHAINS = """\
iptables-nft -t nat -N KUBE-SERVICES
iptables-nft -t nat -A PREROUTING -m comment --comment "kubernetes service portals" \
  -j KUBE-SERVICES
iptables-nft -t nat -N KUBE-POSTROUTING
iptables-nft -t nat -A POSTROUTING -j KUBE-POSTROUTING
iptables-nft -t filter -N KUBE-FORWARD
iptables-nft -t filter -A FORWARD -j KUBE-FORWARD
iptables-nft -t filter -A KUBE-FORWARD -j ACCEPT
iptables-legacy -t nat -N KUBE-MARK-MASQ || true
"""
KUBE_PROXY_UNIT = """\
[Service]
ExecStart=/bin/sleep 100000
"""


def sh(provider, node: str, script: str) -> str:
    return provider.exec(node, ["sh", "-c", script]).stdout


def test_first_deploy_changes_every_node(deployed_cluster):
    first = deployed_cluster.first_deploy
    assert first.rc == 0
    assert all(first.stats["changed"].get(n) for n in ("node1", "node2", "node3"))


def test_second_deploy_changes_nothing(deployed_cluster):
    again = run_playbook(deployed_cluster)
    assert again.rc == 0, again.failed_tasks
    assert again.changed == 0, again.stats


def test_testinfra_checks_pass_on_every_node(deployed_cluster, venv_bin):
    res = subprocess.run([venv_bin("cni-harness"), "check", "--name", deployed_cluster.cluster],
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout[-3000:]
    assert "24 passed" in res.stdout             # 8 checks x 3 nodes


def test_network_config_is_the_one_the_harness_uses_before_deploy(deployed_cluster):
    for node in deployed_cluster.nodes():
        text = sh(deployed_cluster, node.name, "cat /etc/cni/net.d/05-cilium.conflist")
        assert json.loads(text) == conflist(node.pod_cidr)


def test_deploy_replaces_kube_proxy_and_installs_the_given_config(deployed_cluster,
                                                                    tmp_path):
    node3 = "node3"
    sh(deployed_cluster, node3, KUBE_CHAINS)
    deployed_cluster.put_file(node3, "/etc/nodeinit/units/kube-proxy.service",
                              KUBE_PROXY_UNIT.encode())
    sh(deployed_cluster, node3, "nodectl enable --now kube-proxy")
    assert "KUBE-SERVICES" in sh(deployed_cluster, node3, "iptables-nft-save")
    config = tmp_path / "vxlan.yaml"
    config.write_text("apiVersion: deckhouse.io/v1alpha1\nkind: ModuleConfig\n"
                      "metadata: {name: cni-cilium}\nspec:\n  version: 1\n"
                      "  settings: {tunnelMode: VXLAN, bpfLBMode: SNAT}\n")
    result = run_playbook(deployed_cluster, config=str(config))
    assert result.rc == 0, result.failed_tasks
    saved = sh(deployed_cluster, node3, "iptables-nft-save; iptables-legacy-save")
    assert "KUBE-" not in saved, saved
    assert sh(deployed_cluster, node3, "nodectl is-active kube-proxy || true").strip() != \
        "running"
    assert sh(deployed_cluster, node3, "nodectl is-enabled kube-proxy || true").strip() == \
        "disabled"
    for node in ("node1", node3):
        assert sh(deployed_cluster, node, "cat /etc/cni-cilium/config.yaml") == \
            config.read_text()


def test_the_agent_starts_at_boot_after_sshd(deployed_cluster):
    old_boot = deployed_cluster.boot_id("node2")
    deployed_cluster.reboot("node2")
    status = json.loads(sh(deployed_cluster, "node2", "nodectl --json status"))["status"]
    services = status["services"]
    assert services["sshd.service"]["state"] == "running"
    assert services["cni-cilium-agent.service"]["state"] == "running"
    assert services["sshd.service"]["startedAt"] <= \
        services["cni-cilium-agent.service"]["startedAt"]
    new_pid = sh(deployed_cluster, "node2",
                 "for i in $(seq 100); do [ -s /run/cni-cilium/agent.pid ] && break; "
                 "sleep 0.05; done; cat /run/cni-cilium/agent.pid").strip()
    assert new_pid and new_pid == str(services["cni-cilium-agent.service"]["pid"])
    assert status["bootId"] != old_boot


def test_an_unsupported_host_stops_the_play_before_anything_is_touched():
    with fresh_local_cluster(run_cluster_name("lcu"), nodes=1) as provider:
        provider.put_file("node1", "/etc/os-release",
                          b'ID=ubuntu\nVERSION_ID="18.04"\nPRETTY_NAME="Ubuntu 18.04.6 LTS"\n')
        result = run_playbook(provider)
        assert result.rc != 0
        assert any("not supported" in line and "Ubuntu 18.04" in line
                   for line in result.failed_tasks), result.failed_tasks
        assert result.stats["changed"] == {}
        listing = provider.exec("node1", ["ls", "/opt", "/etc/cni-cilium"], check=False)
        assert "cni-cilium" not in listing.stdout


def test_a_bad_config_is_refused_before_deploying(venv_bin, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tunnelMode: Sideways\n")
    res = subprocess.run([venv_bin("cni-harness"), "deploy", "--name", run_cluster_name("lcd"),
                          "--config",
                          str(bad)], capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 2 and "tunnelMode: invalid value 'Sideways'" in res.stderr


def test_ansible_lint_passes(venv_bin):
    env = dict(os.environ, PATH=os.path.dirname(venv_bin("ansible-lint")) + os.pathsep +
               os.environ["PATH"])
    res = subprocess.run([venv_bin("ansible-lint"), "--offline"], capture_output=True,
                         text=True, cwd=os.path.join(PROJECT_ROOT, "playbooks"), env=env,
                         timeout=300, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]


def test_rolling_reboot_playbook_uses_the_inventorys_reboot_command(deployed_cluster):
    before = deployed_cluster.boot_id("node1")
    result = run_playbook(deployed_cluster, "reboot.yml", extravars={"reboot_hosts": "node1"})
    assert result.rc == 0, result.failed_tasks
    assert deployed_cluster.boot_id("node1") != before
    assert sh(deployed_cluster, "node1", "nodectl is-active cni-cilium-agent").strip() == \
        "running"


def test_the_project_sources_are_installed_on_every_node(deployed_cluster):
    bpf = os.path.join(PROJECT_ROOT, "bpf")
    want = sorted(os.path.relpath(os.path.join(d, f), bpf)
                  for d, _dirs, files in os.walk(bpf) for f in files)
    for node in ("node1", "node3"):
        got = sh(deployed_cluster, node, "cd /opt/cni-cilium/bpf 2>/dev/null && "
                 "find -L . -type f | sed 's|^./||' | sort; true").split()
        assert got == want
        version = sh(deployed_cluster, node, "/opt/cni-cilium/venv/bin/cni-cilium --version")
        assert "0.1.0" in version


def test_an_agent_that_cannot_load_its_datapath_stops_the_deploy_with_the_reason(
        deployed_cluster, tmp_path):
    # A copy of the project whose BPF program does not compile: every agent fails to start.
    broken = tmp_path / "project"
    broken.mkdir()
    for name in ("pyproject.toml", "README.md", "impl", "bpf"):
        src = os.path.join(PROJECT_ROOT, name)
        subprocess.run(["cp", "-r", src, str(broken / name)], check=True)
    with open(broken / "bpf" / "cni_cilium.c", "a", encoding="utf-8") as fh:
        fh.write("\nthis is not C;\n")
    try:
        failed = run_playbook(deployed_cluster,
                              extravars={"cni_cilium_project_root": str(broken)})
        assert failed.rc != 0
        # Judged from the agent's own start error, not a wait that ran out.
        assert len(failed.failed_tasks) == 3, failed.failed_tasks
        for line in failed.failed_tasks:
            assert "Stop when the agent is not running" in line, line
            assert "the agent could not start: bcc could not compile/load" in line, line
        for node in ("node1", "node2", "node3"):
            error = json.loads(sh(deployed_cluster, node,
                                  "cat /run/cni-cilium/start-error.json"))
            assert error["node"] == node and "could not compile" in error["error"]
            assert sh(deployed_cluster, node,
                      "test -e /run/cni-cilium/status.json && echo stale; true") == ""
    finally:
        restored = run_playbook(deployed_cluster)
    assert restored.rc == 0, restored.failed_tasks
    for node in ("node1", "node2", "node3"):
        assert sh(deployed_cluster, node, "ls /run/cni-cilium").split().count(
            "status.json") == 1
        assert sh(deployed_cluster, node,
                  "test -e /run/cni-cilium/start-error.json && echo left; true") == ""
