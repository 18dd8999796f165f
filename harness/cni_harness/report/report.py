"""Suite results from JUnit XML, merged JUnit, and the human reports (pure).

Statuses a case or a matrix cell can have:
- `pass`, `fail` (failures and errors), `skip` (with the reason);
- `expected-unsupported`: what the matrix says this entry cannot do, refused as expected.
  A suite marks such a case with `pytest.xfail(reason)`; pytest writes it to JUnit as a
  skip of type `pytest.xfail`. It counts as a success.

Suites attach evidence with `record_property("evidence", json.dumps(...))`; it is shown
per case. Nothing here runs anything: inputs are XML text and plain data.
"""

from __future__ import annotations

import html
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

PASS, FAIL, SKIP, EXPECTED = "pass", "fail", "skip", "expected-unsupported"
STATUSES = (PASS, FAIL, SKIP, EXPECTED)
SUCCESS = (PASS, SKIP, EXPECTED)
PYTEST_NO_TESTS = 5
_ICON = {PASS: "✅", FAIL: "❌", SKIP: "⏭️", EXPECTED: "🚫"}
_CSS_CLASS = {PASS: "pass", FAIL: "fail", SKIP: "skip", EXPECTED: "expected"}


@dataclass(frozen=True)
class Case:
    """One test case as JUnit recorded it."""

    suite: str
    classname: str
    name: str
    status: str
    reason: str = ""
    details: str = ""
    seconds: float = 0.0
    properties: tuple[tuple[str, str], ...] = ()

    @property
    def title(self) -> str:
        short = self.classname.rsplit(".", 1)[-1] if self.classname else ""
        return f"{short}::{self.name}" if short and short.startswith("Test") else self.name

    def evidence(self) -> list[Any]:
        """Every `evidence` property, JSON-decoded where it is JSON."""
        found = []
        for key, value in self.properties:
            if key != "evidence":
                continue
            try:
                found.append(json.loads(value))
            except ValueError:
                found.append(value)
        return found


@dataclass(frozen=True)
class Outcome:
    """A summary status with its reason and case counts."""

    status: str
    reason: str = ""
    counts: tuple[tuple[str, int], ...] = ()

    def count(self, status: str) -> int:
        return dict(self.counts).get(status, 0)

    def tally(self) -> str:
        """`2 passed, 4 expected-unsupported`; empty when every case has the suite's status."""
        seen = [s for s, n in self.counts if n]
        if seen in ([], [self.status]):
            return ""
        return ", ".join(f"{n} {'passed' if s == PASS else 'failed' if s == FAIL else s}"
                         for s, n in self.counts if n)

    def detail(self) -> str:
        """The tally and the reason, for a table cell next to the status."""
        return ": ".join(p for p in (self.tally(), self.reason) if p)

    def label(self) -> str:
        """`pass (5 passed, 2 expected-unsupported)` or `fail (...): reason`."""
        tally = f" ({self.tally()})" if self.tally() else ""
        return f"{self.status}{tally}{': ' + self.reason if self.reason else ''}"


@dataclass(frozen=True)
class SuiteResult:
    """One suite run: its cases and pytest's exit status (None when it did not run)."""

    name: str
    cases: tuple[Case, ...] = ()
    exit_code: int | None = None
    note: str = ""                # why it did not run, or what went wrong around it
    seconds: float = 0.0

    def outcome(self) -> Outcome:
        return suite_outcome(self.cases, self.exit_code, self.note)


# --- JUnit ------------------------------------------------------------------------------------

def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[0] if lines else ""


def _case_status(element: ET.Element) -> tuple[str, str, str]:
    for tag in ("failure", "error"):
        child = element.find(tag)
        if child is not None:
            text = (child.text or "").strip()
            return FAIL, _first_line(child.get("message") or text) or tag, text
    child = element.find("skipped")
    if child is not None:
        message = _first_line(child.get("message") or "")
        if child.get("type") == "pytest.xfail":
            return EXPECTED, _strip_prefix(message, "xfail").strip(" :") or "expected", ""
        return SKIP, _skip_reason(message), (child.text or "").strip()
    return PASS, "", ""


def _strip_prefix(text: str, prefix: str) -> str:
    return text[len(prefix):] if text.startswith(prefix) else text


def _skip_reason(message: str) -> str:
    # pytest writes "Skipped: reason" for pytest.skip() and the bare reason for markers.
    return _strip_prefix(message, "Skipped:").strip() if message else "skipped"


def parse_junit(text: str, suite: str) -> list[Case]:
    """Every test case of a JUnit XML document (one <testsuite> or <testsuites>)."""
    root = ET.fromstring(text)
    cases = []
    for element in root.iter("testcase"):
        status, reason, details = _case_status(element)
        props = tuple((p.get("name", ""), p.get("value", ""))
                      for p in element.findall("properties/property"))
        cases.append(Case(suite=suite, classname=element.get("classname", ""),
                          name=element.get("name", ""), status=status, reason=reason,
                          details=details, seconds=float(element.get("time") or 0.0),
                          properties=props))
    return cases


def suite_outcome(cases: Sequence[Case], exit_code: int | None, note: str = "") -> Outcome:
    """One status for a suite: any failure fails it; no test collected fails it too."""
    counts = tuple((s, sum(1 for c in cases if c.status == s)) for s in STATUSES)
    tally = dict(counts)
    if exit_code is None:
        return Outcome(FAIL, note or "did not run", counts)
    if tally[FAIL]:
        failed = [c.title for c in cases if c.status == FAIL]
        more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
        return Outcome(FAIL, ", ".join(failed[:3]) + more, counts)
    if exit_code == PYTEST_NO_TESTS or not cases:
        return Outcome(FAIL, note or "no tests collected", counts)
    if exit_code != 0:
        return Outcome(FAIL, note or f"pytest exited {exit_code}", counts)
    if tally[PASS]:
        return Outcome(PASS, "", counts)
    if tally[EXPECTED] and not tally[SKIP]:
        reasons = sorted({c.reason for c in cases if c.status == EXPECTED})
        return Outcome(EXPECTED, "; ".join(reasons), counts)
    reasons = sorted({c.reason for c in cases if c.status in (SKIP, EXPECTED)})
    return Outcome(SKIP, "; ".join(reasons), counts)


def _suite_element(name: str, cases: Iterable[ET.Element]) -> ET.Element:
    element = ET.Element("testsuite", name=name)
    total = failures = errors = skipped = 0
    seconds = 0.0
    for case in cases:
        element.append(case)
        total += 1
        failures += case.find("failure") is not None
        errors += case.find("error") is not None
        skipped += case.find("skipped") is not None
        seconds += float(case.get("time") or 0.0)
    element.set("tests", str(total))
    element.set("failures", str(failures))
    element.set("errors", str(errors))
    element.set("skipped", str(skipped))
    element.set("time", f"{seconds:.3f}")
    return element


def case_element(case: Case) -> ET.Element:
    """A JUnit <testcase> for a case the harness judged itself (preflight, boot, ...)."""
    element = ET.Element("testcase", classname=case.classname, name=case.name,
                         time=f"{case.seconds:.3f}")
    if case.properties:
        props = ET.SubElement(element, "properties")
        for key, value in case.properties:
            ET.SubElement(props, "property", name=key, value=value)
    if case.status == FAIL:
        failure = ET.SubElement(element, "failure", message=case.reason)
        failure.text = case.details or case.reason
    elif case.status == SKIP:
        ET.SubElement(element, "skipped", message=case.reason)
    elif case.status == EXPECTED:
        # Refused as the matrix expects: a success, with the reason kept as a property.
        props = element.find("properties") or ET.SubElement(element, "properties")
        ET.SubElement(props, "property", name="result", value=f"{EXPECTED}: {case.reason}")
    return element


def merge_junit(parts: Sequence[tuple[str, str, str]], extra: Sequence[Case] = ()) -> str:
    """One <testsuites> document from many.

    `parts` are (suite name, JUnit XML text, classname prefix); every <testcase> of a part
    goes into one <testsuite> with that name, its classname prefixed (matrix runs prefix the
    entry so the same test on two kernels stays two cases). `extra` cases join suites of
    their own `suite` name.
    """
    root = ET.Element("testsuites", name="cni-harness")
    for name, text, prefix in parts:
        cases = []
        for element in ET.fromstring(text).iter("testcase"):
            if prefix:
                cls = element.get("classname", "")
                element.set("classname", f"{prefix}.{cls}" if cls else prefix)
            cases.append(element)
        root.append(_suite_element(name, cases))
    by_suite: dict[str, list[ET.Element]] = {}
    for case in extra:
        by_suite.setdefault(case.suite, []).append(case_element(case))
    for name, elements in by_suite.items():
        root.append(_suite_element(name, elements))
    for attr in ("tests", "failures", "errors", "skipped"):
        root.set(attr, str(sum(int(s.get(attr, "0")) for s in root)))
    root.set("time", f"{sum(float(s.get('time', '0')) for s in root):.3f}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode")


# --- suite run reports ------------------------------------------------------------------------

def _md(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _fmt_seconds(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _evidence_json(case: Case) -> str:
    items = case.evidence()
    return json.dumps(items[0] if len(items) == 1 else items, indent=2, sort_keys=True)


def _count_tables(value: Any, path: str = "") -> list[tuple[str, dict[str, dict[str, int]]]]:
    """Evidence values shaped {row: {column: count}} (such as `packetsPerInterface`), with
    where they sit, so reports can show them as tables rather than only as JSON."""
    if not isinstance(value, dict) or not value:
        return []
    if all(isinstance(row, dict) and row and
           all(isinstance(n, int) and not isinstance(n, bool) for n in row.values())
           for row in value.values()):
        return [(path, value)]
    found = []
    for key, inner in value.items():
        found += _count_tables(inner, f"{path} {key}".strip())
    return found


def _count_table_markdown(name: str, rows: dict[str, dict[str, int]]) -> list[str]:
    columns = sorted({column for row in rows.values() for column in row})
    lines = [f"| {_md(name)} | " + " | ".join(columns) + " |",
             "|---|" + "---|" * len(columns)]
    for label, row in rows.items():
        lines.append(f"| {_md(label)} | " + " | ".join(str(row.get(c, 0)) for c in columns)
                     + " |")
    return [*lines, ""]


def render_run_markdown(suites: Sequence[SuiteResult], title: str = "cni-harness run",
                        facts: dict[str, str] | None = None) -> str:
    """The report of `cni-harness run`: a suite table, then each suite's cases."""
    lines = [f"# {title}", ""]
    for key, value in (facts or {}).items():
        lines.append(f"- {key}: {value}")
    if facts:
        lines.append("")
    lines += ["| suite | result | passed | failed | skipped | expected-unsupported | time |",
              "|---|---|---|---|---|---|---|"]
    for suite in suites:
        out = suite.outcome()
        lines.append(f"| {suite.name} | {_ICON[out.status]} {_md(out.status)}"
                     f"{': ' + _md(out.reason) if out.reason else ''} | {out.count(PASS)} | "
                     f"{out.count(FAIL)} | {out.count(SKIP)} | {out.count(EXPECTED)} | "
                     f"{_fmt_seconds(suite.seconds)} |")
    for suite in suites:
        lines += ["", f"## {suite.name}", ""]
        if suite.note:
            lines += [f"_{_md(suite.note)}_", ""]
        if not suite.cases:
            lines.append("No test cases.")
            continue
        lines += ["| case | result | reason | time |", "|---|---|---|---|"]
        for case in suite.cases:
            lines.append(f"| {_md(case.title)} | {_ICON[case.status]} {case.status} | "
                         f"{_md(case.reason)} | {case.seconds:.2f} s |")
        with_evidence = [c for c in suite.cases if c.evidence()]
        if with_evidence:
            lines += ["", "### Evidence", ""]
            for case in with_evidence:
                lines += [f"#### {case.title}", ""]
                for item in case.evidence():
                    for name, rows in _count_tables(item):
                        lines += _count_table_markdown(name, rows)
                lines += ["```json", _evidence_json(case), "```", ""]
        failed = [c for c in suite.cases if c.status == FAIL and c.details]
        if failed:
            lines += ["", "### Failures", ""]
            for case in failed:
                lines += [f"#### {case.title}", "", "```", case.details[-4000:], "```", ""]
    return "\n".join(lines).rstrip() + "\n"


_HTML_HEAD = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title><style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #bbb; padding: 4px 8px; text-align: left; vertical-align: top; }}
th {{ background: #eee; }}
.pass {{ background: #dfd; }} .fail {{ background: #fcc; }}
.skip {{ background: #eee; }} .expected {{ background: #ffe9b3; }}
pre {{ background: #f6f6f6; padding: 6px; max-height: 30em; overflow: auto; }}
</style></head><body>
"""


def _h(text: Any) -> str:
    return html.escape(str(text))


def _cell_html(status: str, text: str) -> str:
    return f'<td class="{_CSS_CLASS[status]}">{_h(text)}</td>'


def _cases_html(cases: Sequence[Case]) -> list[str]:
    out = ["<table><tr><th>case</th><th>result</th><th>reason</th><th>time</th>"
           "<th>evidence / details</th></tr>"]
    for case in cases:
        extra = ""
        if case.evidence():
            extra += (f"<details><summary>evidence</summary><pre>{_h(_evidence_json(case))}"
                      "</pre></details>")
        if case.status == FAIL and case.details:
            extra += (f"<details><summary>failure</summary><pre>{_h(case.details[-4000:])}"
                      "</pre></details>")
        out.append(f"<tr><td>{_h(case.title)}</td>{_cell_html(case.status, case.status)}"
                   f"<td>{_h(case.reason)}</td><td>{case.seconds:.2f} s</td><td>{extra}</td></tr>")
    out.append("</table>")
    return out


def render_run_html(suites: Sequence[SuiteResult], title: str = "cni-harness run",
                    facts: dict[str, str] | None = None) -> str:
    """The same report as HTML, evidence folded per case."""
    out = [_HTML_HEAD.format(title=_h(title)), f"<h1>{_h(title)}</h1>"]
    if facts:
        out.append("<ul>" + "".join(f"<li>{_h(k)}: {_h(v)}</li>" for k, v in facts.items())
                   + "</ul>")
    out.append("<table><tr><th>suite</th><th>result</th><th>time</th></tr>")
    for suite in suites:
        result = suite.outcome()
        out.append(f"<tr><td>{_h(suite.name)}</td>{_cell_html(result.status, result.label())}"
                   f"<td>{_fmt_seconds(suite.seconds)}</td></tr>")
    out.append("</table>")
    for suite in suites:
        out.append(f"<h2>{_h(suite.name)}</h2>")
        if suite.note:
            out.append(f"<p><em>{_h(suite.note)}</em></p>")
        out += _cases_html(suite.cases) if suite.cases else ["<p>No test cases.</p>"]
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# --- matrix reports ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    """One entry x column result of a matrix run."""

    status: str
    reason: str = ""

    @property
    def unexpected(self) -> bool:
        return self.status == FAIL

    def text(self) -> str:
        return f"{self.status}: {self.reason}" if self.reason else self.status


@dataclass(frozen=True)
class MatrixRow:
    """One matrix entry: facts reported from inside it, its cells, its suite results."""

    entry: str
    facts: dict[str, str] = field(default_factory=dict)
    cells: dict[str, Cell] = field(default_factory=dict)
    suites: tuple[SuiteResult, ...] = ()
    log_dir: str = ""


@dataclass(frozen=True)
class MatrixReport:
    provider: str
    columns: tuple[str, ...]
    rows: tuple[MatrixRow, ...]
    facts: dict[str, str] = field(default_factory=dict)

    @property
    def unexpected(self) -> list[tuple[str, str, Cell]]:
        return [(row.entry, col, row.cells[col]) for row in self.rows for col in self.columns
                if col in row.cells and row.cells[col].unexpected]

    def to_dict(self) -> dict:
        return {
            "provider": self.provider, "columns": list(self.columns), "facts": self.facts,
            "unexpected": len(self.unexpected),
            "rows": [{"entry": r.entry, "facts": r.facts, "logDir": r.log_dir,
                      "cells": {c: {"status": v.status, "reason": v.reason}
                                for c, v in r.cells.items()}} for r in self.rows],
        }


FACT_COLUMNS = (("kernelRelease", "kernel (reported)"), ("accel", "accel"),
                ("seconds", "time"))


def _fact(row: MatrixRow, key: str) -> str:
    value = row.facts.get(key, "")
    if key == "seconds" and value:
        return _fmt_seconds(float(value))
    return value or "?"


def case_matrix(report: MatrixReport) -> dict[str, dict[str, dict[str, Case]]]:
    """suite -> case title -> entry -> Case, for cases whose status differs by entry."""
    table: dict[str, dict[str, dict[str, Case]]] = {}
    for row in report.rows:
        for suite in row.suites:
            for case in suite.cases:
                table.setdefault(suite.name, {}).setdefault(case.title, {})[row.entry] = case
    differing: dict[str, dict[str, dict[str, Case]]] = {}
    for suite, cases in table.items():
        for title, per_entry in cases.items():
            if len({c.status for c in per_entry.values()}) > 1 or \
                    len(per_entry) < len(report.rows):
                differing.setdefault(suite, {})[title] = per_entry
    return differing


def render_matrix_markdown(report: MatrixReport, title: str = "cni-harness matrix") -> str:
    """Entry x column table, per-case differences between entries, unexpected results."""
    lines = [f"# {title} ({report.provider})", ""]
    for key, value in report.facts.items():
        lines.append(f"- {key}: {value}")
    lines.append("")
    head = ["entry", *(label for _k, label in FACT_COLUMNS), *report.columns]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report.rows:
        cells = [row.entry, *(_md(_fact(row, k)) for k, _l in FACT_COLUMNS)]
        for col in report.columns:
            cell = row.cells.get(col)
            cells.append(f"{_ICON[cell.status]} {_md(cell.text())}" if cell else "")
        lines.append("| " + " | ".join(cells) + " |")
    unexpected = report.unexpected
    lines += ["", f"**{len(unexpected)} unexpected result(s)**" if unexpected
              else "**All results as the matrix expects.**", ""]
    for entry, col, cell in unexpected:
        lines.append(f"- {entry} / {col}: {_md(cell.reason)}")
    differing = case_matrix(report)
    if differing and len(report.rows) > 1:
        lines += ["", "## Cases that differ between entries", ""]
        entries = [r.entry for r in report.rows]
        for suite, cases in differing.items():
            lines += [f"### {suite}", "", "| case | " + " | ".join(entries) + " |",
                      "|---|" + "---|" * len(entries)]
            for case_title, per_entry in cases.items():
                cols = []
                for entry in entries:
                    case = per_entry.get(entry)
                    cols.append(f"{_ICON[case.status]} {case.status}"
                                f"{': ' + _md(case.reason) if case.reason else ''}"
                                if case else "not run")
                lines.append(f"| {_md(case_title)} | " + " | ".join(cols) + " |")
            lines.append("")
    lines += ["", "## Entries", ""]
    for row in report.rows:
        facts = ", ".join(f"{k}: {v}" for k, v in row.facts.items())
        lines.append(f"- **{row.entry}** ({facts}); logs: `{row.log_dir}`")
    return "\n".join(lines).rstrip() + "\n"


def render_matrix_html(report: MatrixReport, title: str = "cni-harness matrix") -> str:
    out = [_HTML_HEAD.format(title=_h(title)), f"<h1>{_h(title)} ({_h(report.provider)})</h1>"]
    if report.facts:
        out.append("<ul>" + "".join(f"<li>{_h(k)}: {_h(v)}</li>"
                                    for k, v in report.facts.items()) + "</ul>")
    out.append("<table><tr><th>entry</th>" +
               "".join(f"<th>{_h(label)}</th>" for _k, label in FACT_COLUMNS) +
               "".join(f"<th>{_h(c)}</th>" for c in report.columns) + "</tr>")
    for row in report.rows:
        tds = "".join(f"<td>{_h(_fact(row, k))}</td>" for k, _l in FACT_COLUMNS)
        for col in report.columns:
            cell = row.cells.get(col)
            tds += _cell_html(cell.status, cell.text()) if cell else "<td></td>"
        out.append(f"<tr><td>{_h(row.entry)}</td>{tds}</tr>")
    out.append("</table>")
    unexpected = report.unexpected
    out.append(f"<p><strong>{len(unexpected)} unexpected result(s)</strong></p>" if unexpected
               else "<p><strong>All results as the matrix expects.</strong></p>")
    if unexpected:
        out.append("<ul>" + "".join(f"<li>{_h(e)} / {_h(c)}: {_h(cell.reason)}</li>"
                                    for e, c, cell in unexpected) + "</ul>")
    differing = case_matrix(report)
    if differing and len(report.rows) > 1:
        out.append("<h2>Cases that differ between entries</h2>")
        entries = [r.entry for r in report.rows]
        for suite, cases in differing.items():
            out.append(f"<h3>{_h(suite)}</h3><table><tr><th>case</th>" +
                       "".join(f"<th>{_h(e)}</th>" for e in entries) + "</tr>")
            for case_title, per_entry in cases.items():
                tds = ""
                for entry in entries:
                    case = per_entry.get(entry)
                    tds += (_cell_html(case.status, f"{case.status}: {case.reason}"
                                       if case.reason else case.status)
                            if case else "<td>not run</td>")
                out.append(f"<tr><td>{_h(case_title)}</td>{tds}</tr>")
            out.append("</table>")
    for row in report.rows:
        out.append(f"<h2>{_h(row.entry)}</h2><p>" +
                   ", ".join(f"{_h(k)}: {_h(v)}" for k, v in row.facts.items()) +
                   f"; logs: <code>{_h(row.log_dir)}</code></p>")
        for suite in row.suites:
            result = suite.outcome()
            out.append(f"<h3>{_h(suite.name)}: {_h(result.label())}</h3>")
            if suite.cases:
                out += _cases_html(suite.cases)
    out.append("</body></html>")
    return "\n".join(out) + "\n"
