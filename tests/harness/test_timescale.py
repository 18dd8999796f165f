"""The waits' time scale: parsing, which entries get it, and Ansible's use of it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from cni_harness import PROJECT_ROOT
from cni_harness.matrix.run import entry_time_scale
from cni_harness.timescale import ENV, TCG_SCALE, scaled, time_scale

pytestmark = pytest.mark.unit


def test_default_is_native_speed():
    assert time_scale({}) == 1.0 and scaled(20, {}) == 20
    assert scaled(20, {ENV: "8"}) == 160
    assert time_scale({ENV: " 2.5 "}) == 2.5


@pytest.mark.parametrize("raw, problem", [("fast", "not a number"), ("0.5", "must be >= 1"),
                                          ("nan", "must be >= 1"), ("-3", "must be >= 1")])
def test_bad_values_are_refused_by_name(raw, problem):
    with pytest.raises(ValueError, match=f"{ENV}={raw!r}: {problem}"):
        time_scale({ENV: raw})


def test_tcg_guests_get_the_tcg_scale_unless_the_user_set_one():
    assert entry_time_scale("tcg", {}) == TCG_SCALE
    assert entry_time_scale("kvm", {}) == 1.0
    assert entry_time_scale("none (host)", {}) == 1.0
    assert entry_time_scale("tcg", {ENV: "3"}) == 3.0
    assert entry_time_scale("kvm", {ENV: "2"}) == 2.0


def test_a_bad_scale_is_a_usage_error_before_anything_boots(tmp_path):
    cli = os.path.join(os.path.dirname(sys.executable), "cni-harness")
    res = subprocess.run([cli, "repro", "--kernel", "6.1", "--suite", "kernel",
                          "--out", str(tmp_path)], env={**os.environ, ENV: "fast"},
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"{ENV}='fast': not a number" in res.stderr
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("inventory_vars, expected", [({}, 180), ({"cni_time_scale": 8.0}, 1440)])
def test_the_agent_wait_scales_with_the_inventory(tmp_path, venv_bin, inventory_vars, expected):
    """Ansible templates the configure role's default with the inventory's cni_time_scale
    (the local provider writes it from CNI_HARNESS_TIME_SCALE)."""
    role = os.path.join(PROJECT_ROOT, "playbooks", "roles", "configure")
    play = tmp_path / "show.yml"
    play.write_text(yaml.safe_dump([{
        "name": "Show the agent wait", "hosts": "all", "gather_facts": False,
        "tasks": [
            {"name": "Load the role's defaults", "ansible.builtin.include_vars":
             os.path.join(role, "defaults", "main.yml")},
            {"name": "Write it out", "ansible.builtin.copy": {
                "dest": str(tmp_path / "shown.json"), "mode": "0644",
                "content": "{{ {'timeout': configure_agent_timeout | int} | to_json }}"}}]}]))
    extra = ["-e", json.dumps(inventory_vars)] if inventory_vars else []
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
           "PATH": f"{os.path.dirname(venv_bin('ansible-playbook'))}:{os.environ['PATH']}"}
    res = subprocess.run([venv_bin("ansible-playbook"), "-i", "localhost,", "-c", "local",
                          *extra, str(play)], capture_output=True, text=True, env=env,
                         timeout=300, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads((tmp_path / "shown.json").read_text()) == {"timeout": expected}
