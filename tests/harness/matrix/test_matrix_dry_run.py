"""`cni-harness matrix run --dry-run`: the Vagrant plan per OS entry, nothing booted; other
providers are refused with exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cni_harness.matrix.matrix import load_matrix

pytestmark = pytest.mark.unit

CLI = os.path.join(os.path.dirname(sys.executable), "cni-harness")


def matrix_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, "matrix", "run", *args], capture_output=True, text=True,
                          timeout=120, check=False)


def test_vagrant_dry_run_plans_every_os_entry_without_booting():
    res = matrix_run("--provider", "vagrant", "--dry-run")
    assert res.returncode == 0, res.stderr
    entries = [e.name for e in load_matrix().os_entries]
    headers = [line.split(":")[0] for line in res.stdout.splitlines()
               if line and not line.startswith(" ")]
    assert headers == entries
    for block in res.stdout.split("\n\n"):
        assert "  preflight (default): " in block and "; matrix expects " in block
        assert "    node1   control-plane" in block and "    node3   worker" in block
        assert "1. vagrant up --provider libvirt" in block and "vagrant destroy" in block
    # Nothing ran: no Vagrant state, no output directory.
    assert "reports:" not in res.stdout


def test_vagrant_dry_run_json_shows_the_verdict_the_matrix_expects():
    res = matrix_run("--provider", "vagrant", "--dry-run", "--json", "--entries",
                     "ubuntu-18.04,ubuntu-20.04-hwe", "--vagrant-provider", "virtualbox")
    assert res.returncode == 0, res.stderr
    plans = {p["entry"]: p for p in json.loads(res.stdout)["entries"]}
    assert list(plans) == ["ubuntu-18.04", "ubuntu-20.04-hwe"]
    assert plans["ubuntu-18.04"]["preflight"]["supported"] is False   # 4.15: refused
    assert plans["ubuntu-20.04-hwe"]["preflight"]["supported"] is True  # the HWE kernel
    assert {p["provider"] for p in plans.values()} == {"virtualbox"}


def test_vagrant_dry_run_judges_the_profile_asked_for():
    res = matrix_run("--provider", "vagrant", "--dry-run", "--entries", "debian-11",
                     "--profiles", "extra-lb")
    assert res.returncode == 0, res.stderr
    assert "preflight (extra-lb): " in res.stdout


@pytest.mark.parametrize("args, message", [
    (["--provider", "qemu"], "--dry-run plans the Vagrant VMs of the OS entries: use it "
                             "with --provider vagrant"),
    (["--provider", "local"], "use it with --provider vagrant"),
    (["--provider", "vagrant", "--entries", "nope"], "no OS entry 'nope'; known: "),
    (["--provider", "vagrant", "--profiles", "default,extra-lb"],
     "--dry-run judges one preflight profile"),
    (["--provider", "vagrant", "--profiles", "fast"], "unknown profile 'fast'"),
])
def test_bad_dry_runs_exit_2_naming_the_problem(args, message):
    res = matrix_run(*args, "--dry-run")
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr
    assert not res.stdout
