"""CI's VM smoke: one matrix entry's traffic suite on full Debian VMs, through the real
matrix path.

One bounded `cni-harness matrix run --provider vm --entries debian-12 --suites traffic -k
...`: the entry's VMs booted from the cached image (baked first on a machine that has none:
~400 s, once), `playbooks/site.yml` deployed to them, each VM's OS and kernel read back,
a few cases of the traffic suite run against those VMs (pod to pod on one node and across
nodes, ClusterIP to local and remote backends, a NodePort through every node from the
external client), the VMs taken down. Judged on the files the run leaves: the chosen cases
passed (none skipped, none missing), the report names every VM's OS and kernel, nothing of
the cluster is left and the root network namespace is as before. Past its bound the run
gets SIGTERM and takes its VMs down itself. Skipped only when the vm provider cannot run
here (tools missing); never a fallback to namespace nodes.

The longer VM run (three VMs and a reboot) is test_vm_smoke.py, marker `vm_smoke`.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from subprocess import CompletedProcess

import pytest

from cni_harness.matrix.matrix import load_matrix
from cni_harness.providers.vm import image as vm_image
from cni_harness.providers.vm.provider import VmProvider
from cni_harness.report.report import PASS, parse_junit
from cni_harness.testing import root_netns_snapshot, run_bounded

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.usefixtures("vm_available")]

ENTRY = "debian-12"
SUITE = "traffic"
# What proves real traffic through the datapath on the VMs for the least time: the suite's
# lab (seven pods, six services) is set up once whatever is chosen, each case adds seconds.
CASES = ("test_pod_to_pod_on_one_node_and_across_nodes",
         "test_clusterip_from_pods_reaches_local_and_remote_backends",
         "test_nodeport_through_every_node_snat_for_remote_backends")
# About twice the 14 min measured here under TCG at load 5-7 (README, "VM provider"): a
# hang (a VM that never answers) ends here, and the run takes its VMs down on SIGTERM.
BOUND_SECONDS = 1800


@dataclass(frozen=True)
class MatrixRun:
    """The finished `matrix run` and what it left in `out`."""

    res: CompletedProcess
    out: str
    before: dict             # the root namespace before the run

    def read(self, *parts: str) -> str:
        path = os.path.join(self.out, *parts)
        if not os.path.exists(path):
            pytest.fail(f"the run left no {path}\n{self.context()}")
        with open(path, encoding="utf-8") as fh:
            return fh.read()

    def row(self) -> dict:
        rows = json.loads(self.read("matrix.json"))["rows"]
        assert [r["entry"] for r in rows] == [ENTRY], rows
        return rows[0]

    def context(self) -> str:
        return f"exit {self.res.returncode}\n{self.res.stdout[-6000:]}\n{self.res.stderr[-3000:]}"


@pytest.fixture(scope="module")
def matrix_run(tmp_path_factory) -> MatrixRun:
    out = str(tmp_path_factory.mktemp("vm-matrix"))
    before = root_netns_snapshot()
    res = run_bounded([sys.executable, "-m", "cni_harness.cli", "matrix", "run",
                       "--provider", "vm", "--entries", ENTRY, "--suites", SUITE,
                       "-k", " or ".join(CASES), "--out", out], timeout=BOUND_SECONDS)
    return MatrixRun(res, out, before)


def test_the_entry_is_as_the_matrix_expects(matrix_run):
    assert matrix_run.res.returncode == 0, matrix_run.context()
    cells = matrix_run.row()["cells"]
    assert SUITE in cells, cells
    # Preflight of every profile and the suite: debian-12 is supported in all of them.
    assert {column: cell["status"] for column, cell in cells.items()} == dict.fromkeys(
        cells, PASS), cells


def test_the_chosen_traffic_cases_ran_on_the_vms_and_passed(matrix_run):
    result = json.loads(matrix_run.read(ENTRY, "suites", SUITE, "result.json"))
    # 5 (nothing collected) or anything else but 0 is a failed suite, whatever JUnit says.
    assert result["exitCode"] == 0, matrix_run.read(ENTRY, "suites", SUITE, "pytest.log")
    cases = parse_junit(matrix_run.read(ENTRY, "suites", SUITE, "junit.xml"), SUITE)
    assert sorted(c.name for c in cases) == sorted(CASES), [c.name for c in cases]
    assert {c.name: c.status for c in cases} == dict.fromkeys(CASES, PASS), \
        [(c.name, c.status, c.reason) for c in cases if c.status != PASS]


def test_the_report_names_each_vms_os_and_the_images_kernel(matrix_run):
    os_entry = load_matrix().os_entry(ENTRY)
    pretty = os_entry.os_release["PRETTY_NAME"]          # Debian GNU/Linux 12 (bookworm)
    row = matrix_run.row()
    vm = VmProvider(row["facts"]["cluster"], nodes=os_entry.nodes, os_entry=ENTRY)
    image = vm_image.load_image(os.path.join(vm_image.cache_root(), vm.image_spec().key()))
    assert image is not None, "the image the VMs booted is gone from the cache"
    guest = json.loads(matrix_run.read(ENTRY, "guest.json"))
    # Every VM answered for itself: its OS release, and the kernel baked into the image.
    assert guest["nodes"] == {n.name: {"os": pretty, "kernelRelease": image.kernel_release}
                              for n in vm.nodes()}, guest
    report = matrix_run.read("matrix.md")
    for name in guest["nodes"]:
        assert f"{name}: {pretty}, {image.kernel_release}" in report, report


def test_nothing_is_left_and_the_root_namespace_is_untouched(matrix_run):
    row = matrix_run.row()        # the cluster is named in the report even when it failed
    vm = VmProvider(row["facts"]["cluster"], nodes=load_matrix().os_entry(ENTRY).nodes)
    assert not vm.leftovers(), matrix_run.context()
    assert root_netns_snapshot() == matrix_run.before
