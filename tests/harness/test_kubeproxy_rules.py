"""kube-proxy's iptables-mode ruleset as the benchmark's peer programs it (pure generator)."""

from __future__ import annotations

import dataclasses
import re

import pytest

from cni_cilium.manifests import parse_documents
from cni_harness.kubeproxy_rules import iptables_restore_text, service_ports

pytestmark = pytest.mark.unit

DOCS = [
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
     "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.5",
              "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30001}]},
     "status": {"loadBalancer": {"ingress": [{"ip": "10.97.0.1"}]}}},
    {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
     "metadata": {"name": "web-1", "namespace": "default",
                  "labels": {"kubernetes.io/service-name": "web"}},
     "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
     "endpoints": [{"addresses": [f"10.100.2.{i}"], "conditions": {"ready": True}}
                   for i in (4, 2, 3)] + [
                  {"addresses": ["10.100.2.9"], "conditions": {"ready": False}}]},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "empty", "namespace": "x"},
     "spec": {"clusterIP": "10.96.0.6", "ports": [{"port": 53, "protocol": "UDP"}]}},
]


def ports():
    objects, problems = parse_documents(DOCS, "test")
    assert not problems
    return service_ports([o for o in objects if o.kind == "Service"],
                         [o for o in objects if o.kind == "EndpointSlice"])


def test_service_ports_carry_frontends_and_ready_endpoints_only():
    web, empty = ports()
    assert (web.name, web.cluster_ip, web.port, web.node_port, web.external_ips) == (
        "default/web:http", "10.96.0.5", 80, 30001, ("10.97.0.1",))
    assert web.endpoints == (("10.100.2.2", 8080), ("10.100.2.3", 8080), ("10.100.2.4", 8080))
    assert empty.endpoints == () and empty.node_port is None


def test_ruleset_has_kube_proxys_chains_probabilities_and_masquerade():
    text = iptables_restore_text(ports(), "10.100.0.0/16")
    lines = text.splitlines()
    assert lines[0] == "*nat" and lines[-1] == "COMMIT" and lines.count("COMMIT") == 2
    svc = re.search(r"-j (KUBE-SVC-[A-Z2-7]{16})", text).group(1)
    ext = re.search(r"-j (KUBE-EXT-[A-Z2-7]{16})", text).group(1)
    jumps = [ln for ln in lines if ln.startswith(f"-A {svc} ") and "KUBE-SEP" in ln]
    assert [re.search(r"--probability (\S+)", ln).group(1) if "statistic" in ln else None
            for ln in jumps] == ["0.33333333333", "0.50000000000", None]
    assert "-A KUBE-SERVICES -d 10.96.0.5/32 -p tcp" in text
    assert f"--dport 80 -j {svc}" in text
    assert "-A KUBE-SERVICES -d 10.97.0.1/32 -p tcp" in text and f"-j {ext}" in text
    assert "-A KUBE-NODEPORTS -p tcp" in text and f"--dport 30001 -j {ext}" in text
    assert f"-A {ext} -m comment" in text and f"-A {ext} -j {svc}" in text
    assert "-j DNAT --to-destination 10.100.2.3:8080" in text
    assert "-j MASQUERADE --random-fully" in text
    assert f"-A {svc} ! -s 10.100.0.0/16 -d 10.96.0.5/32" in text
    # The NodePort jump is the last rule of KUBE-SERVICES; a service without endpoints
    # rejects; every chain used is declared once.
    services = [ln for ln in text.split("*filter")[0].splitlines()
                if ln.startswith("-A KUBE-SERVICES")]
    assert "--dst-type LOCAL -j KUBE-NODEPORTS" in services[-1]
    nat, filt = text.split("*filter")
    assert "REJECT" not in nat               # the nat table has no REJECT target
    assert "-A KUBE-SERVICES -d 10.96.0.6/32 -p udp" in filt and "-j REJECT" in filt
    assert "-A FORWARD -m conntrack --ctstate NEW" in filt
    for table in (nat, filt):
        declared = [ln[1:].split()[0] for ln in table.splitlines() if ln.startswith(":")]
        assert len(declared) == len(set(declared))
        assert set(re.findall(r"-[AjJ] (KUBE-[A-Z-]+[A-Z2-7]*)", table)) <= set(declared)


def test_services_keep_the_order_given_so_the_measured_one_can_go_last():
    web, _empty = ports()
    other = dataclasses.replace(web, service="default/other", cluster_ip="10.96.0.7")
    text = iptables_restore_text([web, other], "10.100.0.0/16")
    flipped = iptables_restore_text([other, web], "10.100.0.0/16")
    assert text.index("-d 10.96.0.5/32") < text.index("-d 10.96.0.7/32")
    assert flipped.index("-d 10.96.0.7/32") < flipped.index("-d 10.96.0.5/32")
