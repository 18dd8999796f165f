"""The matrix runner's expectation logic (pure) and its wiring of entries and targets."""

from __future__ import annotations

import os
import re

import pytest

from cni_harness import PROJECT_ROOT
from cni_harness.matrix.matrix import load_matrix
from cni_harness.matrix.run import (
    Entry,
    MatrixUsageError,
    Observation,
    custom_kernel_entry,
    exit_status,
    expectations_for,
    judge_entry,
    judge_preflight,
    select,
    synthetic_cases,
    target_for,
)
from cni_harness.report.report import (
    EXPECTED,
    FAIL,
    PASS,
    SKIP,
    Case,
    MatrixReport,
    MatrixRow,
    SuiteResult,
)

pytestmark = pytest.mark.unit

MATRIX = load_matrix()
DEBIAN12 = {"ID": "debian", "VERSION_ID": "12", "PRETTY_NAME": "Debian GNU/Linux 12"}


def _report(supported: bool, failing: str = "") -> dict:
    checks = [{"name": "kernel", "status": "pass", "message": "ok"}]
    if failing:
        checks.append({"name": "extra-lb-algorithms", "status": "fail", "message": failing})
    return {"supported": supported, "checks": checks}


def test_preflight_judgement_all_four_ways():
    assert judge_preflight("supported", _report(True)).status == PASS
    refused = judge_preflight("supported", _report(False, "needs 5.15"))
    assert refused.status == FAIL and "needs 5.15" in refused.reason
    expected = judge_preflight("unsupported", _report(False, "needs 5.15"))
    assert expected.status == EXPECTED and expected.reason == \
        "refused as expected: extra-lb-algorithms: needs 5.15"
    accepted = judge_preflight("unsupported", _report(True))
    assert accepted.status == FAIL and "accepted" in accepted.reason
    assert judge_preflight("supported", None).status == FAIL


def _suite(name, *statuses, exit_code=0):
    return SuiteResult(name, tuple(Case(name, "c", f"t{i}", s) for i, s in enumerate(statuses)),
                       exit_code)


def test_entry_row_from_observations():
    obs = Observation(preflight={"default": _report(True),
                                 "extra-lb": _report(False, "needs 5.15")},
                      suites={"kernel": _suite("kernel", PASS, EXPECTED),
                              "traffic": _suite("traffic", exit_code=5)})
    cells = judge_entry({"default": "supported", "extra-lb": "unsupported"},
                        ["default", "extra-lb"], ["kernel", "traffic", "dsr"], obs)
    assert cells["preflight:default"].status == PASS
    assert cells["preflight:extra-lb"].status == EXPECTED
    assert cells["kernel"].status == PASS
    assert cells["kernel"].reason == "1 passed, 1 expected-unsupported"
    assert cells["traffic"].status == FAIL and "no tests collected" in cells["traffic"].reason
    assert cells["dsr"].status == FAIL                   # asked for, never ran


def test_suites_on_a_refused_entry_follow_the_matrix():
    obs = Observation(preflight={"default": _report(False, "kernel too old")})
    as_expected = judge_entry({"default": "unsupported"}, ["default"], ["traffic"], obs)
    assert as_expected["preflight:default"].status == EXPECTED
    assert as_expected["traffic"].status == EXPECTED
    surprise = judge_entry({"default": "supported"}, ["default"], ["traffic"], obs)
    assert surprise["traffic"].status == FAIL and "expects it supported" in \
        surprise["traffic"].reason


def test_an_entry_that_never_ran_fails_every_column_with_the_reason():
    obs = Observation(error="kernel fetch failed: no mirror")
    cells = judge_entry({"default": "supported"}, ["default"], ["kernel"], obs)
    assert {c.status for c in cells.values()} == {FAIL}
    assert all("no mirror" in c.reason for c in cells.values())
    cases = synthetic_cases("debian-5.10", cells, ["kernel"], obs)
    assert [(c.suite, c.name, c.status) for c in cases] == [
        ("debian-5.10/preflight", "default", FAIL), ("debian-5.10/kernel", "suite", FAIL)]


def test_custom_kernel_is_judged_by_the_rules_on_its_reported_release():
    entry = custom_kernel_entry("/home/me/linux/arch/x86/boot/bzImage")
    assert entry.name == "custom-bzimage" and entry.custom and entry.expect == {}
    assert expectations_for(entry, MATRIX.profiles, DEBIAN12, "5.10.0-32-amd64") == {
        "default": "supported", "extra-lb": "unsupported", "vxlan": "supported"}
    assert expectations_for(entry, MATRIX.profiles, DEBIAN12, "6.9.0") == {
        "default": "supported", "extra-lb": "supported", "vxlan": "supported"}
    matrix_entry = Entry("debian-5.10", dict(MATRIX.kernel_entry("5.10").expect))
    assert expectations_for(matrix_entry, {"default": {}}, DEBIAN12, "") == {
        "default": "supported"}


def test_entries_by_provider_and_selection():
    qemu = target_for("qemu").entries(MATRIX)
    assert [e.name for e in qemu] == ["debian-5.10", "debian-6.1", "debian-6.12", "debian-7.2"]
    assert [e.name for e in target_for("local").entries(MATRIX)] == ["host"]
    assert len(target_for("vagrant").entries(MATRIX)) == len(MATRIX.os_entries)
    assert [e.name for e in select(qemu, ["6.1", "debian-5.10", "6.1"])] == [
        "debian-6.1", "debian-5.10"]
    with pytest.raises(MatrixUsageError, match=r"known: debian-5\.10, debian-6\.1"):
        select(qemu, ["4.19"])
    with pytest.raises(MatrixUsageError, match="unknown provider 'kind'"):
        target_for("kind")


def test_exit_status_is_nonzero_on_any_unexpected_cell():
    from cni_harness.report.report import Cell

    good = MatrixReport("qemu", ("a",), (MatrixRow("e", cells={"a": Cell(EXPECTED)}),))
    bad = MatrixReport("qemu", ("a", "b"), (MatrixRow("e", cells={"a": Cell(SKIP),
                                                                 "b": Cell(FAIL, "x")}),))
    assert exit_status(good) == 0 and exit_status(bad) == 1


def test_matrix_entry_for_a_running_kernel():
    assert MATRIX.entry_for_kernel("6.1.0-50-amd64").name == "debian-6.1"
    assert MATRIX.entry_for_kernel("6.12.95+deb12-amd64").name == "debian-6.12"
    assert MATRIX.entry_for_kernel("5.10.0-32-amd64").name == "debian-5.10"
    assert MATRIX.entry_for_kernel("6.18.44-fc-v445").name == "host"


def test_every_kernel_entry_states_every_probed_bpf_feature():
    """The kernel suite's probe programs and matrix.yaml's expectations name the same set."""
    with open(os.path.join(PROJECT_ROOT, "tests/e2e/bpf/kernel_features.c"),
              encoding="utf-8") as fh:
        probes = set(re.findall(r"^int probe_(\w+)\(", fh.read(), re.M))
    assert probes
    for entry in MATRIX.kernel_entries:
        assert set(entry.bpf_features) == probes, entry.name
    # the deliberate per-kernel difference: 5.10 refuses them all, newer kernels accept
    assert set(MATRIX.kernel_entry("5.10").bpf_features.values()) == {"unsupported"}
    assert set(MATRIX.kernel_entry("6.1").bpf_features.values()) == {"supported"}


def test_a_rerun_clears_only_the_files_an_entry_job_writes(tmp_path):
    from cni_harness.matrix.entryjob import clear_outputs

    (tmp_path / "suites" / "kernel").mkdir(parents=True)
    (tmp_path / "suites" / "kernel" / "junit.xml").write_text("<testsuite/>")
    (tmp_path / "guest.json").write_text("{}")
    (tmp_path / "rc").write_text("0")
    (tmp_path / "notes.txt").write_text("mine")
    clear_outputs(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_an_entry_cut_short_keeps_the_suites_that_finished(tmp_path):
    """A guest that hits its time limit during the second suite: the first suite's own
    result stands; only the unfinished one fails, with the reason."""
    import json

    from cni_harness.matrix.run import collect

    lb = tmp_path / "suites" / "lb"
    lb.mkdir(parents=True)
    (lb / "junit.xml").write_text(
        '<testsuite name="pytest"><testcase classname="t" name="random"/>'
        '<testcase classname="t" name="maglev"><skipped type="pytest.xfail" '
        'message="needs kernel &gt;= 5.15"/></testcase></testsuite>')
    (lb / "result.json").write_text(json.dumps({"name": "lb", "exitCode": 0, "seconds": 9}))
    (tmp_path / "suites" / "policy").mkdir()          # started, never finished
    obs = collect(str(tmp_path), [], ["lb", "policy"], "guest timed out after 3600 s")
    cells = judge_entry({"default": "supported"}, [], ["lb", "policy"], obs)
    assert cells["lb"].status == PASS
    assert cells["policy"].status == FAIL
    assert "timed out" in cells["policy"].reason
