"""qemu smoke: real guests booting Debian's 5.10 and 6.1 kernels (TCG when KVM is unusable).

What CI runs of the kernel matrix: `cni-harness matrix run --provider qemu` over 5.10 and
6.1 with the suites in SUITES (kernel; traffic: a 3-node cluster deployed with Ansible
inside each guest, real traffic through the datapath on that kernel), then
`cni-harness repro` of one test in a 6.1 guest. Results must come from inside each guest:
the release each guest reported, and the per-kernel difference matrix.yaml records (5.10
refuses the extra LB algorithms and the newer BPF helpers; 6.1 accepts them).
Takes about 11 minutes per kernel under TCG on an idle 2-core machine, most of it the traffic
suite's lab (see the README); kernels are cached.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from cni_harness.providers.qemu import provider as qemu

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ENTRIES = {"debian-5.10": "5.10.", "debian-6.1": "6.1."}
SUITES = ("kernel", "traffic")
CLI = os.path.join(os.path.dirname(sys.executable), "cni-harness")


def _json(*parts: str):
    with open(os.path.join(*parts), encoding="utf-8") as fh:
        return json.load(fh)


@pytest.fixture(scope="module", autouse=True)
def qemu_available():
    available = qemu.availability()
    if not available.ok:
        message = f"qemu provider unavailable: {available.reason()}"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI installs all of it through scripts/setup.sh)")
        pytest.skip(message)


def run_bounded(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run a harness command; past `timeout` it gets SIGTERM, so it stops its guests itself
    (a killed command would leave them running and starve everything after it)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        err += f"\n(stopped after {timeout:.0f} s)"
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _guests_of(out: str) -> list[str]:
    """qemu/virtiofsd processes still running for this output directory."""
    res = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True)
    return [line for line in res.stdout.splitlines()
            if out in line and ("qemu" in line or "virtiofsd" in line or "vng" in line)]


@pytest.fixture(scope="module")
def matrix_run(tmp_path_factory):
    suites = list(SUITES)
    out = str(tmp_path_factory.mktemp("qemu-matrix"))
    res = run_bounded([CLI, "matrix", "run", "--provider", "qemu",
                       "--entries", ",".join(ENTRIES), "--suites", ",".join(suites),
                       "--out", out, "--timeout", "1500"], timeout=3600)
    return res, out, suites


def test_matrix_run_passes_with_results_from_inside_each_guest(matrix_run):
    res, out, suites = matrix_run
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    report = _json(out, "matrix.json")
    rows = {row["entry"]: row for row in report["rows"]}
    assert list(rows) == list(ENTRIES)
    for entry, prefix in ENTRIES.items():
        guest = _json(out, entry, "guest.json")
        assert guest["guest"] is True and guest["kernelRelease"].startswith(prefix)
        assert rows[entry]["facts"]["kernelRelease"] == guest["kernelRelease"]
        assert guest["kernelRelease"] in res.stdout          # the table names it
        for suite in suites:
            assert rows[entry]["cells"][suite]["status"] == "pass", rows[entry]["cells"]
    assert rows["debian-5.10"]["cells"]["preflight:extra-lb"]["status"] == \
        "expected-unsupported"
    assert rows["debian-6.1"]["cells"]["preflight:extra-lb"]["status"] == "pass"
    assert not _guests_of(out), "guests left running"


def _case_statuses(out: str, suite_name: str) -> dict[str, dict[str, str]]:
    """{case: {entry: pass | fail | <skip type>}} of one suite from the merged JUnit."""
    junit = ET.parse(os.path.join(out, "junit.xml")).getroot()
    statuses: dict[str, dict[str, str]] = {}
    for suite in junit.findall("testsuite"):
        entry, _, name = suite.get("name").partition("/")
        if name != suite_name:
            continue
        for case in suite.findall("testcase"):
            skipped = case.find("skipped")
            failed = case.find("failure") is not None or case.find("error") is not None
            status = skipped.get("type") if skipped is not None else \
                "fail" if failed else "pass"
            statuses.setdefault(case.get("name"), {})[entry] = status
    return statuses


def test_kernel_suite_shows_the_per_kernel_difference(matrix_run):
    _res, out, _suites = matrix_run
    statuses = _case_statuses(out, "kernel")
    features = [n for n in statuses if n.startswith("test_bpf_feature_matches_matrix[")]
    assert len(features) >= 3
    for name in features:
        assert statuses[name] == {"debian-5.10": "pytest.xfail", "debian-6.1": "pass"}, name
    for name in ("test_tc_program_counts_real_packets",
                 "test_datapath_ip_option_code_inserts_and_strips_on_this_kernel"):
        assert statuses[name] == {"debian-5.10": "pass", "debian-6.1": "pass"}, name
    with open(os.path.join(out, "matrix.md"), encoding="utf-8") as fh:
        table = fh.read()
    assert "## Cases that differ between entries" in table
    assert "lacks bpf_ktime_get_coarse_ns" in table


def test_traffic_suite_passes_whole_on_both_kernels(matrix_run):
    _res, out, _suites = matrix_run
    statuses = _case_statuses(out, "traffic")
    assert len(statuses) >= 20, sorted(statuses)
    for name, by_entry in statuses.items():
        assert by_entry == {entry: "pass" for entry in ENTRIES}, name


def test_repro_runs_one_test_in_a_61_guest(tmp_path):
    out = str(tmp_path / "repro")
    res = run_bounded([CLI, "repro", "--kernel", "6.1", "--suite", "kernel",
                       "-k", "test_tc_program_counts_real_packets", "--out", out], timeout=1800)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    entry = os.path.join(out, "debian-6.1")
    guest = _json(entry, "guest.json")
    assert guest["kernelRelease"].startswith("6.1.")
    cases = ET.parse(os.path.join(entry, "suites", "kernel", "junit.xml")).getroot() \
        .findall(".//testcase")
    assert [c.get("name") for c in cases] == ["test_tc_program_counts_real_packets"]
    assert cases[0].find("failure") is None and cases[0].find("skipped") is None
    evidence = json.loads(cases[0].find("properties/property").get("value"))
    assert evidence["kernelRelease"] == guest["kernelRelease"]
    assert evidence["countedOnIngressOfVk0"] >= evidence["sent"]
    assert f"evidence: {entry}/suites/kernel/" in res.stdout
    assert not _guests_of(out)
