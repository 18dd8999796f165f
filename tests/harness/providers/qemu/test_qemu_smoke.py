"""qemu smoke: real guests booting Debian's 5.10 and 6.1 kernels (TCG when KVM is unusable).

What CI runs of the kernel matrix: `cni-harness matrix run --provider qemu` of 5.10, the
oldest kernel, with the kernel suite (live preflight, per-kernel BPF helpers, real packets
through tc programs, the whole datapath through the verifier, a local cluster coming up),
then `cni-harness repro` of the whole kernel suite in a 6.1 guest. Results must come from
inside each guest: the release each guest reported, and the per-kernel difference
matrix.yaml records (5.10 refuses the extra LB algorithms and the newer BPF helpers; 6.1
accepts them). The traffic lab in a guest is left to the nightly matrix for now: with the
agents' native poll periods (policy flows, egress health) it took ~38 min of TCG here,
more than CI's budget allows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from cni_harness.providers.qemu import provider as qemu
from cni_harness.testing import require_available, run_bounded

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ENTRY, RELEASE = "debian-5.10", "5.10."
REPRO_ENTRY, REPRO_RELEASE = "debian-6.1", "6.1."
SUITES = ("kernel",)
CLI = os.path.join(os.path.dirname(sys.executable), "cni-harness")


def _json(*parts: str):
    with open(os.path.join(*parts), encoding="utf-8") as fh:
        return json.load(fh)


@pytest.fixture(scope="module", autouse=True)
def qemu_available():
    require_available(qemu.availability(), "qemu provider")


def _guests_of(out: str) -> list[str]:
    """qemu/virtiofsd processes still running for this output directory."""
    res = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True)
    return [line for line in res.stdout.splitlines()
            if out in line and ("qemu" in line or "virtiofsd" in line or "vng" in line)]


@pytest.fixture(scope="module")
def matrix_run(tmp_path_factory):
    suites = list(SUITES)
    out = str(tmp_path_factory.mktemp("qemu-matrix"))
    res = run_bounded([CLI, "matrix", "run", "--provider", "qemu", "--entries", ENTRY,
                       "--suites", ",".join(suites), "--out", out, "--timeout", "1500"],
                      timeout=1800)
    return res, out, suites


@pytest.fixture(scope="module")
def repro_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("qemu-repro"))
    res = run_bounded([CLI, "repro", "--kernel", "6.1", "--suite", "kernel", "--out", out],
                      timeout=1200)
    return res, os.path.join(out, REPRO_ENTRY)


def test_matrix_run_passes_with_results_from_inside_the_guest(matrix_run):
    res, out, suites = matrix_run
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    report = _json(out, "matrix.json")
    rows = {row["entry"]: row for row in report["rows"]}
    assert list(rows) == [ENTRY]
    guest = _json(out, ENTRY, "guest.json")
    assert guest["guest"] is True and guest["kernelRelease"].startswith(RELEASE)
    assert rows[ENTRY]["facts"]["kernelRelease"] == guest["kernelRelease"]
    assert guest["kernelRelease"] in res.stdout          # the table names it
    for suite in suites:
        assert rows[ENTRY]["cells"][suite]["status"] == "pass", rows[ENTRY]["cells"]
    assert rows[ENTRY]["cells"]["preflight:extra-lb"]["status"] == "expected-unsupported"
    assert not _guests_of(out), "guests left running"


def _case_statuses(junit_path: str, suite_name: str | None = None) -> dict[str, str]:
    """{case: pass | fail | <skip type>} of one suite of a matrix's JUnit (`<entry>/<suite>`),
    or of every case of a suite's own JUnit (`suite_name` None)."""
    junit = ET.parse(junit_path).getroot()
    statuses: dict[str, str] = {}
    for suite in junit.iter("testsuite"):
        if suite_name and suite.get("name").rpartition("/")[2] != suite_name:
            continue
        for case in suite.findall("testcase"):
            skipped = case.find("skipped")
            failed = case.find("failure") is not None or case.find("error") is not None
            statuses[case.get("name")] = skipped.get("type") if skipped is not None else \
                "fail" if failed else "pass"
    return statuses


def test_kernel_suite_shows_the_per_kernel_difference(matrix_run, repro_run):
    _res, out, _suites = matrix_run
    old = _case_statuses(os.path.join(out, "junit.xml"), "kernel")
    res, entry = repro_run
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    assert _json(entry, "guest.json")["kernelRelease"].startswith(REPRO_RELEASE)
    new = _case_statuses(os.path.join(entry, "suites", "kernel", "junit.xml"))
    features = [n for n in old if n.startswith("test_bpf_feature_matches_matrix[")]
    assert len(features) >= 3
    for name in features:
        assert (old[name], new.get(name)) == ("pytest.xfail", "pass"), name
    for name in ("test_tc_program_counts_real_packets",
                 "test_datapath_ip_option_code_inserts_and_strips_on_this_kernel",
                 "test_the_whole_datapath_passes_this_kernels_verifier"):
        assert (old[name], new.get(name)) == ("pass", "pass"), name


def test_repro_leaves_the_evidence_of_a_61_guest(repro_run):
    res, entry = repro_run
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    guest = _json(entry, "guest.json")
    cases = {c.get("name"): c for c in ET.parse(os.path.join(
        entry, "suites", "kernel", "junit.xml")).getroot().iter("testcase")}
    case = cases["test_tc_program_counts_real_packets"]
    assert case.find("failure") is None and case.find("skipped") is None
    evidence = json.loads(case.find("properties/property").get("value"))
    assert evidence["kernelRelease"] == guest["kernelRelease"]
    assert evidence["countedOnIngressOfVk0"] >= evidence["sent"]
    assert f"evidence: {entry}/suites/kernel/" in res.stdout
    assert not _guests_of(os.path.dirname(entry))
