"""Live preflight probes against the running kernel: they really load and attach things."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from cni_cilium import probes
from cni_cilium.config import settings_from_mapping

pytestmark = pytest.mark.probe


def test_bcc_probe_really_loads_a_program():
    check = probes.probe_bcc()
    assert check.status == "pass", check.message
    assert "fd" in check.message


def test_clsact_and_vxlan_probes_leave_the_host_untouched():
    before = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert probes.probe_clsact().status == "pass"
    assert probes.probe_vxlan(settings_from_mapping({"tunnelMode": "VXLAN"})).status == "pass"
    assert probes.probe_vxlan(settings_from_mapping({})).status == "skip"
    after = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert before == after


def test_bpffs_probe():
    assert probes.probe_bpffs().status == "pass"


def test_elastic_probe_sees_a_fake_elastic_process(tmp_path):
    fake_proc = tmp_path / "proc"
    (fake_proc / "4242").mkdir(parents=True)
    (fake_proc / "4242" / "comm").write_text("elastic-endpoin\n")
    check = probes.probe_elastic(str(fake_proc))
    assert check.status == "warn"
    assert "4242" in check.message
    assert probes.probe_elastic(str(tmp_path / "empty")).status in ("pass", "warn")


def test_preflight_json_on_this_machine_reports_supported(venv_bin):
    res = subprocess.run([venv_bin("cni-cilium"), "preflight", "--json"], capture_output=True,
                         text=True, timeout=120, check=False)
    doc = json.loads(res.stdout)
    assert res.returncode == 0, doc
    assert doc["supported"] is True
    assert doc["kernelRelease"] == os.uname().release
    names = {c["name"]: c["status"] for c in doc["checks"]}
    assert names["probe:bcc"] == "pass"
    assert names["probe:clsact"] == "pass"
