"""Module configuration: schema, errors that name field/value/allowed values, derived values."""

from __future__ import annotations

import pytest

from cni_cilium.config import (
    PARAMETERS,
    ConfigError,
    Settings,
    load_settings,
    replace,
    settings_from_document,
    settings_from_mapping,
)

pytestmark = pytest.mark.unit


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(text)
    return info.value.problems


def test_defaults_match_the_documented_table():
    s = settings_from_mapping({})
    assert s.tunnelMode == "Disabled"
    assert s.bpfLBMode == "Hybrid"
    assert s.masqueradeMode == "BPF"
    assert s.policyAuditMode is False
    assert s.extraLoadBalancerAlgorithmsEnabled is False
    assert s.effective_create_node_routes is True
    assert s.effective_lb_mode == "Hybrid"
    assert s.hostPortAllAddresses is False
    assert {p.name for p in PARAMETERS} == {
        "tunnelMode", "bpfLBMode", "policyAuditMode", "extraLoadBalancerAlgorithmsEnabled",
        "createNodeRoutes", "masqueradeMode", "svcSourceRangeCheck", "debugLogging",
        "labelsRegex", "hostPortAllAddresses"}


def test_host_port_all_addresses_is_a_boolean_setting():
    assert settings_from_mapping({"hostPortAllAddresses": True}).hostPortAllAddresses is True
    with pytest.raises(ConfigError) as err:
        settings_from_mapping({"hostPortAllAddresses": "yes"})
    assert err.value.problems == [
        "hostPortAllAddresses: invalid value 'yes' (str); allowed: true, false (a YAML "
        "boolean, not a string)"]


def test_module_config_document_is_read_from_spec_settings():
    s = load_settings("""
apiVersion: deckhouse.io/v1alpha1
kind: ModuleConfig
metadata: {name: cni-cilium}
spec:
  version: 1
  settings: {bpfLBMode: DSR, policyAuditMode: true}
""")
    assert s.bpfLBMode == "DSR"
    assert s.policyAuditMode is True


def test_bad_enum_names_field_value_and_allowed_values():
    (line,) = problems_of("spec: {settings: {bpfLBMode: Foo}}")
    assert "bpfLBMode" in line and "Foo" in line and "SNAT, Hybrid, DSR" in line


def test_boolean_given_as_string_is_refused():
    (line,) = problems_of("extraLoadBalancerAlgorithmsEnabled: 'true'")
    assert "extraLoadBalancerAlgorithmsEnabled" in line and "'true'" in line
    assert "true, false" in line


def test_every_problem_is_reported_once():
    lines = problems_of("tunnelMode: GRE\nfoo: 1\nmasqueradeMode: 3\nlabelsRegex: ['(']")
    assert len(lines) == 4
    assert any(line.startswith("tunnelMode:") and "Disabled, VXLAN" in line for line in lines)
    assert any(line.startswith("foo: unknown setting") for line in lines)
    assert any(line.startswith("masqueradeMode:") and "BPF, Netfilter" in line for line in lines)
    assert any(line.startswith("labelsRegex[0]:") for line in lines)


def test_yaml_syntax_error_is_a_config_error():
    (line,) = problems_of("bpfLBMode: [DSR")
    assert "not valid YAML" in line


def test_wrong_kind_and_non_mapping_settings():
    assert "kind" in problems_of("kind: Deployment\nspec: {}")[0]
    assert "expected a mapping" in problems_of("spec: {settings: [1, 2]}")[0]


def test_vxlan_forces_snat_with_a_warning():
    s = load_settings("spec: {settings: {tunnelMode: VXLAN, bpfLBMode: DSR}}")
    assert s.bpfLBMode == "DSR"
    assert s.effective_lb_mode == "SNAT"
    assert s.lb_mode_for("TCP") == "SNAT"
    assert any("effective LB mode is SNAT" in w for w in s.warnings)
    assert s.effective_create_node_routes is False


def test_vxlan_with_snat_gives_no_warning():
    assert load_settings("tunnelMode: VXLAN\nbpfLBMode: SNAT").warnings == ()


@pytest.mark.parametrize(("mode", "tcp", "udp"), [
    ("SNAT", "SNAT", "SNAT"), ("DSR", "DSR", "DSR"), ("Hybrid", "DSR", "SNAT")])
def test_hybrid_is_tcp_by_dsr_and_udp_by_snat(mode, tcp, udp):
    s = settings_from_mapping({"bpfLBMode": mode})
    assert (s.lb_mode_for("TCP"), s.lb_mode_for("udp")) == (tcp, udp)


def test_explicit_create_node_routes_wins():
    s = settings_from_mapping({"tunnelMode": "VXLAN", "createNodeRoutes": True})
    assert s.effective_create_node_routes is True


def test_effective_view_round_trips():
    s = settings_from_document({"spec": {"settings": {"labelsRegex": ["^app$"]}}})
    eff = s.effective()
    assert eff["settings"]["labelsRegex"] == ["^app$"]
    assert settings_from_mapping(eff["settings"]) == s
    assert eff["effective"]["lbModeUDP"] == "SNAT"


def test_replace_revalidates():
    s = Settings()
    assert replace(s, tunnelMode="VXLAN").effective_lb_mode == "SNAT"
    with pytest.raises(ConfigError):
        replace(s, tunnelMode="bogus")
