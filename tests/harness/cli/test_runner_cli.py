"""`cni-harness run` and `matrix run --provider local` end to end, on a project of suites
written here (real pytest sessions, real JUnit files, real preflight on this kernel)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest
import yaml

from cni_harness.matrix.matrix import DEFAULT_MATRIX

DEMO_SUITE = '''
import json
import pytest

def test_counts_packets(record_property):
    record_property("evidence", json.dumps({"packets": {"node2/eth0": 12}}))

def test_needs_newer_kernel():
    pytest.xfail("kernel lacks the helper")

def test_needs_vagrant():
    pytest.skip("vagrant is not installed")
'''

FAILING_SUITE = '''
def test_reply_path():
    assert 3 == 0, "reply seen on the load-balancing node"
'''

EMPTY_SUITE = '"""A suite file whose tests are not written yet."""\n'


@pytest.fixture
def project(tmp_path):
    """A project root with suites demo, failing and empty; CNI_PROJECT_ROOT points at it."""
    e2e = tmp_path / "project" / "tests" / "e2e"
    e2e.mkdir(parents=True)
    (e2e / "test_demo.py").write_text(DEMO_SUITE)
    (e2e / "test_failing.py").write_text(FAILING_SUITE)
    (e2e / "test_empty.py").write_text(EMPTY_SUITE)
    shutil.copy(DEFAULT_MATRIX, tmp_path / "project" / "matrix.yaml")
    return tmp_path / "project"


def harness(venv_bin, project, *args, cwd=None):
    env = {**os.environ, "CNI_PROJECT_ROOT": str(project)}
    return subprocess.run([venv_bin("cni-harness"), *args], capture_output=True, text=True,
                          env=env, cwd=cwd or project, timeout=600, check=False)


@pytest.mark.unit
def test_unknown_suite_is_a_usage_error_listing_known_suites(venv_bin, project):
    res = harness(venv_bin, project, "run", "--suite", "demo,nosuch")
    assert res.returncode == 2
    assert "unknown suite(s) nosuch; known suites: demo, empty, failing" in res.stderr


@pytest.mark.unit
def test_run_writes_junit_and_reports_and_counts_empty_suites_as_failed(venv_bin, project,
                                                                       tmp_path):
    out = tmp_path / "out"
    res = harness(venv_bin, project, "run", "--suite", "demo", "--suite", "empty",
                  "--out", str(out), "--json")
    assert res.returncode == 1, res.stdout + res.stderr
    summary = json.loads(res.stdout)
    status = {s["name"]: (s["status"], s["reason"], s["exitCode"]) for s in summary["suites"]}
    assert status["demo"] == ("pass", "", 0)
    assert status["empty"] == ("fail", "no tests collected", 5)
    assert "suite demo: tests/e2e/test_demo.py::test_counts_packets PASSED" in res.stderr
    merged = ET.parse(out / "junit.xml").getroot()
    assert [s.get("name") for s in merged.findall("testsuite")] == ["demo", "empty"]
    assert merged.get("tests") == "3"
    report = (out / "report.md").read_text()
    assert "| test_needs_newer_kernel | 🚫 expected-unsupported | kernel lacks the helper |" \
        in report
    assert "| test_needs_vagrant | ⏭️ skip | vagrant is not installed |" in report
    assert '"node2/eth0": 12' in report
    assert "expected-unsupported" in (out / "report.html").read_text()


@pytest.mark.unit
def test_k_selects_cases_and_a_failure_is_reported_with_its_message(venv_bin, project,
                                                                   tmp_path):
    res = harness(venv_bin, project, "run", "--suite", "demo,failing", "-k",
                  "packets or reply", "--out", str(tmp_path / "o"))
    assert res.returncode == 1
    assert "demo: pass" in res.stdout
    assert "failing: fail: test_reply_path" in res.stdout
    report = (tmp_path / "o" / "report.md").read_text()
    assert "AssertionError: reply seen on the load-balancing node" in report
    assert "test_needs_vagrant" not in report


def _matrix_expecting(tmp_path, **host_expect) -> str:
    with open(DEFAULT_MATRIX, encoding="utf-8") as fh:
        doc = yaml.safe_load(fh)
    for entry in doc["kernel_entries"]:
        if entry["name"] == "host":
            entry["expect"].update(host_expect)
    path = tmp_path / "matrix.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@pytest.mark.e2e
def test_local_matrix_run_judges_this_kernel(venv_bin, project, tmp_path):
    """The real pipeline on this host: entry job, live preflight per profile, the suite."""
    out = tmp_path / "m"
    res = harness(venv_bin, project, "matrix", "run", "--provider", "local", "--suites",
                  "demo", "--profiles", "default,extra-lb", "--out", str(out), "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)
    row = report["rows"][0]
    assert row["entry"] == "host"
    assert row["facts"]["kernelRelease"] == os.uname().release
    assert row["cells"]["preflight:extra-lb"]["status"] == "pass"
    assert row["cells"]["demo"] == {"status": "pass",
                                    "reason": "1 passed, 1 skip, 1 expected-unsupported"}
    junit = ET.parse(out / "junit.xml").getroot()
    names = [s.get("name") for s in junit.findall("testsuite")]
    assert names == ["host/demo", "host/preflight"]
    assert (out / "host" / "preflight" / "extra-lb.json").exists()


@pytest.mark.e2e
def test_an_accepted_entry_the_matrix_expects_unsupported_fails_the_run(venv_bin, project,
                                                                       tmp_path):
    matrix = _matrix_expecting(tmp_path, **{"extra-lb": "unsupported"})
    res = harness(venv_bin, project, "matrix", "run", "--provider", "local", "--matrix",
                  matrix, "--suites", "demo", "--profiles", "extra-lb", "--out",
                  str(tmp_path / "m"))
    assert res.returncode == 1
    assert "preflight:extra-lb: accepted, but the matrix expects unsupported" in res.stdout


@pytest.mark.unit
def test_unavailable_provider_exits_3_saying_what_is_missing(venv_bin, project, tmp_path):
    res = harness(venv_bin, project, "matrix", "run", "--provider", "vagrant", "--suites",
                  "demo", "--out", str(tmp_path / "v"))
    assert res.returncode == 3, res.stdout + res.stderr
    assert "provider vagrant cannot run here: missing:" in res.stderr


@pytest.mark.unit
def test_bad_matrix_arguments_are_usage_errors(venv_bin, project):
    res = harness(venv_bin, project, "matrix", "run", "--entries", "4.19", "--suites", "demo")
    assert res.returncode == 2 and "no entry '4.19'" in res.stderr
    res = harness(venv_bin, project, "repro", "--kernel", "5.10", "--suite", "demo,failing")
    assert res.returncode == 2 and "repro runs one suite" in res.stderr
    res = harness(venv_bin, project, "matrix", "run", "--profiles", "nope", "--suites", "demo")
    assert res.returncode == 2 and "unknown profile(s) nope" in res.stderr
