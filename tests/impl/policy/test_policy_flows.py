"""Flow events as `cni-cilium observe` shows them: decoding, filters, the bounded buffer."""

from __future__ import annotations

import pytest

from cni_cilium import bpfabi
from cni_cilium.bpfabi import FlowEvent
from cni_cilium.policy.flows import FlowBuffer, FlowFilter, describe, format_flow
from cni_cilium.policy.identity import Identity, reserved

pytestmark = pytest.mark.unit

IDENTITIES = {1: reserved(1), 2: reserved(2),
              300: Identity(300, "endpoint", ("k8s:app=web",
                                              "k8s:io.kubernetes.pod.namespace=default"))}


def event(verdict=bpfabi.FLOW_DROPPED, reason=bpfabi.DROP_POLICY_DENIED, sport=40000,
          dport=22, saddr="10.99.0.100", daddr="10.99.0.11", src=2, dst=1, proto=6, rule=3):
    return FlowEvent(5_000_000_000, saddr, daddr, sport, dport, src, dst, rule, 4, proto,
                     verdict, reason, bpfabi.POLICY_INGRESS, bpfabi.POLICY_POINT_HOST_INGRESS,
                     0x02, bpfabi.POLICY_MATCH_NONE)


def flow(**kw) -> dict:
    return describe(event(**kw), 1_700_000_000.0, IDENTITIES, {"10.99.0.11": "node1"},
                    {3: "deny-ssh: spec (ingress default deny)"}, "node1")


def test_a_drop_is_described_with_identities_names_and_cilium_reason():
    f = flow()
    assert f["verdict"] == "DROPPED" and f["dropReason"] == "policy denied"
    assert f["source"] == {"ip": "10.99.0.100", "port": 40000, "identity": 2,
                           "labels": ["reserved:world"], "name": ""}
    assert f["destination"]["name"] == "node1" and f["destination"]["labels"] == [
        "reserved:host"]
    assert f["direction"] == "INGRESS" and f["tcpFlags"] == ["SYN"]
    assert f["time"] == pytest.approx(1_700_000_005.0)
    assert f["policy"] == "deny-ssh: spec (ingress default deny)"
    line = format_flow(f)
    assert "10.99.0.100:40000 (reserved:world, ID:2) -> 10.99.0.11:22 (node1, ID:1)" in line
    assert "policy denied DROPPED (TCP Flags: SYN)" in line
    audit = format_flow(flow(verdict=bpfabi.FLOW_AUDIT, reason=bpfabi.DROP_POLICY_DENY))
    assert "INGRESS AUDIT (policy deny)" in audit
    assert describe(event(proto=17), 0, {}, {}, {}, "n")["protocol"] == "UDP"


def test_filters_from_query_parameters_name_bad_values():
    flt = FlowFilter.from_query({"verdict": "DROPPED", "from_ip": "10.99.0.0/24",
                                 "to_port": "22"})
    assert flt.matches(flow())
    assert not flt.matches(flow(dport=23))
    assert not flt.matches(flow(saddr="203.0.113.10"))
    assert not flt.matches(flow(verdict=bpfabi.FLOW_AUDIT))
    assert FlowFilter.from_query({"to_ip": "10.99.0.11"}).matches(flow())
    for query, message in (({"verdict": "DENIED"}, "verdict: invalid value 'DENIED'"),
                           ({"from_ip": "10.99.0/33"}, "from_ip: invalid IPv4 CIDR"),
                           ({"to_port": "70000"}, "to_port: invalid port '70000'")):
        with pytest.raises(ValueError, match=message):
            FlowFilter.from_query(query)


def test_the_buffer_keeps_the_most_recent_numbered_flows():
    buf = FlowBuffer(size=3)
    buf.add(flow(sport=p) for p in range(1, 6))
    assert len(buf) == 3 and buf.seen == 5
    assert [f["seq"] for f in buf.query(FlowFilter())] == [3, 4, 5]
    assert [f["seq"] for f in buf.query(FlowFilter(), since=4)] == [5]
    assert [f["source"]["port"] for f in buf.query(FlowFilter(), last=2)] == [4, 5]
