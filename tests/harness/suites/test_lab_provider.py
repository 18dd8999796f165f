"""`deployed_lab` / `suite_lab` with a provider other than local: nothing is created, an
unreachable node fails the suite naming the provider and the node, a missing capability
skips (pure: fake providers, nothing runs)."""

from __future__ import annotations

import pytest

from cni_harness.suites.lab import (
    LabError,
    LabUnavailable,
    ProviderUnreachable,
    check_reachable,
    deployed_lab,
)
from cni_harness.testing import RecordingProvider, require_provider, suite_lab

pytestmark = pytest.mark.unit


class BrokenVm(RecordingProvider):
    """A cluster provider whose nodes do not answer (ssh exits 255)."""

    name = "brokenvm"


def test_an_unreachable_node_fails_naming_provider_and_node_and_creates_nothing():
    provider = BrokenVm("vmd12x", answering=("node1",))
    with pytest.raises(ProviderUnreachable) as info:
        deployed_lab("vmd12x", "bpfLBMode: SNAT\n", provider=provider)
    message = str(info.value)
    assert "provider brokenvm, cluster vmd12x: node node2 (10.99.0.12)" in message
    assert "Network is unreachable" in message and "no fallback" in message
    assert "up" not in provider.calls and "down" not in provider.calls
    # ProviderUnreachable is no LabUnavailable: suite_lab lets it through, the suite fails
    assert not issubclass(ProviderUnreachable, LabUnavailable)


def test_reachable_nodes_without_what_the_lab_needs_skip_naming_it():
    provider = BrokenVm("vmd12x", answering=("node1", "node2"))
    check_reachable(provider)
    with pytest.raises(LabUnavailable, match="provider brokenvm has no plan, exec_command, "
                                             "state_dir: "):
        deployed_lab("vmd12x", "", provider=provider)
    assert provider.calls == ["exec node1", "exec node2"] * 2     # checked, nothing else


def test_suite_lab_fails_on_a_provider_the_environment_cannot_give(monkeypatch):
    monkeypatch.setenv("CNI_HARNESS_PROVIDER", "vagrant")
    monkeypatch.delenv("CNI_HARNESS_INVENTORY", raising=False)
    with pytest.raises(LabError, match="needs CNI_HARNESS_INVENTORY"), \
            suite_lab("labx", ""):
        pass


def test_suite_lab_fails_when_the_vm_provider_is_not_in_the_build(monkeypatch):
    import sys

    # A build without the package (also when another test imported it already).
    monkeypatch.setitem(sys.modules, "cni_harness.providers.vm", None)
    monkeypatch.setitem(sys.modules, "cni_harness.providers.vm.provider", None)
    monkeypatch.setenv("CNI_HARNESS_PROVIDER", "vm")
    with pytest.raises(LabError, match="vm provider not in this build"), \
            suite_lab("labx", ""):
        pass


def test_require_provider_skips_with_what_is_missing():
    with pytest.raises(pytest.skip.Exception, match="provider brokenvm has no stop_node, "
                                                    "start_node: powering off"):
        require_provider(BrokenVm(), "stop_node", "start_node", why="powering off")
    require_provider(BrokenVm(), "exec", why="every provider has it")
