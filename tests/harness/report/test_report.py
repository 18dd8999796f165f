"""Reports: JUnit parsing and merging, suite outcomes, Markdown and HTML rendering."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from cni_harness.report.report import (
    EXPECTED,
    FAIL,
    PASS,
    SKIP,
    Case,
    Cell,
    MatrixReport,
    MatrixRow,
    SuiteResult,
    case_matrix,
    merge_junit,
    parse_junit,
    render_matrix_html,
    render_matrix_markdown,
    render_run_html,
    render_run_markdown,
    suite_outcome,
)

pytestmark = pytest.mark.unit

# What pytest 9 writes with junit_family=xunit1 for pass (with evidence), skip, xfail, fail.
JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests">
<testsuite name="pytest" errors="0" failures="1" skipped="2" tests="5" time="0.031">
<testcase classname="tests.e2e.test_dsr" name="test_reply_bypasses_lb_node" time="1.5">
<properties><property name="evidence"
 value="{&quot;packets&quot;: {&quot;node1/eth0&quot;: 0, &quot;node2/eth0&quot;: 12}}"/>
</properties></testcase>
<testcase classname="tests.e2e.test_dsr" name="test_vagrant" time="0.0">
<skipped type="pytest.skip" message="no vagrant here">test_dsr.py:5: no vagrant here</skipped>
</testcase>
<testcase classname="tests.e2e.test_dsr" name="test_maglev" time="0.0">
<skipped type="pytest.xfail" message="kernel 5.10 lacks bpf_loop"/></testcase>
<testcase classname="tests.e2e.test_dsr.TestSnat" name="test_reply_path" time="0.2">
<failure message="AssertionError: reply seen on node1&#10;assert 3 == 0">trace here</failure>
</testcase>
<testcase classname="tests.e2e.test_dsr" name="test_error" time="0.1">
<error message="fixture failed">setup trace</error></testcase>
</testsuite></testsuites>"""


def test_cases_statuses_reasons_and_evidence():
    cases = parse_junit(JUNIT, "dsr")
    assert [c.status for c in cases] == [PASS, SKIP, EXPECTED, FAIL, FAIL]
    assert cases[0].evidence() == [{"packets": {"node1/eth0": 0, "node2/eth0": 12}}]
    assert cases[1].reason == "no vagrant here"
    assert cases[2].reason == "kernel 5.10 lacks bpf_loop"
    assert cases[3].reason == "AssertionError: reply seen on node1"
    assert cases[3].details == "trace here"
    assert cases[3].title == "TestSnat::test_reply_path"
    assert cases[4].reason == "fixture failed"
    assert all(c.suite == "dsr" for c in cases)


def _case(status, name="t", reason=""):
    return Case("s", "tests.e2e.test_s", name, status, reason)


def test_outcome_rules():
    ok = suite_outcome([_case(PASS), _case(EXPECTED, "x", "old kernel")], 0)
    assert ok.status == PASS and ok.tally() == "1 passed, 1 expected-unsupported"
    assert ok.label() == "pass (1 passed, 1 expected-unsupported)"
    assert suite_outcome([_case(PASS)], 0).label() == "pass"
    failed = suite_outcome([_case(PASS), _case(FAIL, "bad")], 1)
    assert failed.status == FAIL and failed.reason == "bad"
    # pytest exit 5: nothing collected is a failure, never a pass
    assert suite_outcome([], 5) == suite_outcome([], 5)
    assert suite_outcome([], 5).status == FAIL
    assert suite_outcome([], 5).reason == "no tests collected"
    assert suite_outcome([_case(PASS)], 2).status == FAIL      # interrupted / usage error
    assert suite_outcome([], None, "boot failed").reason == "boot failed"
    assert suite_outcome([_case(EXPECTED, reason="r")], 0).status == EXPECTED
    skipped = suite_outcome([_case(SKIP, reason="no vagrant")], 0)
    assert skipped.status == SKIP and skipped.reason == "no vagrant"


def test_merge_keeps_every_case_prefixes_classnames_and_recounts():
    merged = ET.fromstring(merge_junit(
        [("debian-5.10/dsr", JUNIT, "debian-5.10"), ("debian-6.1/dsr", JUNIT, "debian-6.1")],
        extra=[Case("debian-5.10/preflight", "debian-5.10.preflight", "extra-lb", EXPECTED,
                    "refused as expected"),
               Case("debian-6.1/preflight", "debian-6.1.preflight", "extra-lb", FAIL,
                    "accepted, but the matrix expects unsupported")]))
    suites = merged.findall("testsuite")
    assert [s.get("name") for s in suites] == ["debian-5.10/dsr", "debian-6.1/dsr",
                                              "debian-5.10/preflight", "debian-6.1/preflight"]
    assert merged.get("tests") == "12" and merged.get("failures") == "3"
    assert merged.get("errors") == "2" and merged.get("skipped") == "4"
    first = suites[0].find("testcase")
    assert first.get("classname") == "debian-5.10.tests.e2e.test_dsr"
    assert first.find("properties/property").get("name") == "evidence"
    # expected-unsupported is a success in JUnit, its reason kept as a property
    expected = suites[2].find("testcase")
    assert expected.find("failure") is None and expected.find("skipped") is None
    assert "refused as expected" in expected.find("properties/property").get("value")
    assert suites[3].find("testcase/failure").get("message").startswith("accepted")


def test_run_report_shows_cases_reasons_and_evidence_in_both_formats():
    suites = [SuiteResult("dsr", tuple(parse_junit(JUNIT, "dsr")), 1, seconds=3.2),
              SuiteResult("traffic", (), 5)]
    md = render_run_markdown(suites, facts={"kernel": "6.1.0-50-amd64"})
    assert "| dsr | ❌ fail: TestSnat::test_reply_path, test_error |" in md
    assert "| traffic | ❌ fail: no tests collected |" in md
    assert "| test_maglev | 🚫 expected-unsupported | kernel 5.10 lacks bpf_loop |" in md
    assert '"node2/eth0": 12' in md
    assert "- kernel: 6.1.0-50-amd64" in md
    page = render_run_html(suites)
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert "&quot;node2/eth0&quot;: 12" in page
    assert '<td class="expected">expected-unsupported</td>' in page


def test_packet_counts_per_interface_show_as_a_table():
    evidence = {"TCP": {"packetsPerInterface": {"node1 eth0": {"request in": 4,
                                                                 "request out": 4},
                                                  "node2 eth0": {"reply out": 4}},
                        "answered": 4}}
    xml = JUNIT.replace(
        "{&quot;packets&quot;: {&quot;node1/eth0&quot;: 0, &quot;node2/eth0&quot;: 12}}",
        json.dumps(evidence).replace('"', "&quot;"))
    md = render_run_markdown([SuiteResult("dsr", tuple(parse_junit(xml, "dsr")), 1)])
    assert "| TCP packetsPerInterface | reply out | request in | request out |" in md
    assert "| node1 eth0 | 0 | 4 | 4 |" in md
    assert "| node2 eth0 | 4 | 0 | 0 |" in md


def _matrix():
    old = SuiteResult("kernel", (_case(PASS, "test_tc"), _case(EXPECTED, "test_feature[x]",
                                                               "5.10 lacks x")), 0)
    new = SuiteResult("kernel", (_case(PASS, "test_tc"), _case(PASS, "test_feature[x]")), 0)
    return MatrixReport("qemu", ("preflight:extra-lb", "kernel"), (
        MatrixRow("debian-5.10", {"kernelRelease": "5.10.0-32-amd64", "accel": "tcg",
                                  "seconds": "72.0"},
                  {"preflight:extra-lb": Cell(EXPECTED, "refused as expected: needs 5.15"),
                   "kernel": Cell(PASS, "1 passed, 1 expected-unsupported")}, (old,), "/o/a"),
        MatrixRow("debian-6.1", {"kernelRelease": "6.1.0-50-amd64", "accel": "tcg",
                                 "seconds": "88.0"},
                  {"preflight:extra-lb": Cell(FAIL, "refused, but the matrix expects "
                                                    "supported"),
                   "kernel": Cell(PASS)}, (new,), "/o/b")))


def test_matrix_report_table_differences_and_unexpected():
    report = _matrix()
    assert [(e, c) for e, c, _ in report.unexpected] == [("debian-6.1", "preflight:extra-lb")]
    differing = case_matrix(report)
    assert list(differing["kernel"]) == ["test_feature[x]"]
    md = render_matrix_markdown(report)
    assert ("| debian-5.10 | 5.10.0-32-amd64 | tcg | 72.0 s | 🚫 expected-unsupported: "
            "refused as expected: needs 5.15 | ✅ pass: 1 passed, 1 expected-unsupported |") in md
    assert "**1 unexpected result(s)**" in md
    assert "| test_feature[x] | 🚫 expected-unsupported: 5.10 lacks x | ✅ pass |" in md
    page = render_matrix_html(report)
    assert '<td class="fail">fail: refused, but the matrix expects supported</td>' in page
    assert json.loads(json.dumps(report.to_dict()))["unexpected"] == 1
