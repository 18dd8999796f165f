"""testinfra checks of a node with cni-cilium deployed; they hold for every provider
(namespace nodes, VMs) because they only look at the node through its shell."""

from __future__ import annotations

import json

AGENT = "/opt/cni-cilium/venv/bin/cni-cilium"


def node_name(host) -> str:
    """The inventory name (testinfra's ansible backend) or the ssh host name."""
    return host.backend.get_hostname()


def test_agent_is_running(host):
    pid_file = host.file("/run/cni-cilium/agent.pid")
    assert pid_file.exists
    pid = pid_file.content_string.strip()
    cmdline = host.file(f"/proc/{pid}/cmdline").content.replace(b"\0", b" ").decode()
    assert f"{AGENT} agent" in cmdline


def test_config_is_present_and_valid(host):
    assert host.file("/etc/cni-cilium/config.yaml").is_file
    res = host.run(f"{AGENT} config validate --json /etc/cni-cilium/config.yaml")
    assert res.rc == 0, res.stderr
    assert "tunnelMode" in json.loads(res.stdout)["effective"]


def test_bpffs_is_mounted(host):
    mount = host.mount_point("/sys/fs/bpf")
    assert mount.exists and mount.filesystem == "bpf"


def test_sshd_is_up(host):
    assert host.socket("tcp://0.0.0.0:22").is_listening or \
        host.socket("tcp://:::22").is_listening


def test_hostname_is_the_node_name(host):
    assert host.check_output("hostname") == node_name(host)


def test_cni_plugin_and_network_config_are_installed(host):
    assert host.file("/opt/cni/bin/cilium-cni").exists
    conf = json.loads(host.file("/etc/cni/net.d/05-cilium.conflist").content_string)
    assert conf["plugins"][0]["type"] == "cilium-cni"
    pod_cidr = host.ansible.get_variables().get("cni_pod_cidr") if hasattr(
        host.backend, "ansible_inventory") else None
    if pod_cidr:
        assert conf["plugins"][0]["ipam"]["subnet"] == pod_cidr


def test_nodes_manifest_lists_this_node(host):
    text = host.file("/etc/cni-cilium/manifests/00-nodes.yaml").content_string
    assert f"name: {node_name(host)}\n" in text


def test_kube_proxy_is_replaced(host):
    res = host.run(f"{AGENT} kube-proxy cleanup --dry-run --json")
    assert res.rc == 0 and json.loads(res.stdout)["removed"] == {}, res.stdout
