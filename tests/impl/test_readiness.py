"""Judging an agent start from the files the agent leaves (pure, and the polling loop)."""

from __future__ import annotations

import json

import pytest

from cni_cilium import readiness
from cni_cilium.readiness import FAILED, RUNNING, STARTING, Readiness

pytestmark = pytest.mark.unit


def test_a_status_file_means_running_even_with_an_old_error():
    assert readiness.judge(True, {"error": "x", "time": 5.0}, since=1.0).state == RUNNING


def test_an_error_since_the_start_fails_it_with_the_reason():
    seen = readiness.judge(False, {"error": "verifier says no", "time": 10.0}, since=9.5)
    assert seen == Readiness(FAILED, "verifier says no")


def test_an_error_from_before_the_start_is_an_earlier_attempts():
    assert readiness.judge(False, {"error": "old", "time": 9.0}, since=9.5).state == STARTING
    assert readiness.judge(False, None, since=0).state == STARTING


def test_observe_reads_the_files_and_tolerates_a_half_written_error(tmp_path):
    status, error = tmp_path / "status.json", tmp_path / "start-error.json"
    error.write_text("{not json")
    assert readiness.observe(0, str(status), str(error)).state == STARTING
    error.write_text(json.dumps({"error": "bcc could not compile", "time": 3.0}))
    assert readiness.observe(2.0, str(status), str(error)) == \
        Readiness(FAILED, "bcc could not compile")
    status.write_text("{}")
    assert readiness.observe(2.0, str(status), str(error)).state == RUNNING


def test_wait_returns_the_first_decided_state_or_says_it_timed_out():
    answers = iter([Readiness(STARTING), Readiness(STARTING), Readiness(RUNNING)])
    assert readiness.wait(0, timeout=5, interval=0, look=lambda _s: next(answers)).state == \
        RUNNING
    late = readiness.wait(0, timeout=0, interval=0, look=lambda _s: Readiness(STARTING))
    assert late.state == STARTING and "within 0 s" in late.reason
