"""The local provider as a user meets it: cluster up/status/down, node exec/ssh/reboot,
Ansible reachability, isolation of nodes' disks, and an untouched root namespace."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from cni_harness.providers.local.netns import find_processes, list_netns
from cni_harness.providers.local.provider import LocalProvider
from cni_harness.state import Journal, cluster_dir
from cni_harness.testing import root_netns_snapshot, run_cluster_name

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

# Clusters these tests make themselves (`local_cluster` is the session's shared one).
LCX, LC1, LCC, LCB = (run_cluster_name(p) for p in ("lcx", "lc1", "lcc", "lcb"))


def harness(venv_bin, *args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run([venv_bin("cni-harness"), *args], capture_output=True, text=True,
                         timeout=300, check=False, **kw)
    if check:
        assert res.returncode == 0, res.stderr
    return res


def node_sh(provider: LocalProvider, node: str, script: str) -> str:
    return provider.exec(node, ["sh", "-c", script]).stdout.strip()


def leftovers(name: str) -> dict:
    """Anything of cluster `name` still on the host."""
    state = cluster_dir(name)
    with open("/proc/mounts", encoding="utf-8") as fh:
        mounts = [line for line in fh if state in line or f"/{name}-" in line]
    return {"netns": sorted(n for n in list_netns() if n.startswith(f"{name}-")),
            "mounts": mounts,
            "processes": find_processes("--state", state),
            "state_dir": os.path.exists(state)}


NOTHING = {"netns": [], "mounts": [], "processes": [], "state_dir": False}


def test_status_json_lists_nodes_with_ips_and_pod_cidrs(local_cluster, venv_bin):
    status = json.loads(harness(venv_bin, "cluster", "status", "--name", local_cluster.cluster,
                                "--json").stdout)
    assert status["state"] == "running"
    assert [(n["name"], n["ip"], n["podCIDR"], n["state"]) for n in status["nodes"]] == [
        ("node1", "10.99.0.11", "10.100.1.0/24", "running"),
        ("node2", "10.99.0.12", "10.100.2.0/24", "running"),
        ("node3", "10.99.0.13", "10.100.3.0/24", "running")]
    assert "node-role.kubernetes.io/control-plane" in status["nodes"][0]["labels"]
    assert (status["client"]["ip"], status["world"]["ip"]) == ("10.99.0.100", "203.0.113.10")


def test_ansible_ping_reaches_every_node_through_the_inventory(local_cluster, venv_bin):
    res = subprocess.run([venv_bin("ansible"), "-i", local_cluster.inventory_path(), "all",
                          "-m", "ping", "-o"], capture_output=True, text=True, timeout=120,
                         check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(line.split()[0] for line in res.stdout.splitlines()
                  if "SUCCESS" in line) == ["node1", "node2", "node3"]


def test_ssh_config_reaches_a_node_sshd(local_cluster):
    res = subprocess.run(["ssh", "-F", local_cluster.ssh_config_path, "node3", "hostname"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert (res.returncode, res.stdout.strip()) == (0, "node3"), res.stderr


def test_each_node_has_its_own_hostname_boot_id_bpffs_and_processes(local_cluster):
    seen = {}
    for node in ("node1", "node2"):
        out = node_sh(local_cluster, node, "hostname; cat /proc/sys/kernel/random/boot_id; "
                      "stat -f -c %T /sys/fs/bpf; cat /proc/1/comm; ip -o -4 addr show eth0")
        hostname, boot_id, fstype, init, addr = out.splitlines()
        assert hostname == node and fstype == "bpf_fs" and init == "python"
        seen[node] = boot_id
        assert local_cluster.node(node).ip in addr
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
        host_boot_id = fh.read().strip()
    assert len({seen["node1"], seen["node2"], host_boot_id}) == 3


def test_node_exec_passes_the_exit_status(local_cluster, venv_bin):
    res = harness(venv_bin, "node", "exec", "--name", local_cluster.cluster, "node2", "--",
                  "sh", "-c", "hostname; exit 7", check=False)
    assert (res.returncode, res.stdout.strip()) == (7, "node2")
    res = harness(venv_bin, "node", "exec", "--name", local_cluster.cluster, "node9", "--", "true",
                  check=False)
    assert res.returncode == 2 and "no node 'node9'" in res.stderr


def test_a_file_on_node1_etc_is_absent_on_node2_and_on_the_host(local_cluster):
    node_sh(local_cluster, "node1", "echo node1-only > /etc/lct-isolation")
    assert node_sh(local_cluster, "node1", "cat /etc/lct-isolation") == "node1-only"
    assert local_cluster.exec("node2", ["cat", "/etc/lct-isolation"], check=False
                              ).returncode != 0
    assert not os.path.exists("/etc/lct-isolation")


def test_reboot_keeps_the_disk_changes_the_boot_id_and_brings_sshd_back(local_cluster,
                                                                          venv_bin):
    node_sh(local_cluster, "node2", "echo kept > /etc/lct-reboot; echo gone > /run/lct-x; "
            "ip link add lctdummy type veth peer name lctpeer; "
            "sleep 300 >/dev/null 2>&1 &")
    before = node_sh(local_cluster, "node2", "cat /proc/sys/kernel/random/boot_id")
    netns = f"{local_cluster.cluster}-node2"
    old_netns_pids = set(subprocess.run(["ip", "netns", "pids", netns],
                                        capture_output=True, text=True).stdout.split())
    res = harness(venv_bin, "node", "reboot", "--name", local_cluster.cluster, "node2")
    assert "rebooted" in res.stdout
    after = node_sh(local_cluster, "node2", "cat /proc/sys/kernel/random/boot_id")
    assert after != before
    assert node_sh(local_cluster, "node2", "cat /etc/lct-reboot") == "kept"
    assert local_cluster.exec("node2", ["cat", "/run/lct-x"], check=False).returncode != 0
    assert "lctdummy" not in node_sh(local_cluster, "node2", "ip -o link")
    new_pids = set(subprocess.run(["ip", "netns", "pids", netns],
                                  capture_output=True, text=True).stdout.split())
    assert not old_netns_pids & new_pids                    # every old process is gone
    ssh = subprocess.run(["ssh", "-F", local_cluster.ssh_config_path, "node2",
                          "cat /proc/sys/kernel/random/boot_id"], capture_output=True,
                         text=True, timeout=60, check=False)
    assert ssh.stdout.strip() == after, ssh.stderr


def test_reboot_from_inside_the_node(local_cluster):
    """`nodectl reboot` (the inventory's cni_reboot_command) reboots the node itself."""
    before = local_cluster.boot_id("node3")
    mac = node_sh(local_cluster, "node3", "cat /sys/class/net/eth0/address")
    generation = local_cluster.generation("node3")
    local_cluster.exec("node3", ["/usr/local/sbin/nodectl", "reboot"])
    local_cluster.wait_booted("node3", generation, 60)
    assert local_cluster.boot_id("node3") != before
    # The uplink keeps its MAC, like a VM's NIC: the other nodes' neighbour entries stay right.
    assert node_sh(local_cluster, "node3", "cat /sys/class/net/eth0/address") == mac == \
        "02:00:0a:63:00:0d"
    assert node_sh(local_cluster, "node3", "hostname") == "node3"


def test_stop_and_start_a_node_keep_its_disk_and_the_routers_mac(local_cluster, venv_bin):
    """A stopped node is gone from the fabric (no namespace, no process) with its disk kept;
    `start` boots it again. The router's MAC does not change with the node's new port."""
    def router_mac() -> str:
        return subprocess.run(["ip", "netns", "exec", f"{local_cluster.cluster}-fabric", "cat",
                               "/sys/class/net/br0/address"], capture_output=True, text=True,
                              check=True).stdout.strip()

    before_mac = router_mac()
    node_sh(local_cluster, "node2", "echo kept > /etc/lct-stop")
    before = local_cluster.boot_id("node2")
    res = harness(venv_bin, "node", "stop", "--name", local_cluster.cluster, "node2")
    assert "stopped" in res.stdout
    assert f"{local_cluster.cluster}-node2" not in subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True).stdout
    stopped = harness(venv_bin, "cluster", "status", "--name", local_cluster.cluster,
                      "--json", check=False)
    assert stopped.returncode == 1
    assert {n["name"]: n["state"] for n in json.loads(stopped.stdout)["nodes"]}["node2"] == \
        "stopped"
    refused = harness(venv_bin, "node", "stop", "--name", local_cluster.cluster, "node2",
                      check=False)
    assert refused.returncode == 1 and "cannot be stopped: it is stopped" in refused.stderr
    res = harness(venv_bin, "node", "start", "--name", local_cluster.cluster, "node2")
    assert "started" in res.stdout and local_cluster.boot_id("node2") != before
    assert node_sh(local_cluster, "node2", "cat /etc/lct-stop") == "kept"
    assert before_mac == router_mac() == "02:00:0a:63:00:01"


def test_up_on_a_running_cluster_is_a_no_op_and_a_size_change_is_refused(local_cluster,
                                                                          venv_bin):
    boot_id = local_cluster.boot_id("node1")
    res = harness(venv_bin, "cluster", "up", "--name", local_cluster.cluster)
    assert "already up" in res.stderr and local_cluster.boot_id("node1") == boot_id
    res = harness(venv_bin, "cluster", "up", "--name", local_cluster.cluster, "--nodes", "2",
                  check=False)
    assert res.returncode == 1 and f"cluster down --name {local_cluster.cluster}" in res.stderr


def test_up_refuses_namespaces_it_does_not_own(venv_bin):
    subprocess.run(["ip", "netns", "add", f"{LCX}-fabric"], check=True)
    try:
        res = harness(venv_bin, "cluster", "up", "--name", LCX, check=False)
        assert res.returncode == 1 and f"{LCX}-fabric" in res.stderr and "not touching" in \
            res.stderr
        assert f"{LCX}-fabric" in list_netns()
    finally:
        subprocess.run(["ip", "netns", "delete", f"{LCX}-fabric"], check=True)
        harness(venv_bin, "cluster", "down", "--name", LCX)
    assert leftovers(LCX) == NOTHING


def test_root_namespace_is_untouched_and_down_leaves_nothing(venv_bin):
    before = root_netns_snapshot()
    harness(venv_bin, "cluster", "up", "--name", LC1, "--nodes", "2")
    try:
        assert root_netns_snapshot() == before
        with open("/proc/mounts", encoding="utf-8") as fh:
            assert "overlay" not in [line.split()[2] for line in fh]   # all inside nodes
    finally:
        harness(venv_bin, "cluster", "down", "--name", LC1)
    assert leftovers(LC1) == NOTHING
    assert root_netns_snapshot() == before


def _kill_up_midway(venv_bin, name: str, entries: int) -> None:
    """Start `cluster up` and SIGKILL it once its journal holds `entries` lines."""
    journal = Journal(os.path.join(cluster_dir(name), "journal.jsonl"))
    proc = subprocess.Popen([venv_bin("cni-harness"), "cluster", "up", "--name", name,
                             "--nodes", "3"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(journal.entries()) < entries and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("entries", [3, 7])
def test_down_after_a_kill_9_in_the_middle_of_up_removes_everything(venv_bin, entries):
    _kill_up_midway(venv_bin, LCC, entries)
    assert leftovers(LCC)["state_dir"]
    harness(venv_bin, "cluster", "down", "--name", LCC)
    assert leftovers(LCC) == NOTHING


def test_up_after_a_crash_cleans_the_stale_cluster(venv_bin):
    _kill_up_midway(venv_bin, LCC, 6)
    try:
        res = harness(venv_bin, "cluster", "up", "--name", LCC, "--nodes", "2")
        assert "stale" in res.stderr
        status = json.loads(harness(venv_bin, "cluster", "status", "--name", LCC,
                                    "--json").stdout)
        assert status["state"] == "running" and len(status["nodes"]) == 2
    finally:
        harness(venv_bin, "cluster", "down", "--name", LCC)
    assert leftovers(LCC) == NOTHING


def test_node_ssh_runs_a_command_through_sshd(local_cluster, venv_bin):
    res = harness(venv_bin, "node", "ssh", "--name", local_cluster.cluster, "node1", "--", "cat",
                  "/etc/hostname")
    assert res.stdout.strip() == "node1"


def test_bench_prints_measured_up_and_down_times(venv_bin):
    res = harness(venv_bin, "bench", "cluster", "--name", LCB, "--nodes", "2", "--json")
    rows = json.loads(res.stdout)["results"]
    assert [r["nodes"] for r in rows] == [2]
    assert rows[0]["upSeconds"] > 0 and rows[0]["downSeconds"] > 0
    assert leftovers(LCB) == NOTHING


def test_up_refuses_a_bad_module_config_before_creating_anything(venv_bin, tmp_path):
    bad = tmp_path / "config.yaml"
    bad.write_text("bpfLBMode: Fast\n")
    res = harness(venv_bin, "cluster", "up", "--name", LC1, "--config", str(bad),
                  check=False)
    assert res.returncode == 2 and "bpfLBMode: invalid value 'Fast'" in res.stderr
    assert leftovers(LC1) == NOTHING


def test_the_fabric_bridges_frames_without_netfilter_like_a_switch(local_cluster):
    if not os.path.isdir("/proc/sys/net/bridge"):
        pytest.skip("this kernel has no br_netfilter: bridged frames never meet netfilter")
    names = [f"net.bridge.bridge-nf-call-{t}" for t in ("iptables", "ip6tables", "arptables")]
    values = local_cluster.exec("router", ["sysctl", "-n", *names]).stdout.split()
    assert values == ["0", "0", "0"]


def test_client_and_world_reach_the_nodes_over_the_fabric(local_cluster, venv_bin):
    for external in ("client", "world"):
        res = local_cluster.exec(external, ["nc", "-z", "-w", "2", "10.99.0.12", "22"],
                                 check=False)
        assert res.returncode == 0, (external, res.stderr)
    routes = harness(venv_bin, "node", "exec", "--name", local_cluster.cluster, "client", "--",
                     "ip", "route").stdout
    assert "10.97.0.0/24 via 10.99.0.11" in routes        # the LB pool goes to node1
    assert "default via 203.0.113.1" in local_cluster.exec("world", ["ip", "route"]).stdout
