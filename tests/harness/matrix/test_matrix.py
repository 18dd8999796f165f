"""matrix.yaml: schema check and the preflight verdict of every entry."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml

from cni_cilium.config import settings_from_mapping
from cni_cilium.preflight import evaluate, parse_os_release
from cni_harness.matrix.matrix import DEFAULT_MATRIX, MatrixError, load_matrix, parse_matrix

pytestmark = pytest.mark.unit

MATRIX = load_matrix()


def raw() -> dict:
    with open(DEFAULT_MATRIX, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def test_matrix_covers_the_documented_entries():
    names = {e.name for e in MATRIX.os_entries}
    assert {"ubuntu-18.04", "ubuntu-20.04", "ubuntu-20.04-hwe", "ubuntu-22.04", "ubuntu-24.04",
            "debian-11", "debian-12", "centos-7", "centos-7-elrepo", "centos-8",
            "centos-8-elrepo"} <= names
    assert {e.version for e in MATRIX.kernel_entries} == {"5.10", "6.1", "6.12", "7.2", "host"}
    assert MATRIX.kernel_entry("5.10").expect["extra-lb"] == "unsupported"


@pytest.mark.parametrize("entry", MATRIX.os_entries, ids=lambda e: e.name)
@pytest.mark.parametrize("profile", sorted(MATRIX.profiles))
def test_preflight_verdict_equals_matrix_expectation_os(entry, profile):
    settings = settings_from_mapping(MATRIX.profiles[profile])
    verdict = evaluate(entry.os_release, entry.kernel_release, settings)
    expected = entry.expect[profile] == "supported"
    assert verdict.supported is expected, [c.to_dict() for c in verdict.checks]


@pytest.mark.parametrize("entry", MATRIX.kernel_entries, ids=lambda e: e.name)
@pytest.mark.parametrize("profile", sorted(MATRIX.profiles))
def test_preflight_verdict_equals_matrix_expectation_kernel(entry, profile):
    # Kernel entries run over this host's Debian 12 root filesystem.
    with open("/etc/os-release", encoding="utf-8") as fh:
        host_os = parse_os_release(fh.read())
    release = os.uname().release if entry.version == "host" else f"{entry.version}.0-1-amd64"
    verdict = evaluate(host_os, release, settings_from_mapping(MATRIX.profiles[profile]))
    assert verdict.supported is (entry.expect[profile] == "supported")


def test_schema_rejects_bad_entries_with_paths():
    doc = raw()
    doc["os_entries"][0]["expect"]["default"] = "maybe"
    doc["kernel_entries"][0]["version"] = "five"
    del doc["os_entries"][1]["boxes"]
    with pytest.raises(MatrixError) as info:
        parse_matrix(doc)
    text = "\n".join(info.value.problems)
    assert "os_entries.0.expect.default" in text
    assert "kernel_entries.0.version" in text
    assert "os_entries.1" in text and "boxes" in text


def test_expectations_must_name_defined_profiles_and_names_be_unique():
    doc = raw()
    doc["os_entries"][0]["expect"]["nope"] = "supported"
    doc["os_entries"][2]["name"] = doc["os_entries"][3]["name"]
    with pytest.raises(MatrixError) as info:
        parse_matrix(doc)
    text = "\n".join(info.value.problems)
    assert "unknown profiles ['nope']" in text
    assert "duplicate entry" in text


def test_unknown_entry_lookup_names_known_ones():
    with pytest.raises(KeyError, match=r"debian-5\.10"):
        MATRIX.kernel_entry("4.19")


def test_cli_validates_the_shipped_matrix(venv_bin):
    res = subprocess.run([venv_bin("cni-harness"), "matrix", "validate"], capture_output=True,
                         text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert "valid" in res.stdout
