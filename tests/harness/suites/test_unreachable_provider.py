"""A suite asked to run against nodes it cannot reach fails, naming the provider and the
node, and builds no namespace nodes of its own instead.

The "VMs" are a Vagrant inventory (as `matrix run --provider vagrant` leaves it) whose
ssh goes into a network namespace made here with nothing in it: every connection stops
inside that namespace (no route, lo down), nothing is sent anywhere else.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cni_harness import PROJECT_ROOT
from cni_harness.testing import run_cluster_name, write_vagrant_inventory

pytestmark = pytest.mark.e2e

ENTRY = "debian-12"
CLUSTER = run_cluster_name("brk")
EMPTY_NETNS = f"{CLUSTER}-empty"


@pytest.fixture(scope="module")
def dead_inventory(tmp_path_factory):
    """A Vagrant inventory of node1..node3 whose ssh leads into an empty namespace."""
    subprocess.run(["ip", "netns", "add", EMPTY_NETNS], check=True)
    try:
        ssh_config = "".join(
            f"Host node{i}\n  HostName node{i}.invalid\n  User vagrant\n  Port 22\n"
            f"  ProxyCommand nsenter --net=/run/netns/{EMPTY_NETNS} nc 127.0.0.1 %p\n"
            "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
            "  ConnectTimeout 5\n" for i in (1, 2, 3))
        yield write_vagrant_inventory(str(tmp_path_factory.mktemp("vagrant")), ENTRY,
                                      ssh_config)
    finally:
        subprocess.run(["ip", "netns", "delete", EMPTY_NETNS], check=False)


def netns_of_cluster() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                         check=True).stdout
    return [line.split()[0] for line in out.splitlines()
            if line.startswith(f"{CLUSTER}-") and not line.startswith(EMPTY_NETNS)]


@pytest.mark.parametrize("suite", ["traffic", "dsr", "reboot"])
def test_a_suite_on_unreachable_vagrant_nodes_fails_and_builds_no_nodes(dead_inventory, suite):
    env = {**os.environ, "CNI_HARNESS_PROVIDER": "vagrant",
           "CNI_HARNESS_INVENTORY": dead_inventory, "CNI_HARNESS_CLUSTER": CLUSTER,
           "CNI_HARNESS_MATRIX_ENTRY": ENTRY}
    res = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                          os.path.join("tests", "e2e", f"test_{suite}.py")],
                         cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-3000:]                 # failed: not passed, not skipped
    assert "ProviderUnreachable: provider vagrant: node node1 (" in out, out[-3000:]
    assert "no fallback to other nodes" in out
    assert " passed" not in out.splitlines()[-1] and " skipped" not in out.splitlines()[-1]
    assert netns_of_cluster() == []                         # no namespace node was built
