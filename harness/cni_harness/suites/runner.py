"""`cni-harness run`: the suites in tests/e2e/ under pytest, with JUnit and a human report.

A suite NAME is the file `tests/e2e/test_NAME.py` of the project. Each suite runs as its own
pytest session (so one suite's crash cannot hide another's results) writing
`OUT/NAME/junit.xml` and `OUT/NAME/pytest.log`; then `OUT/junit.xml` (merged),
`OUT/report.md`, `OUT/report.html` and `OUT/summary.json` are written.

Environment given to the suites: `CNI_HARNESS_RESULTS_DIR` (the suite's own output
directory, for captures and other evidence files) and whatever the caller adds (the
matrix runner adds `CNI_HARNESS_MATRIX_ENTRY`).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import subprocess
import sys
import time
from typing import Callable, Sequence

from .. import PROJECT_ROOT
from ..report.report import (
    FAIL,
    SuiteResult,
    merge_junit,
    parse_junit,
    render_run_html,
    render_run_markdown,
)

RESULTS_ENV = "CNI_HARNESS_RESULTS_DIR"
RESULT_FILE = "result.json"      # per suite: pytest's exit code, seconds, why no JUnit
_SUITE_FILE = re.compile(r"^test_([a-z0-9_]+)\.py$")
_RESULT_LINE = re.compile(r"\b(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")


class SuiteUsageError(ValueError):
    """Unknown suite names; the message lists the known ones."""


def suite_dir(root: str = PROJECT_ROOT) -> str:
    return os.path.join(root, "tests", "e2e")


def known_suites(root: str = PROJECT_ROOT) -> list[str]:
    """Suite names, from the files tests/e2e/test_<name>.py."""
    names = []
    for path in glob.glob(os.path.join(suite_dir(root), "test_*.py")):
        match = _SUITE_FILE.match(os.path.basename(path))
        if match:
            names.append(match.group(1))
    return sorted(names)


def parse_suite_list(text: str | Sequence[str], known: Sequence[str]) -> list[str]:
    """`a,b` (or a list of such) -> names, in order, without repeats; unknown -> error."""
    items = [text] if isinstance(text, str) else list(text)
    names: list[str] = []
    for item in items:
        for name in item.split(","):
            name = name.strip()
            if name and name not in names:
                names.append(name)
    if not names:
        raise SuiteUsageError(f"no suite given; known suites: {', '.join(known) or 'none'}")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SuiteUsageError(f"unknown suite(s) {', '.join(unknown)}; known suites: "
                              f"{', '.join(known) or 'none (no tests/e2e/test_*.py)'}")
    return names


def pytest_argv(path: str, junit: str, k: str | None) -> list[str]:
    """pytest for one suite file: JUnit with per-case properties, no cache writes (the
    checkout is read-only inside a qemu guest), one line per case for progress."""
    argv = [sys.executable, "-m", "pytest", path, "-v", "-p", "no:cacheprovider",
            "-o", "junit_family=xunit1", f"--junitxml={junit}"]
    if k:
        argv += ["-k", k]
    return argv


def run_suite(name: str, out_dir: str, *, k: str | None = None,
              env: dict[str, str] | None = None,
              progress: Callable[[str], None] = lambda _m: None,
              root: str = PROJECT_ROOT) -> SuiteResult:
    """Run one suite; its results are read back from the JUnit file pytest wrote."""
    suite_out = os.path.join(out_dir, name)
    os.makedirs(suite_out, exist_ok=True)
    junit = os.path.join(suite_out, "junit.xml")
    if os.path.exists(junit):
        os.remove(junit)
    path = os.path.join(suite_dir(root), f"test_{name}.py")
    run_env = {**os.environ, **(env or {}), RESULTS_ENV: suite_out,
               "PYTHONDONTWRITEBYTECODE": "1"}
    started = time.monotonic()
    progress(f"suite {name}: starting")
    with open(os.path.join(suite_out, "pytest.log"), "w", encoding="utf-8") as log:
        proc = subprocess.Popen(pytest_argv(path, junit, k), cwd=root, env=run_env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace")
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            log.flush()
            if _RESULT_LINE.search(line) and "::" in line:
                progress(f"suite {name}: {line.strip()}")
        exit_code = proc.wait()
    seconds = time.monotonic() - started
    cases: tuple = ()
    note = ""
    try:
        with open(junit, encoding="utf-8") as fh:
            cases = tuple(parse_junit(fh.read(), name))
    except OSError:
        note = f"pytest wrote no JUnit file (exit {exit_code}); see {suite_out}/pytest.log"
    except Exception as exc:          # malformed XML from a crashed run
        note = f"unreadable JUnit file: {exc}"
    result = SuiteResult(name, cases, exit_code, note, seconds)
    # Written as soon as the suite ends: a run cut short later (a guest's time limit) still
    # shows the suites that finished.
    with open(os.path.join(suite_out, RESULT_FILE), "w", encoding="utf-8") as fh:
        json.dump({"name": name, "exitCode": exit_code, "seconds": round(seconds, 2),
                   "note": note}, fh)
    progress(f"suite {name}: {result.outcome().label()} ({seconds:.0f} s)")
    return result


def read_suite_result(out_dir: str, name: str) -> SuiteResult | None:
    """A finished suite's result from its directory (RESULT_FILE and its JUnit), or None
    when the suite did not finish."""
    suite_out = os.path.join(out_dir, name)
    try:
        with open(os.path.join(suite_out, RESULT_FILE), encoding="utf-8") as fh:
            item = json.load(fh)
    except (OSError, ValueError):
        return None
    cases: tuple = ()
    with contextlib.suppress(OSError, ValueError), \
            open(os.path.join(suite_out, "junit.xml"), encoding="utf-8") as fh:
        cases = tuple(parse_junit(fh.read(), name))
    return SuiteResult(name, cases, item.get("exitCode"), "" if cases else item.get("note", ""),
                       float(item.get("seconds") or 0))


def write_reports(results: Sequence[SuiteResult], out_dir: str, title: str,
                  facts: dict[str, str] | None = None) -> dict:
    """Merged JUnit, Markdown, HTML and a JSON summary of suite results."""
    parts = []
    for result in results:
        junit = os.path.join(out_dir, result.name, "junit.xml")
        if os.path.exists(junit):
            with open(junit, encoding="utf-8") as fh:
                parts.append((result.name, fh.read(), ""))
    with open(os.path.join(out_dir, "junit.xml"), "w", encoding="utf-8") as fh:
        fh.write(merge_junit(parts))
    with open(os.path.join(out_dir, "report.md"), "w", encoding="utf-8") as fh:
        fh.write(render_run_markdown(results, title, facts))
    with open(os.path.join(out_dir, "report.html"), "w", encoding="utf-8") as fh:
        fh.write(render_run_html(results, title, facts))
    summary = {
        "ok": all(r.outcome().status != FAIL for r in results),
        "out": out_dir,
        "facts": facts or {},
        "suites": [{"name": r.name, "status": r.outcome().status,
                    "reason": r.outcome().reason, "counts": dict(r.outcome().counts),
                    "exitCode": r.exit_code, "seconds": round(r.seconds, 2),
                    "junit": os.path.join(out_dir, r.name, "junit.xml")} for r in results],
    }
    with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2)
    return summary


def run_suites(names: Sequence[str], out_dir: str, *, k: str | None = None,
               env: dict[str, str] | None = None,
               progress: Callable[[str], None] = lambda _m: None,
               title: str = "cni-harness run", facts: dict[str, str] | None = None,
               root: str = PROJECT_ROOT) -> tuple[list[SuiteResult], dict]:
    """Every named suite in turn, then the reports."""
    os.makedirs(out_dir, exist_ok=True)
    results = [run_suite(n, out_dir, k=k, env=env, progress=progress, root=root)
               for n in names]
    return results, write_reports(results, out_dir, title, facts)
