"""The kind provider: its cluster config and manifests against real schemas, host checks."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from cni_harness import PROJECT_ROOT
from cni_harness.providers.kind import (
    AGENT_NAME,
    DOCKERFILE,
    KindProvider,
    agent_manifests,
    check_host,
    cluster_config,
    config_problems,
    manifest_problems,
    nodes_from_api,
)


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cni_harness.cli", *args],
                          capture_output=True, text=True, env=env, timeout=120, check=False)


def daemonset(docs):
    return next(d for d in docs if d["kind"] == "DaemonSet")


@pytest.mark.unit
def test_cluster_config_disables_cni_and_kube_proxy_and_passes_kinds_schema():
    config = cluster_config("lab", nodes=3)
    assert config_problems(config) == []
    assert config["networking"]["disableDefaultCNI"] is True
    assert config["networking"]["kubeProxyMode"] == "none"
    assert [n["role"] for n in config["nodes"]] == ["control-plane", "worker", "worker"]
    with pytest.raises(ValueError, match="node count 0"):
        cluster_config(nodes=0)


@pytest.mark.unit
@pytest.mark.parametrize("mutate, expected", [
    (lambda c: c["networking"].update(disableDefaultCni=True),
     "'disableDefaultCni' was unexpected"),
    (lambda c: c["networking"].update(kubeProxyMode="off"), "'off' is not one of"),
    (lambda c: c["nodes"][0].update(role="master"), "'master' is not one of"),
    (lambda c: c.update(apiVersion="kind.x-k8s.io/v1alpha3"), "kind.x-k8s.io/v1alpha4"),
    (lambda c: c["nodes"][1]["extraMounts"][0].update(readonly=True), "'readonly' was unexpected"),
    (lambda c: c["networking"].update(disableDefaultCNI=False), "disableDefaultCNI: must be true"),
    (lambda c: c["networking"].update(kubeProxyMode="ipvs"), "kubeProxyMode: must be none"),
])
def test_config_problems_name_the_wrong_field(mutate, expected):
    config = cluster_config()
    mutate(config)
    problems = config_problems(config)
    assert any(expected in p for p in problems), problems


@pytest.mark.unit
def test_agent_manifests_pass_the_kubernetes_schema_and_say_what_the_agent_needs():
    docs = agent_manifests("registry.local/cni-cilium-agent:1")
    assert manifest_problems(docs) == []
    assert [d["kind"] for d in docs] == ["ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                                         "ConfigMap", "DaemonSet"]
    pod = daemonset(docs)["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["hostPID"] is True
    agent = pod["containers"][0]
    assert agent["securityContext"]["privileged"] is True
    assert agent["image"] == "registry.local/cni-cilium-agent:1"
    assert agent["args"][:3] == ["agent", "--source", "kube"]
    # What the DaemonSet asks of the agent, the agent's CLI accepts.
    from cni_cilium.cli import build_parser

    parsed = build_parser().parse_args([*agent["args"][:5], "--log-file", "-"])
    assert (parsed.source, parsed.node_name, parsed.log_file) == ("kube", "$(NODE_NAME)", "-")
    assert {"operator": "Exists"} in pod["tolerations"]   # nodes are NotReady before the CNI
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    assert mounts["/sys/fs/bpf"]["mountPropagation"] == "Bidirectional"
    assert mounts["/lib/modules"]["readOnly"] is True
    rules = next(d for d in docs if d["kind"] == "ClusterRole")["rules"]
    granted = {(g, r) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}
    assert granted == {("", "nodes"), ("", "pods"), ("", "services"),
                       ("discovery.k8s.io", "endpointslices")}
    assert all(set(rule["verbs"]) == {"get", "list", "watch"} for rule in rules)


@pytest.mark.unit
@pytest.mark.parametrize("mutate, expected", [
    (lambda ds: ds["spec"]["template"]["spec"].update(hostNetwrok=True),
     "spec.template.spec.hostNetwrok: unknown field of V1PodSpec"),
    (lambda ds: ds["spec"]["template"]["spec"].update(hostNetwork="yes"),
     "hostNetwork: expected bool, got str 'yes'"),
    (lambda ds: ds["spec"]["template"]["spec"]["containers"][0]["securityContext"].update(
        priviledged=True), "priviledged: unknown field of V1SecurityContext"),
    (lambda ds: ds["spec"].pop("selector"), "selector"),
    (lambda ds: ds["spec"]["template"]["spec"]["containers"][0].pop("name"), "name"),
    (lambda ds: ds.update(apiVersion="extensions/v1beta1"), "no schema for apiVersion"),
])
def test_manifest_problems_catch_a_wrong_field(mutate, expected):
    docs = agent_manifests()
    mutate(daemonset(docs))
    problems = manifest_problems(docs)
    assert len(problems) == 1 and expected in problems[0], problems
    assert problems[0].startswith(f"DaemonSet {AGENT_NAME}")
    assert "\n" not in problems[0]


@pytest.mark.unit
def test_nodes_from_api_puts_the_control_plane_first():
    doc = {"items": [
        {"metadata": {"name": "lab-worker", "labels": {}}, "spec": {"podCIDR": "10.100.1.0/24"},
         "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.3"}]}},
        {"metadata": {"name": "lab-control-plane",
                      "labels": {"node-role.kubernetes.io/control-plane": ""}},
         "spec": {"podCIDR": "10.100.0.0/24"},
         "status": {"addresses": [{"type": "Hostname", "address": "x"},
                                  {"type": "InternalIP", "address": "172.18.0.2"}]}}]}
    nodes = nodes_from_api(doc)
    assert [(n.name, n.ip, n.pod_cidr) for n in nodes] == [
        ("lab-control-plane", "172.18.0.2", "10.100.0.0/24"),
        ("lab-worker", "172.18.0.3", "10.100.1.0/24")]


@pytest.mark.unit
def test_the_agent_image_builds_from_files_in_this_tree():
    with open(DOCKERFILE, encoding="utf-8") as fh:
        text = fh.read()
    sources = [s for line in re.findall(r"^COPY (.+) \S+$", text, re.M) for s in line.split()]
    assert sources, "the Dockerfile copies nothing"
    manifests = agent_manifests()
    missing = [s for s in sources if not os.path.exists(os.path.join(PROJECT_ROOT, s))]
    if missing == ["bpf"]:
        pytest.skip("bpf/ (the eBPF sources) is not in this tree yet; the image needs it")
    assert missing == []
    # What the DaemonSet runs is what the image installs.
    agent = daemonset(manifests)["spec"]["template"]["spec"]["containers"][0]
    assert agent["command"] == ["/opt/cni-cilium/venv/bin/cni-cilium"]
    assert "/opt/cni-cilium/venv" in text


@pytest.mark.unit
def test_check_names_what_is_missing():
    available = check_host()
    if shutil.which("kind") is None:
        assert not available.ok
        assert any(m.startswith("kind (not on PATH") for m in available.missing)
    if shutil.which("docker") is None:
        assert any(m.startswith("docker") for m in available.missing)


@pytest.mark.unit
def test_cli_without_kind_exits_3_saying_what_is_missing():
    if check_host().ok:
        pytest.skip("kind and a docker engine are present: the provider can run here")
    for args in (["check"], ["up"], ["down"]):
        result = cli("kind", *args)
        assert result.returncode == 3, (args, result.stderr)
        assert "kind" in result.stderr and "missing" in result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.unit
def test_cli_validate_and_output(tmp_path):
    result = cli("kind", "validate", "--json")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(cli("kind", "config", "--nodes", "2").stdout)
    assert config_problems(config) == [] and len(config["nodes"]) == 2
    docs = list(yaml.safe_load_all(cli("kind", "manifests").stdout))
    assert manifest_problems(docs) == []
    broken = copy.deepcopy(docs)
    daemonset(broken)["spec"]["template"]["spec"]["hostNetwrok"] = True
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump_all(broken))
    result = cli("kind", "validate", "--manifests", str(path))
    assert result.returncode == 1
    assert "hostNetwrok: unknown field" in result.stderr


@pytest.mark.unit
def test_provider_interface_without_kind_reports_instead_of_failing():
    provider = KindProvider(cluster="cni-test-absent")
    if shutil.which("kind") is None:
        assert provider.status()["state"] == "absent"
        provider.down()      # nothing to remove: no error
