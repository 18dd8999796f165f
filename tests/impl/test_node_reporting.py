"""What the agent reports: Prometheus text, health-check answers, conntrack listings."""

from __future__ import annotations

import json

import pytest

from cni_cilium.bpfabi import CT_F_LOCAL_BACKEND, CT_NAT_IN, CT_SERVICE, CtEntry, CtKey
from cni_cilium.healthcheck import http_response
from cni_cilium.metrics import render_metrics
from cni_cilium.nodecli import ct_rows
from cni_cilium.translate import HealthCheck

pytestmark = pytest.mark.unit

STATUS = {
    "restarts": 2, "selfHeals": 3, "rebootRequired": False,
    "bpf": {"compileSeconds": 1.25},
    "maps": {"ct4": {"entries": 10, "capacity": 262144, "fill": 0.0}},
    "devices": {"eth0": {"attached": {"ingress": {"program": "from_netdev", "ok": True},
                                      "egress": {"program": "to_netdev", "ok": False}}}},
    "endpoints": [{}, {}], "services": {"services": 4, "frontends": 9},
    "problems": ["x"], "reconcile": {"count": 5, "errors": 1},
}


def test_metrics_expose_restarts_self_heals_attachments_maps_and_drops():
    text = render_metrics(STATUS, {"svc_new": 7, "drop_no_backend": 2})
    lines = set(text.splitlines())
    for expected in (
            "cni_cilium_agent_restarts_total 2",
            "cni_cilium_self_heal_total 3",
            "cni_cilium_reboot_required 0",
            "cni_cilium_bpf_compile_seconds 1.25",
            'cni_cilium_bpf_map_entries{map="ct4"} 10',
            'cni_cilium_program_attached{device="eth0",direction="egress",program="to_netdev"} 0',
            'cni_cilium_program_attached{device="eth0",direction="ingress",program="from_netdev"}'
            " 1",
            "cni_cilium_endpoints 2",
            "cni_cilium_services 4",
            'cni_cilium_datapath_events_total{event="svc_new"} 7',
            'cni_cilium_datapath_drops_total{reason="no_backend"} 2',
            "# TYPE cni_cilium_self_heal_total counter"):
        assert expected in lines, expected


def test_metrics_expose_the_tunnel_mode_in_effect_and_the_pending_one():
    status = {**STATUS, "rebootRequired": True,
              "modes": {"tunnelMode": "Disabled", "tunnelModePending": "VXLAN"}}
    lines = set(render_metrics(status, {}).splitlines())
    assert "cni_cilium_reboot_required 1" in lines
    assert 'cni_cilium_tunnel_mode{mode="Disabled",state="in_effect"} 1' in lines
    assert 'cni_cilium_tunnel_mode{mode="VXLAN",state="pending_reboot"} 1' in lines


def _split(raw: bytes) -> tuple[str, dict, dict]:
    head, body = raw.split(b"\r\n\r\n", 1)
    status, *headers = head.decode().split("\r\n")
    return status, dict(h.split(": ", 1) for h in headers), json.loads(body)


def test_health_check_answers_200_with_local_endpoints_and_503_without():
    status, headers, body = _split(http_response(HealthCheck("default", "web", 2)))
    assert status == "HTTP/1.1 200 OK"
    assert headers["Content-Type"] == "application/json"
    assert body == {"service": {"namespace": "default", "name": "web"}, "localEndpoints": 2,
                    "serviceProxyHealthy": True}
    status, _headers, body = _split(http_response(HealthCheck("default", "web", 0)))
    assert status == "HTTP/1.1 503 Service Unavailable"
    assert body["localEndpoints"] == 0


def test_ct_rows_decode_kinds_translations_and_lifetimes():
    items = [
        (CtKey("10.99.0.100", "10.99.0.11", 40000, 30080, "TCP", CT_SERVICE).encode(),
         CtEntry("10.100.1.5", 8080, CT_F_LOCAL_BACKEND, 1100, 990, 12, 3400).encode()),
        (CtKey("10.100.2.7", "10.99.0.11", 8080, 61234, "TCP", CT_NAT_IN).encode(),
         CtEntry("10.99.0.100", 40001, 0, 900, 995, 1, 60).encode()),
    ]
    rows = ct_rows(items, now=1000)
    assert rows[0] == {"kind": "service", "protocol": "TCP", "source": "10.99.0.100:40000",
                       "destination": "10.99.0.11:30080", "nat": "10.100.1.5:8080",
                       "flags": ["local-backend"], "expiresIn": 100, "ageSeconds": 10,
                       "packets": 12, "bytes": 3400}
    assert rows[1]["kind"] == "nat-in" and rows[1]["expiresIn"] == -100


def test_service_list_marks_frontends_that_fall_back_from_dsr(capsys):
    from cni_cilium.nodecli import print_services

    backend = {"address": "10.99.0.12", "port": 8081, "state": "active", "local": False}
    doc = {"frontends": [
        {"frontend": "10.99.0.11:30001/TCP", "type": "NodePort", "service": "default/host",
         "algorithm": "random", "lbMode": "SNAT", "externalTrafficPolicy": "Cluster",
         "lbModeFallback": "host-network endpoints (cilium#10789)", "backends": [backend]},
        {"frontend": "10.99.0.11:30002/TCP", "type": "NodePort", "service": "default/web",
         "algorithm": "random", "lbMode": "DSR", "externalTrafficPolicy": "Cluster",
         "lbModeFallback": None, "backends": []}]}
    print_services(doc)
    out = capsys.readouterr().out.splitlines()
    assert "SNAT*" in out[1] and "DSR " in out[2] and "(none)" in out[2]
    assert out[-1] == "* default/host: SNAT instead of DSR: host-network endpoints (cilium#10789)"


def test_status_and_metrics_say_where_the_datapath_came_from():
    from cni_cilium.datapath.bpfcache import origin_line

    cached = {"origin": "cache", "compileSeconds": 0.0, "loadSeconds": 0.21,
              "cache": {"result": "hit", "key": "ab" * 32, "file": "/x", "reason": ""}}
    compiled = {"origin": "compile", "compileSeconds": 27.9, "loadSeconds": 0.3,
                "cache": {"result": "stored", "key": "ab" * 32, "file": "/x",
                          "reason": "invalid: digest mismatch (the file was changed)"}}
    lines = set(render_metrics(dict(STATUS, bpf=cached), {}).splitlines())
    assert 'cni_cilium_bpf_datapath_origin{cache="hit",origin="cache"} 1' in lines
    assert "cni_cilium_bpf_compile_seconds 0" in lines
    assert "cni_cilium_bpf_load_seconds 0.21" in lines
    lines = set(render_metrics(dict(STATUS, bpf=compiled), {}).splitlines())
    assert 'cni_cilium_bpf_datapath_origin{cache="stored",origin="compile"} 1' in lines
    assert "cni_cilium_bpf_compile_seconds 27.9" in lines
    assert origin_line(cached) == "loaded from the compile cache in 0.21 s (no compile; /x)"
    assert origin_line(compiled) == ("compiled in 27.9 s, loaded in 0.3 s (compile cache: "
                                     "stored: invalid: digest mismatch (the file was changed))")
def test_service_list_says_which_algorithm_is_in_effect_and_why(capsys):
    from cni_cilium.nodecli import print_services

    def backend(addr):
        return {"address": addr, "port": 8080, "state": "active", "local": False}

    common = {"type": "LoadBalancer", "lbMode": "DSR", "externalTrafficPolicy": "Cluster",
              "lbModeFallback": None, "backends": [backend("10.100.1.5"), backend("10.100.2.5")]}
    doc = {"frontends": [
        {**common, "frontend": "10.97.0.3:80/TCP", "service": "default/mg", "algorithm": "random",
         "algorithmRequested": "maglev",
         "algorithmReason": "extraLoadBalancerAlgorithmsEnabled is false",
         "sessionAffinity": {"type": "ClientIP", "timeoutSeconds": 10800},
         "sourceRanges": ["10.99.0.100/32"], "sourceRangeCheck": "enforced"},
        {**common, "frontend": "10.97.0.4:80/TCP", "service": "default/lc",
         "algorithm": "least-conn", "activeConnections": {"10.100.1.5:8080": 2,
                                                          "10.100.2.5:8080": 0}},
        {**common, "frontend": "10.97.0.5:80/TCP", "service": "default/mg2", "algorithm": "maglev",
         "maglev": {"tableSize": 251, "table": "10.96.0.5:80/TCP",
                    "shares": {"10.100.1.5:8080": 126, "10.100.2.5:8080": 125}}}]}
    print_services(doc)
    out = capsys.readouterr().out.splitlines()
    assert "random*" in out[1] and "ClientIP 10800s" in out[1]
    assert "10.100.1.5:8080 (active, 2 active)" in out[2]
    assert "10.100.2.5:8080 (active, 125 entries)" in out[3]
    assert out[4] == ("* default/mg: lb-algorithm 'maglev' not in effect "
                      "(extraLoadBalancerAlgorithmsEnabled is false); random is used")
    assert out[5] == "  10.97.0.3:80/TCP source ranges 10.99.0.100/32: enforced"
