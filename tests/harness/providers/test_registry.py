"""The provider registry: which provider a suite gets from its environment, and the vm
provider imported only when asked for (pure: nothing is created)."""

from __future__ import annotations

import os
import sys
import types

import pytest

from cni_harness.matrix.matrix import load_matrix
from cni_harness.providers.base import ProviderUnavailable
from cni_harness.providers.local.addressing import validate_cluster_name
from cni_harness.providers.local.provider import LocalProvider
from cni_harness.providers.registry import (
    CLUSTER_ENV,
    INVENTORY_ENV,
    PROVIDER_ENV,
    VM_OS_ENTRIES,
    ProviderNotInBuild,
    ProviderSelectionError,
    Selection,
    make_provider,
    matrix_cluster_name,
    provider_class,
    provider_from_env,
    selection_from_env,
)
from cni_harness.providers.vagrant import PlanError, VagrantProvider, plan
from cni_harness.testing import write_vagrant_inventory

pytestmark = pytest.mark.unit

MATRIX = load_matrix()


def test_without_environment_the_provider_is_local_and_self_creating():
    sel = selection_from_env({})
    assert sel == Selection("local") and sel.self_creating
    assert sel.env() == {PROVIDER_ENV: "local"}


def test_the_environment_names_provider_cluster_inventory_and_entry():
    env = {PROVIDER_ENV: "vm", CLUSTER_ENV: "vmd12abcde",
           "CNI_HARNESS_MATRIX_ENTRY": "debian-12"}
    sel = selection_from_env(env)
    assert sel == Selection("vm", "vmd12abcde", None, "debian-12")
    assert not sel.self_creating
    assert selection_from_env(sel.env()) == sel           # what matrix run hands on


@pytest.mark.parametrize("env, message", [
    ({PROVIDER_ENV: "docker"}, "CNI_HARNESS_PROVIDER='docker': unknown provider; known: "
                               "local, vm, vagrant, kind"),
    ({PROVIDER_ENV: "vagrant"}, "CNI_HARNESS_PROVIDER=vagrant needs CNI_HARNESS_INVENTORY"),
])
def test_a_wrong_choice_is_refused_not_replaced_by_local(env, message):
    with pytest.raises(ProviderSelectionError) as info:
        selection_from_env(env)
    assert message in str(info.value)


def test_local_from_the_environment_uses_the_named_cluster():
    provider = provider_from_env("labxyz", nodes=2, environ={CLUSTER_ENV: "other"})
    assert isinstance(provider, LocalProvider)
    assert (provider.cluster, provider.node_count) == ("other", 2)
    assert provider_from_env("labxyz", environ={}).cluster == "labxyz"


def test_the_vm_provider_missing_from_the_build_is_said_plainly(monkeypatch):
    # A build without the package (also when another test imported it already).
    monkeypatch.setitem(sys.modules, "cni_harness.providers.vm", None)
    monkeypatch.setitem(sys.modules, "cni_harness.providers.vm.provider", None)
    with pytest.raises(ProviderNotInBuild, match="vm provider not in this build"):
        provider_class("vm")
    assert issubclass(ProviderNotInBuild, ProviderUnavailable)


def test_the_vm_provider_gets_cluster_nodes_and_os_entry(monkeypatch):
    """The contract with providers/vm/provider.py: VmProvider(cluster, nodes=, os_entry=,
    progress=)."""
    made = {}

    class FakeVm:
        name = "vm"

        def __init__(self, cluster, nodes=3, os_entry="debian-12", progress=None):
            made.update(cluster=cluster, nodes=nodes, os_entry=os_entry)

    package = types.ModuleType("cni_harness.providers.vm")
    module = types.ModuleType("cni_harness.providers.vm.provider")
    module.VmProvider = FakeVm
    monkeypatch.setitem(sys.modules, "cni_harness.providers.vm", package)
    monkeypatch.setitem(sys.modules, "cni_harness.providers.vm.provider", module)
    provider = provider_from_env("lab", environ={
        PROVIDER_ENV: "vm", CLUSTER_ENV: "vmd11abcde", "CNI_HARNESS_MATRIX_ENTRY": "debian-11"})
    assert isinstance(provider, FakeVm)
    assert made == {"cluster": "vmd11abcde", "nodes": 3, "os_entry": "debian-11"}
    make_provider("vm", "vmx")
    assert made["os_entry"] == "debian-12"                 # the default entry


def test_matrix_cluster_names_are_valid_and_distinct_per_entry():
    names = [matrix_cluster_name(e, "abcde") for e in VM_OS_ENTRIES]
    assert names == ["vmd11abcde", "vmd12abcde"]
    for entry in ("ubuntu-20.04-hwe", "centos-8-elrepo", "debian-12"):
        validate_cluster_name(matrix_cluster_name(entry))


def test_vagrant_nodes_come_from_the_inventory_matrix_run_wrote(tmp_path):
    entry_plan = plan(MATRIX.os_entry("debian-12"),
                      [e.name for e in MATRIX.os_entries].index("debian-12"),
                      provider="virtualbox")
    ssh_config = "".join(f"Host {n.name}\n  HostName {n.ip}\n  User vagrant\n"
                         for n in entry_plan.nodes)
    path = write_vagrant_inventory(str(tmp_path), "debian-12", ssh_config, "virtualbox")
    directory = os.path.dirname(path)
    provider = provider_from_env("ignored", environ={PROVIDER_ENV: "vagrant",
                                                     INVENTORY_ENV: path})
    assert isinstance(provider, VagrantProvider)
    assert provider.directory == str(directory)
    assert provider.entry_plan == entry_plan
    assert [n.ip for n in provider.nodes()] == [n.ip for n in entry_plan.nodes]
    # ssh reaches them through the ssh_config beside the inventory, no vagrant call
    assert provider._ssh_argv("node2")[:3] == ["ssh", "-F", os.path.join(directory,
                                                                         "ssh_config")]


def test_an_inventory_that_is_not_vagrants_is_refused(tmp_path):
    path = tmp_path / "inventory.yml"
    path.write_text("all:\n  vars: {cni_provider: local}\n")
    with pytest.raises(PlanError, match="not a Vagrant inventory"):
        VagrantProvider.from_inventory(str(path))
