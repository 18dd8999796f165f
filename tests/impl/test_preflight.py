"""Preflight rules: a pure function of (os-release, kernel release, settings)."""

from __future__ import annotations

import pytest

from cni_cilium.config import settings_from_mapping
from cni_cilium.preflight import (
    FAIL,
    evaluate,
    extra_lb_refusal,
    kernel_version,
    parse_os_release,
)

pytestmark = pytest.mark.unit

DEFAULT = settings_from_mapping({})
EXTRA_LB = settings_from_mapping({"extraLoadBalancerAlgorithmsEnabled": True})


def osr(os_id: str, version: str) -> dict[str, str]:
    return {"ID": os_id, "VERSION_ID": version, "PRETTY_NAME": f"{os_id} {version}"}


def failures(verdict) -> list[str]:
    return [f"{c.name}: {c.message} / {c.remedy}" for c in verdict.checks if c.status == FAIL]


def test_parse_os_release_handles_quotes_and_comments():
    text = ('# comment\nNAME="Ubuntu"\nVERSION_ID="20.04"\nID=ubuntu\n'
            'PRETTY_NAME="Ubuntu 20.04.6 LTS"\n')
    assert parse_os_release(text) == {
        "NAME": "Ubuntu", "VERSION_ID": "20.04", "ID": "ubuntu",
        "PRETTY_NAME": "Ubuntu 20.04.6 LTS"}


@pytest.mark.parametrize(("release", "version"), [
    ("5.15.0-91-generic", (5, 15, 0)), ("3.10.0-1160.el7.x86_64", (3, 10, 0)),
    ("6.18.44-fc-v445", (6, 18, 44)), ("7.2", (7, 2, 0))])
def test_kernel_version(release, version):
    assert kernel_version(release) == version


def test_garbage_kernel_release_is_a_failure_not_a_crash():
    verdict = evaluate(osr("debian", "12"), "not-a-kernel", DEFAULT)
    assert not verdict.supported
    assert "not-a-kernel" in failures(verdict)[0]


def test_ubuntu_1804_unsupported():
    v = evaluate(osr("ubuntu", "18.04"), "4.15.0-213-generic", DEFAULT)
    assert not v.supported
    assert any(line.startswith("os:") for line in failures(v))


def test_ubuntu_2004_stock_names_the_hwe_package():
    v = evaluate(osr("ubuntu", "20.04"), "5.4.0-169-generic", DEFAULT)
    assert not v.supported
    assert any("linux-generic-hwe-20.04" in line for line in failures(v))


def test_ubuntu_2004_hwe_supported():
    assert evaluate(osr("ubuntu", "20.04"), "5.15.0-91-generic", DEFAULT).supported


def test_centos7_stock_names_elrepo():
    v = evaluate(osr("centos", "7"), "3.10.0-1160.el7.x86_64", DEFAULT)
    assert not v.supported
    assert any("elrepo" in line.lower() and "kernel-ml" in line for line in failures(v))


def test_centos7_with_kernel_ml_supported():
    assert evaluate(osr("centos", "7"), "6.9.7-1.el7.elrepo.x86_64", DEFAULT).supported


def test_centos8_stock_unsupported():
    assert not evaluate(osr("centos", "8"), "4.18.0-348.el8.x86_64", DEFAULT).supported


def test_debian11_supported_but_not_with_extra_lb_algorithms():
    assert evaluate(osr("debian", "11"), "5.10.0-30-amd64", DEFAULT).supported
    v = evaluate(osr("debian", "11"), "5.10.0-30-amd64", EXTRA_LB)
    assert not v.supported
    (line,) = failures(v)
    assert "5.15" in line and "extraLoadBalancerAlgorithmsEnabled" in line


def test_kernel_below_58_fails_even_on_a_supported_os():
    v = evaluate(osr("debian", "12"), "5.4.0", DEFAULT)
    assert [c.name for c in v.checks if c.status == FAIL] == ["kernel"]


def test_unknown_os_is_a_warning_only():
    v = evaluate(osr("arch", ""), "6.6.1-arch1", DEFAULT)
    assert v.supported
    assert any(c.name == "os" and c.status == "warn" for c in v.checks)


def test_config_warnings_are_carried_into_preflight():
    s = settings_from_mapping({"tunnelMode": "VXLAN", "bpfLBMode": "DSR"})
    v = evaluate(osr("debian", "12"), "6.1.0-25-amd64", s)
    assert v.supported
    assert any(c.name == "config" and "SNAT" in c.message for c in v.checks)


@pytest.mark.parametrize("release,refused", [("5.10.0-32-amd64", True), ("5.14.21", True),
                                             ("5.15.0-91-generic", False), ("6.1.0-50", False)])
def test_the_agent_refuses_the_extra_lb_algorithms_below_5_15(release, refused):
    reason = extra_lb_refusal(EXTRA_LB, release)
    assert (reason is not None) == refused
    if refused:
        assert reason == ("extraLoadBalancerAlgorithmsEnabled needs kernel >= 5.15; running "
                          f"{release}")
    assert extra_lb_refusal(settings_from_mapping({}), "5.10.0") is None
