"""Pods through the CNI plugin, like a kubelet, on a local cluster with nothing deployed
(the harness's own plugin), and the desired state the harness distributes from them."""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import time

import pytest
import yaml

from cni_harness.cluster.apiserver import NODE_MANIFEST_DIR, ApiServer
from cni_harness.cluster.pods import PodRuntime

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SERVER = ["python3", "-m", "http.server", "8080"]


@pytest.fixture(scope="module")
def runtime(local_cluster):
    rt = PodRuntime(local_cluster)
    yield rt
    for rec in rt.list():
        rt.delete(rec.name, rec.namespace)


def sh(provider, node: str, script: str, check: bool = True) -> subprocess.CompletedProcess:
    return provider.exec(node, ["sh", "-c", script], check=check)


def node_file(provider, node: str, path: str) -> str | None:
    res = provider.exec(node, ["cat", path], check=False)
    return res.stdout if res.returncode == 0 else None


def curl_from(provider, rt, pod: str, url: str) -> str:
    node, argv = rt.exec_argv(pod, ["curl", "-s", "--max-time", "2", url])
    for _ in range(50):                     # the server may still be starting
        res = provider.exec(node, argv, check=False)
        if res.returncode == 0:
            return res.stdout
        time.sleep(0.1)
    raise AssertionError(f"{pod} could not fetch {url}")


def test_pods_on_two_nodes_get_distinct_addresses_from_their_node_cidrs(local_cluster,
                                                                          runtime):
    a = runtime.run("node1", "pa", SERVER, labels={"app": "web"},
                    ports=[{"name": "http", "containerPort": 8080}])
    b = runtime.run("node2", "pb", SERVER, labels={"app": "web"},
                    ports=[{"name": "http", "containerPort": 8080}])
    assert a.ip != b.ip
    assert ipaddress.IPv4Address(a.ip) in ipaddress.IPv4Network("10.100.1.0/24")
    assert ipaddress.IPv4Address(b.ip) in ipaddress.IPv4Network("10.100.2.0/24")
    # Inside the pod: the address on eth0 and the routes the contract names.
    node, argv = runtime.exec_argv("pa", ["sh", "-c", "ip -o -4 addr show eth0; ip route"])
    out = local_cluster.exec(node, argv).stdout
    assert f"inet {a.ip}/32" in out
    assert re.search(r"^default via 10\.100\.1\.1 dev eth0", out, re.M)
    assert re.search(r"^10\.100\.1\.1 dev eth0 .*scope link", out, re.M)
    # On the node: the lxc veth with the /32 route, and the endpoint file for the agent.
    host_if = a.cni_result["interfaces"][0]["name"]
    assert f"{a.ip} dev {host_if}" in sh(local_cluster, "node1", "ip route").stdout
    ep = json.loads(node_file(local_cluster, "node1",
                              f"/run/cni-cilium/endpoints/{a.container_id}.json"))
    assert (ep["ip"], ep["ifname"], ep["podName"], ep["podNamespace"]) == (
        a.ip, host_if, "pa", "default")
    assert {"containerID", "netns", "ifindex", "podIfname", "mac"} <= set(ep)


def test_a_pod_reaches_another_pod_on_its_node_and_its_node(local_cluster, runtime):
    runtime.run("node1", "pc", ["sleep", "600"])
    pa = runtime.get("default", "pa")
    assert "Directory listing" in curl_from(local_cluster, runtime, "pc",
                                            f"http://{pa.ip}:8080/")
    node, argv = runtime.exec_argv("pc", ["nc", "-z", "-w", "2", "10.99.0.11", "22"])
    assert local_cluster.exec(node, argv, check=False).returncode == 0


def test_pod_list_reports_running_pods(local_cluster, runtime, venv_bin):
    res = subprocess.run([venv_bin("cni-harness"), "pod", "list", "--name",
                          local_cluster.cluster, "--json"],
                         capture_output=True, text=True, timeout=60, check=True)
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["pa"]["running"] and rows["pa"]["node"] == "node1"


def test_endpoint_slices_follow_pods_on_every_node(local_cluster, runtime):
    api = ApiServer.for_provider(local_cluster)
    report = api.apply([{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                         "spec": {"selector": {"app": "web"},
                                  "ports": [{"name": "http", "port": 80,
                                             "targetPort": "http"}]}}])
    assert report.applied == ["Service default/web"] and not report.problems

    def slice_ips(node: str) -> set[str]:
        ls = sh(local_cluster, node, f"ls {NODE_MANIFEST_DIR}").stdout.split()
        name = next(n for n in ls if n.startswith("endpointslice-default-web-"))
        doc = yaml.safe_load(node_file(local_cluster, node, f"{NODE_MANIFEST_DIR}/{name}"))
        assert doc["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
        return {e["addresses"][0] for e in doc["endpoints"]}

    pa, pb = runtime.get("default", "pa"), runtime.get("default", "pb")
    assert all(slice_ips(n) == {pa.ip, pb.ip} for n in ("node1", "node2", "node3"))
    svc = yaml.safe_load(node_file(local_cluster, "node3",
                                   f"{NODE_MANIFEST_DIR}/service-default-web.yaml"))
    assert svc["spec"]["clusterIP"].startswith("10.96.")
    pod_doc = yaml.safe_load(node_file(local_cluster, "node3",
                                       f"{NODE_MANIFEST_DIR}/pod-default-pa.yaml"))
    assert pod_doc["status"]["podIP"] == pa.ip and pod_doc["metadata"]["labels"] == \
        {"app": "web"}
    runtime.delete("pb")
    assert slice_ips("node3") == {pa.ip}
    assert node_file(local_cluster, "node3", f"{NODE_MANIFEST_DIR}/pod-default-pb.yaml") \
        is None
    api.delete([{"kind": "Service", "metadata": {"name": "web"}}])
    ls = sh(local_cluster, "node2", f"ls {NODE_MANIFEST_DIR}").stdout
    assert "service-default-web" not in ls and "endpointslice-default-web" not in ls


def test_cni_del_frees_the_address_and_the_plumbing(local_cluster, runtime):
    rec = runtime.run("node3", "pd", ["sleep", "600"])
    host_if = rec.cni_result["interfaces"][0]["name"]
    leases = "/var/lib/cni-cilium/ipam/10.100.3.0_24.json"
    assert rec.ip in json.loads(node_file(local_cluster, "node3", leases))["leases"]
    runtime.delete("pd")
    assert rec.ip not in json.loads(node_file(local_cluster, "node3", leases))["leases"]
    assert host_if not in sh(local_cluster, "node3", "ip -o link").stdout
    assert node_file(local_cluster, "node3",
                     f"/run/cni-cilium/endpoints/{rec.container_id}.json") is None


def plugin(local_cluster, node: str, env: dict, stdin: str) -> tuple[int, dict]:
    import sys
    argv = ["env", *(f"{k}={v}" for k, v in env.items()), sys.executable, "-m",
            "cni_cilium.cni"]
    res = local_cluster.exec(node, argv, input=stdin, check=False)
    return res.returncode, json.loads(res.stdout)


ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "lcttest", "CNI_IFNAME": "eth0",
       "CNI_NETNS": "/run/netns/lct-none", "CNI_PATH": "/opt/cni/bin"}
CONF = {"cniVersion": "1.0.0", "name": "cilium", "type": "cilium-cni",
        "ipam": {"subnet": "10.100.1.0/24"}}


@pytest.mark.parametrize("stdin, env, code, words", [
    ("{malformed", {}, 6, "not valid JSON"),
    (json.dumps({**CONF, "ipam": {"subnet": "nonsense"}}), {}, 7, "ipam.subnet"),
    (json.dumps({**CONF, "cniVersion": "0.1.0"}), {}, 1, "cniVersion"),
    (json.dumps(CONF), {"CNI_NETNS": "/run/netns/lct-none"}, 3, "no such namespace"),
    (json.dumps(CONF), {"CNI_CONTAINERID": ""}, 4, "CNI_CONTAINERID"),
])
def test_a_bad_call_gets_a_spec_shaped_error(local_cluster, stdin, env, code, words):
    status, doc = plugin(local_cluster, "node1", {**ENV, **env}, stdin)
    assert status == 1
    assert doc["code"] == code and words in doc["msg"]
    assert doc["cniVersion"] and set(doc) <= {"cniVersion", "code", "msg", "details"}


def test_check_passes_for_a_healthy_pod_and_names_what_broke(local_cluster, runtime):
    rec = runtime.get("default", "pa")
    env = {**ENV, "CNI_COMMAND": "CHECK", "CNI_CONTAINERID": rec.container_id,
           "CNI_NETNS": rec.netns_path}
    conf = json.dumps({**CONF, "prevResult": rec.cni_result})
    res = local_cluster.exec("node1", ["env", *(f"{k}={v}" for k, v in env.items()),
                                       __import__("sys").executable, "-m", "cni_cilium.cni"],
                             input=conf, check=False)
    assert res.returncode == 0, res.stdout
    sh(local_cluster, "node1", f"ip netns exec {rec.netns} ip addr flush dev eth0")
    status, doc = plugin(local_cluster, "node1", env, conf)
    assert status == 1 and doc["code"] == 100 and rec.ip in doc["msg"]
    runtime.delete("pa")


def test_pods_come_back_after_their_node_reboots(local_cluster, runtime):
    rec = runtime.run("node2", "pe", SERVER, labels={"app": "again"})
    local_cluster.reboot("node2")
    restarted = runtime.restart_node("node2")
    assert [r.name for r in restarted] == ["pe"]
    new = runtime.get("default", "pe")
    assert new.container_id != rec.container_id
    assert ipaddress.IPv4Address(new.ip) in ipaddress.IPv4Network("10.100.2.0/24")
    assert runtime.running([new]) == {"default/pe": True}
    pod_doc = yaml.safe_load(node_file(local_cluster, "node1",
                                       f"{NODE_MANIFEST_DIR}/pod-default-pe.yaml"))
    assert pod_doc["status"]["podIP"] == new.ip
