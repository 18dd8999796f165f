"""`cni-harness matrix run --dry-run`: the Vagrant plan per OS entry, and for vagrant and vm
the suites and the inventory and nodes they would run against, nothing booted; other
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
    (["--provider", "qemu"], "--dry-run plans the VMs of the OS entries: use it "
                             "with --provider vagrant or --provider vm"),
    (["--provider", "local"], "use it with --provider vagrant or --provider vm"),
    (["--provider", "vm", "--entries", "ubuntu-22.04"], "no entry 'ubuntu-22.04' for this "
                                                        "provider; known: debian-11, debian-12"),
    (["--provider", "vm", "--suites", "nope"], "unknown suite(s) nope"),
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


def _run_lines(block: str) -> dict[str, str]:
    """The `  suites:`, `  against ...`, `  nodes:` and `  suite environment:` lines."""
    lines = {}
    for line in block.splitlines():
        for key in ("suites: ", "against inventory ", "nodes: ", "suite environment: "):
            if line.startswith("  " + key):
                lines[key.strip().rstrip(":")] = line[2 + len(key):]
    return lines


def test_vagrant_dry_run_lists_the_suites_running_against_the_vagrant_inventory():
    res = matrix_run("--provider", "vagrant", "--dry-run", "--entries", "debian-12,debian-11",
                     "--suites", "traffic,dsr,reboot")
    assert res.returncode == 0, res.stderr
    blocks = res.stdout.split("\n\n")
    assert [b.split(":")[0] for b in blocks] == ["debian-11", "debian-12"]
    for entry, block in zip(("debian-11", "debian-12"), blocks):
        lines = _run_lines(block)
        inventory = f".state/vagrant/{entry}-libvirt/inventory.yml"
        assert lines["suites"] == "traffic, dsr, reboot"
        assert lines["against inventory"].split(" (")[0].endswith(inventory)
        node_ips = [line.split()[2] for line in block.splitlines()
                    if line.startswith("    node")]            # the Vagrant plan's nodes
        assert lines["nodes"] == ", ".join(f"node{i} {ip}" for i, ip in
                                           enumerate(node_ips, 1))
        env = dict(item.split("=", 1) for item in lines["suite environment"].split())
        assert env["CNI_HARNESS_PROVIDER"] == "vagrant"
        assert env["CNI_HARNESS_INVENTORY"].endswith(inventory)
        assert env["CNI_HARNESS_MATRIX_ENTRY"] == entry


def test_vagrant_dry_run_runs_no_suite_where_preflight_stops_the_deploy():
    res = matrix_run("--provider", "vagrant", "--dry-run", "--json", "--entries",
                     "ubuntu-18.04", "--suites", "traffic")
    assert res.returncode == 0, res.stderr
    run = json.loads(res.stdout)["entries"][0]["run"]
    assert run["suites"] == [] and "preflight refuses this entry" in run["suitesSkipped"]


def test_vm_dry_run_lists_the_same_suites_against_each_debian_entry():
    res = matrix_run("--provider", "vm", "--dry-run", "--suites", "traffic,dsr,reboot")
    assert res.returncode == 0, res.stderr
    blocks = res.stdout.split("\n\n")
    assert [b.split(":")[0] for b in blocks] == ["debian-11", "debian-12"]
    for entry, block in zip(("debian-11", "debian-12"), blocks):
        lines = _run_lines(block)
        assert lines["suites"] == "traffic, dsr, reboot"
        assert lines["nodes"].startswith("node1 ") and "node3 " in lines["nodes"]
        env = dict(item.split("=", 1) for item in lines["suite environment"].split()
                   if "=" in item)
        assert env["CNI_HARNESS_PROVIDER"] == "vm"
        assert env["CNI_HARNESS_MATRIX_ENTRY"] == entry
        assert env["CNI_HARNESS_CLUSTER"].startswith("vmd" + entry.split("-")[1])
        assert f"vm cluster {env['CNI_HARNESS_CLUSTER']}, 3 nodes" in block
        assert "  provider vm: " in block                 # available, or why not


def test_vm_dry_run_json_names_availability_and_inventory():
    res = matrix_run("--provider", "vm", "--dry-run", "--json", "--entries", "debian-12")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["provider"] == "vm" and [e["entry"] for e in doc["entries"]] == ["debian-12"]
    run = doc["entries"][0]
    assert run["suites"] and run["env"]["CNI_HARNESS_PROVIDER"] == "vm"
    assert run["inventory"] and isinstance(run["available"], bool) and run["availability"]
