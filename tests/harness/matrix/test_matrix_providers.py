"""`matrix run --provider vm|vagrant`: one ProviderTarget path (up, deploy, each node's
OS and kernel as it reports them, suites with the provider's environment, down), the vm
entries, and exit 3 when the vm provider is not in the build (pure: fake provider,
deploy and suites replaced)."""

from __future__ import annotations

import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest

from cni_harness.matrix import run as matrix_run
from cni_harness.matrix.matrix import load_matrix
from cni_harness.matrix.run import (
    Entry,
    ProviderTarget,
    RunPlan,
    format_node_facts,
    parse_node_facts,
    target_for,
)
from cni_harness.providers.base import EXIT_PROVIDER_UNAVAILABLE
from cni_harness.testing import RecordingProvider

pytestmark = pytest.mark.unit

MATRIX = load_matrix()
OS_RELEASE = ('PRETTY_NAME="Debian GNU/Linux 11 (bullseye)"\nNAME="Debian GNU/Linux"\n'
              'VERSION_ID="11"\nID=debian\n')


def test_node_facts_are_parsed_from_what_each_node_prints():
    facts = parse_node_facts("5.10.0-30-amd64\n" + OS_RELEASE)
    assert facts["kernel"] == "5.10.0-30-amd64"
    assert facts["os"] == "Debian GNU/Linux 11 (bullseye)"
    assert format_node_facts({"node1": facts, "node2": {"os": "", "kernel": "6.1"}}) == (
        "node1: Debian GNU/Linux 11 (bullseye), 5.10.0-30-amd64; node2: ?, 6.1")


def test_vm_entries_are_the_debian_os_entries_at_their_matrix_positions():
    entries = target_for("vm").entries(MATRIX)
    names = [e.name for e in MATRIX.os_entries]
    assert [e.name for e in entries] == ["debian-11", "debian-12"]
    assert [e.index for e in entries] == [names.index("debian-11"), names.index("debian-12")]
    assert all(e.os_entry is not None and e.expect for e in entries)


def test_matrix_run_vm_without_the_vm_provider_exits_3_saying_why(monkeypatch, capsys):
    from cni_harness.cli import main

    # A build without the package (also when another test imported it already).
    monkeypatch.setitem(sys.modules, "cni_harness.providers.vm", None)
    monkeypatch.setitem(sys.modules, "cni_harness.providers.vm.provider", None)
    assert "vm provider not in this build" in target_for("vm").availability().reason()
    previous = signal.getsignal(signal.SIGTERM)        # main() installs its own handler
    try:
        rc = main(["matrix", "run", "--provider", "vm", "--entries", "debian-12",
                   "--suites", "traffic"])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert rc == EXIT_PROVIDER_UNAVAILABLE
    assert "provider vm cannot run here" in capsys.readouterr().err


class FakeVm(RecordingProvider):
    """A vm provider whose nodes report Debian 11, recorded."""

    name = "vm"

    def __init__(self, cluster: str, fail_up: bool = False):
        super().__init__(cluster)
        self.fail_up = fail_up

    def up(self) -> None:
        super().up()
        if self.fail_up:
            raise RuntimeError("no image for debian-11")

    def exec(self, node, argv, **_kwargs) -> subprocess.CompletedProcess:
        assert argv == ["sh", "-c", matrix_run.NODE_FACTS_SCRIPT]
        kernel = "5.10.0-30-amd64" if node == "node1" else "5.10.0-31-amd64"
        return subprocess.CompletedProcess(argv, 0, f"{kernel}\n{OS_RELEASE}", "")


def _target(provider: FakeVm) -> tuple[ProviderTarget, Entry]:
    target = ProviderTarget("vm", lambda: (FakeVm, lambda _entry: provider),
                            target_for("vm").entries, cluster_for=lambda e: "unused")
    return target, target.entries(MATRIX)[0]


def test_an_entry_runs_up_deploy_suites_down_with_the_providers_environment(
        monkeypatch, tmp_path):
    seen: dict = {}
    monkeypatch.setattr("cni_harness.deploy.playbook.run_playbook", lambda p, **_k: (
        seen.setdefault("deployed", p.cluster), SimpleNamespace(
            rc=0, status="successful", seconds=1.0, failed_tasks=[],
            to_dict=lambda: {"rc": 0}))[1])
    monkeypatch.setattr(matrix_run, "run_preflights",
                        lambda profiles, out, log, extra: {p: True for p in profiles})
    monkeypatch.setattr("cni_harness.suites.runner.run_suites",
                        lambda names, out, **kw: seen.update(suites=names, **kw))
    provider = FakeVm("vmd11abcde")
    target, entry = _target(provider)
    plan = RunPlan(suites=["traffic", "dsr"], profiles={"default": {}}, out=str(tmp_path))
    result = target.run_entry(entry, plan, str(tmp_path), lambda _m: None)
    assert result.error == ""
    assert provider.calls == ["up", "down"] and seen["deployed"] == "vmd11abcde"
    assert seen["suites"] == ["traffic", "dsr"]
    assert seen["env"] == {"CNI_HARNESS_PROVIDER": "vm", "CNI_HARNESS_CLUSTER": "vmd11abcde",
                           "CNI_HARNESS_INVENTORY": "/state/vmd11abcde/inventory.yml",
                           "CNI_HARNESS_MATRIX_ENTRY": "debian-11"}
    nodes = ("node1: Debian GNU/Linux 11 (bullseye), 5.10.0-30-amd64; "
             "node2: Debian GNU/Linux 11 (bullseye), 5.10.0-31-amd64")
    assert result.facts == {"cluster": "vmd11abcde", "nodes": nodes}
    assert seen["facts"]["nodes"] == nodes
    guest = (tmp_path / "guest.json").read_text()
    assert '"node2"' in guest and "5.10.0-31-amd64" in guest


def test_a_failing_up_is_an_entry_error_and_the_provider_still_goes_down(tmp_path):
    provider = FakeVm("vmd11abcde", fail_up=True)
    target, entry = _target(provider)
    plan = RunPlan(suites=["traffic"], profiles={"default": {}}, out=str(tmp_path))
    result = target.run_entry(entry, plan, str(tmp_path), lambda _m: None)
    assert result.error == "vm: no image for debian-11"
    assert provider.calls == ["up", "down"]
    assert result.facts == {"cluster": "vmd11abcde"}      # named although up failed
