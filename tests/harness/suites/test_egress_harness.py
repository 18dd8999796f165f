"""The harness pieces for the egress and hostPort suites (pure): failover figures from a
request loop, pod port arguments with hostPort/hostIP, egress objects in the API server."""

from __future__ import annotations

import json

import pytest

from cni_harness.cluster.pods import PodError, parse_port
from cni_harness.suites.failover import Phase, failover_figures, parse_loop

pytestmark = pytest.mark.unit


def line(start: float, peer: str | None, took: float = 0.05) -> dict:
    out = {"start": start, "end": start + took}
    if peer is None:
        out["error"] = "TimeoutError: timed out"
    else:
        out["peer"] = peer
    return out


LOOP = [line(9.0, "10.99.0.13"), line(10.2, "10.99.0.13"), line(10.4, None, 0.5),
        line(11.0, None, 0.5), line(11.6, "10.99.0.12"), line(11.8, "10.99.0.12"),
        line(30.0, "10.99.0.12"), line(30.2, None, 0.5), line(30.8, "10.99.0.12")]


def test_parse_loop_skips_cut_lines():
    text = "\n".join(json.dumps(x) for x in LOOP[:2]) + '\n{"start": 12, "pe'
    assert parse_loop(text) == LOOP[:2]


def test_figures_measure_from_the_event_to_the_first_request_through_the_new_gateway():
    got = failover_figures(LOOP, 10.0, lambda x: x["peer"] == "10.99.0.12",
                           [Phase("failover", 10.0, 25.0), Phase("return", 25.0, 40.0)])
    assert got["switchedAfter"] == 1.65          # 11.6 + 0.05 - 10.0
    assert got["longestOutage"] == 1.25          # 10.4 .. 11.65
    assert got["failed"] == 3 and got["requests"] == 8 and not got["stillFailingAtEnd"]
    assert got["failover"] == {"requests": 5, "failed": 2, "peers": ["10.99.0.12", "10.99.0.13"],
                               "errors": ["TimeoutError: timed out"]}
    assert got["return"]["failed"] == 1


def test_no_switch_and_a_loop_ending_in_failures_are_reported():
    got = failover_figures(LOOP[:4], 10.0, lambda x: x["peer"] == "10.99.0.12")
    assert got["switchedAfter"] is None and got["stillFailingAtEnd"]
    assert got["longestOutage"] == 1.1           # 10.4 .. 11.5


@pytest.mark.parametrize("text,port", [
    ("http=8080:8081", {"containerPort": 8080, "protocol": "TCP", "name": "http",
                        "hostPort": 8081}),
    ("53:5353@198.51.100.12/udp", {"containerPort": 53, "protocol": "UDP", "hostPort": 5353,
                                   "hostIP": "198.51.100.12"}),
])
def test_pod_ports_take_a_host_port_and_host_ip(text, port):
    assert parse_port(text) == port


def test_a_host_ip_without_a_host_port_is_refused():
    with pytest.raises(PodError, match="HOSTIP only with HOSTPORT"):
        parse_port("8080@10.99.0.12")


def test_the_api_server_stores_egress_objects_as_cluster_scoped_files(tmp_path, monkeypatch):
    from cni_harness.cluster.apiserver import ApiServer

    monkeypatch.setenv("CNI_HARNESS_STATE_DIR", str(tmp_path))
    api = ApiServer(str(tmp_path / "egw"), "egw")
    gateway = {"apiVersion": "network.deckhouse.io/v1alpha1", "kind": "EgressGateway",
               "metadata": {"name": "gw", "namespace": "ignored"},
               "spec": {"nodeSelector": {}, "sourceIP": {
                   "mode": "VirtualIPAddress", "virtualIPAddress": {"ip": "10.99.0.250"}}}}
    policy = {"apiVersion": "network.deckhouse.io/v1alpha1", "kind": "EgressGatewayPolicy",
              "metadata": {"name": "pol"},
              "spec": {"egressGatewayName": "gw", "destinationCIDRs": ["0.0.0.0/0"],
                       "selectors": [{"podSelector": {"matchLabels": {"app": "a"}}}]}}
    bad = {**policy, "metadata": {"name": "bad"}, "spec": {**policy["spec"],
                                                           "destinationCIDRs": []}}
    report = api.apply([gateway, policy, bad], "test")
    assert report.applied == ["EgressGateway gw", "EgressGatewayPolicy pol"]
    assert report.problems == ["EgressGatewayPolicy bad: spec.destinationCIDRs: at least one "
                               "IPv4 CIDR is required (0.0.0.0/0: everywhere outside the "
                               "cluster)"]
    assert sorted(api.desired_files()) == ["egressgateway-gw.yaml",
                                           "egressgatewaypolicy-pol.yaml"]
