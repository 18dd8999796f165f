"""The `cni-cilium` command line as a user runs it (the installed console script)."""

from __future__ import annotations

import json
import subprocess

import pytest

pytestmark = pytest.mark.unit


def run(venv_bin, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([venv_bin("cni-cilium"), *args], capture_output=True, text=True,
                          check=False, timeout=60)


def write(tmp_path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


def test_help_lists_commands(venv_bin):
    res = run(venv_bin, "--help")
    assert res.returncode == 0
    assert "preflight" in res.stdout and "config" in res.stdout


def test_config_validate_bad_enum_exits_2_naming_field_value_allowed(venv_bin, tmp_path):
    res = run(venv_bin, "config", "validate", write(tmp_path, "spec: {settings: {bpfLBMode: Foo}}"))
    assert res.returncode == 2
    assert res.stdout == ""
    (line,) = res.stderr.strip().splitlines()
    assert "bpfLBMode" in line and "Foo" in line and "SNAT, Hybrid, DSR" in line


def test_config_validate_vxlan_dsr_reports_snat_with_warning(venv_bin, tmp_path):
    path = write(tmp_path, "spec: {settings: {tunnelMode: VXLAN, bpfLBMode: DSR}}")
    res = run(venv_bin, "config", "validate", path)
    assert res.returncode == 0
    assert "lbMode: \"SNAT\"" in res.stdout
    assert "warning:" in res.stderr and "SNAT" in res.stderr
    doc = json.loads(run(venv_bin, "config", "validate", "--json", path).stdout)
    assert doc["effective"]["lbMode"] == "SNAT"
    assert doc["warnings"]


def test_config_validate_missing_file(venv_bin, tmp_path):
    res = run(venv_bin, "config", "validate", str(tmp_path / "nope.yaml"))
    assert res.returncode == 2
    assert "cannot read" in res.stderr


def rules_only(venv_bin, tmp_path, os_release: str, kernel: str, *extra: str):
    path = tmp_path / "os-release"
    path.write_text(os_release)
    res = run(venv_bin, "preflight", "--json", "--os-release", str(path),
              "--kernel-release", kernel, *extra)
    return res.returncode, json.loads(res.stdout)


def test_preflight_for_another_machine_uses_rules_only(venv_bin, tmp_path):
    rc, doc = rules_only(venv_bin, tmp_path, 'ID=ubuntu\nVERSION_ID="20.04"\n',
                         "5.4.0-169-generic")
    assert rc == 1
    assert doc["supported"] is False and doc["liveProbes"] is False
    assert any("linux-generic-hwe-20.04" in c["remedy"] for c in doc["checks"])
    assert not any(c["name"].startswith("probe:") for c in doc["checks"])


def test_preflight_extra_lb_on_debian11_refused(venv_bin, tmp_path):
    cfg = write(tmp_path, "extraLoadBalancerAlgorithmsEnabled: true")
    rc, doc = rules_only(venv_bin, tmp_path, "ID=debian\nVERSION_ID=11\n", "5.10.0-30-amd64",
                         "--config", cfg)
    assert rc == 1
    assert [c["name"] for c in doc["checks"] if c["status"] == "fail"] == ["extra-lb-algorithms"]


def test_preflight_half_given_target_is_a_usage_error(venv_bin):
    res = run(venv_bin, "preflight", "--kernel-release", "5.10")
    assert res.returncode == 2
    assert "--os-release" in res.stderr
