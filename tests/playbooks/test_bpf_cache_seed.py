"""playbooks/site.yml seeds the datapath compile cache: on a fresh 3-node cluster one node
compiles, the controller keeps the entry, every agent loads its programs from the cache;
a second run compiles nothing and changes nothing; a reboot loads from the node's disk; a
datapath that does not compile is still reported by every agent."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from cni_harness import PROJECT_ROOT
from cni_harness.deploy.playbook import run_playbook
from cni_harness.testing import fresh_local_cluster, run_cluster_name

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

NODES = ("node1", "node2", "node3")
BUILD = "Compile once per key, on the first node with it, unless the controller keeps it"
FETCH = "Keep the entry on the controller"
COPY = "Give every node its key's entry before its agent starts"
CLI = "/opt/cni-cilium/venv/bin/cni-cilium"


def sh(provider, node: str, script: str) -> str:
    return provider.exec(node, ["sh", "-c", script]).stdout


def agent_bpf(provider, node: str) -> dict:
    return json.loads(sh(provider, node, f"{CLI} status --json"))["bpf"]


def hosts(result, task: str) -> list[str]:
    return sorted(c["host"] for c in result.changed_by(task))


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """A fresh cluster `bcs<run suffix>` deployed with an empty controller-side store."""
    store = str(tmp_path_factory.mktemp("bpf-cache-store"))
    with fresh_local_cluster(run_cluster_name("bcs")) as provider:
        extravars = {"configure_bpf_cache_store": store}
        first = run_playbook(provider, extravars=extravars)
        assert first.rc == 0, first.failed_tasks
        provider.seed = (first, extravars, store)
        yield provider


def test_one_node_compiles_and_every_agent_loads_from_the_cache(seeded, record_property):
    first, _extravars, store = seeded.seed
    statuses = {node: agent_bpf(seeded, node) for node in NODES}
    digests = {node: sh(seeded, node, "sha256sum /var/cache/cni-cilium/bpf/*.json").split()[0]
               for node in NODES}
    record_property("evidence", json.dumps({
        "compiledOn": hosts(first, BUILD), "copiedTo": hosts(first, COPY),
        "agents": statuses, "entrySha256": digests, "deploySeconds": round(first.seconds, 1),
        "controllerStore": os.listdir(store)}, sort_keys=True))
    assert hosts(first, BUILD) == ["node1"] and hosts(first, FETCH) == ["node1"]
    assert hosts(first, COPY) == ["node2", "node3"]
    key = statuses["node1"]["cache"]["key"]
    assert os.listdir(store) == [f"{key}.json"]
    for node, bpf in statuses.items():
        assert bpf["origin"] == "cache", (node, bpf)
        assert bpf["compileSeconds"] == 0 and bpf["cache"]["result"] == "hit"
        assert bpf["cache"]["key"] == key
    assert len(set(digests.values())) == 1
    listed = json.loads(sh(seeded, "node2", f"{CLI} bpf cache list --json"))
    assert [row["key"] for row in listed] == [key] and listed[0]["node"].endswith("node1")
    metrics = sh(seeded, "node3", "curl -s --unix-socket /run/cni-cilium/agent.sock "
                 "http://agent/metrics")
    assert 'cni_cilium_bpf_datapath_origin{cache="hit",origin="cache"} 1' in metrics


def test_a_second_run_compiles_and_changes_nothing(seeded):
    _first, extravars, _store = seeded.seed
    again = run_playbook(seeded, extravars=extravars)
    assert again.rc == 0, again.failed_tasks
    assert again.changed == 0, again.stats


def test_an_entry_the_controller_keeps_is_copied_without_compiling(seeded):
    _first, extravars, _store = seeded.seed
    for node in NODES:
        sh(seeded, node, "rm -f /var/cache/cni-cilium/bpf/*.json")
    result = run_playbook(seeded, extravars=extravars)
    assert result.rc == 0, result.failed_tasks
    assert hosts(result, BUILD) == [] and hosts(result, COPY) == list(NODES)


def test_a_rebooted_node_loads_from_its_disk(seeded):
    seeded.reboot("node3")
    status = sh(seeded, "node3", f"{CLI} wait-ready --timeout 120 --json")
    assert json.loads(status)["state"] == "running", status
    bpf = agent_bpf(seeded, "node3")
    assert bpf["origin"] == "cache" and bpf["cache"]["result"] == "hit", bpf


def test_sources_that_do_not_compile_are_reported_by_every_agent(seeded, tmp_path):
    _first, extravars, _store = seeded.seed
    broken = tmp_path / "project"
    broken.mkdir()
    for name in ("pyproject.toml", "README.md", "impl", "bpf"):
        subprocess.run(["cp", "-r", os.path.join(PROJECT_ROOT, name), str(broken / name)],
                       check=True)
    with open(broken / "bpf" / "cni_cilium.c", "a", encoding="utf-8") as fh:
        fh.write("\nthis is not C;\n")
    try:
        failed = run_playbook(seeded, extravars=dict(extravars,
                                                     cni_cilium_project_root=str(broken)))
        assert failed.rc != 0
        assert hosts(failed, BUILD) == [] and hosts(failed, COPY) == []
        assert len(failed.failed_tasks) == 3, failed.failed_tasks
        for line in failed.failed_tasks:
            assert "Stop when the agent is not running" in line, line
            assert "bcc could not compile/load" in line, line
    finally:
        restored = run_playbook(seeded, extravars=extravars)
    assert restored.rc == 0, restored.failed_tasks
    assert {agent_bpf(seeded, node)["origin"] for node in NODES} == {"cache"}
