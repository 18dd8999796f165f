"""Which conntrack entries pin connections to backends that are gone (pure)."""

from __future__ import annotations

import pytest

from cni_cilium.bpfabi import CT_NAT_OUT, CT_REPLY, CT_SERVICE, CtEntry, CtKey, Frontend
from cni_cilium.ctgc import live_backends, stale_service_keys
from cni_cilium.translate import BackendView, FrontendView

pytestmark = pytest.mark.unit


def view(proto: str, *backends: tuple[str, int, str]) -> FrontendView:
    return FrontendView("default/web", "p", "NodePort", Frontend("10.99.0.11", 30000, proto), 0,
                        tuple(BackendView(a, p, s, False) for a, p, s in backends), (),
                        "random", "DSR", "Cluster")


def entry(kind: int, proto: str, nat: tuple[str, int], sport: int = 40000) -> tuple[bytes, bytes]:
    key = CtKey("10.99.0.100", "10.99.0.11", sport, 30000, proto, kind)
    return key.encode(), CtEntry(nat[0], nat[1], 0, 100, 1, 1, 60).encode()


def test_live_backends_include_terminating_ones_per_protocol():
    live = live_backends([view("UDP", ("10.100.2.4", 8080, "active"),
                               ("10.100.2.5", 8080, "terminating"))])
    assert live == {("10.100.2.4", 8080, "UDP"), ("10.100.2.5", 8080, "UDP")}


def test_only_service_entries_to_a_gone_backend_are_stale():
    live = live_backends([view("UDP", ("10.100.2.4", 8080, "active")),
                          view("TCP", ("10.100.2.3", 8080, "active"))])
    to_live = entry(CT_SERVICE, "UDP", ("10.100.2.4", 8080), 1)
    to_gone = entry(CT_SERVICE, "UDP", ("10.100.2.3", 8080), 2)    # that address is TCP only
    other_port = entry(CT_SERVICE, "UDP", ("10.100.2.4", 9090), 3)
    reply = entry(CT_REPLY, "UDP", ("10.100.2.3", 8080), 4)         # never a backend choice
    nat = entry(CT_NAT_OUT, "TCP", ("10.99.0.11", 61000), 5)
    stale = stale_service_keys([to_live, to_gone, other_port, reply, nat], live)
    assert stale == [to_gone[0], other_port[0]]
