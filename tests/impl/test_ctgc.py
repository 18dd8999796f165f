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


def test_affinity_entries_die_with_their_backend_leaving_the_frontend():
    from cni_cilium.bpfabi import Affinity, AffinityKey, Backend
    from cni_cilium.ctgc import affinity_pairs, stale_affinity_keys

    fe = Frontend("10.96.0.10", 80, "TCP")
    kept = FrontendView("default/aff", "http", "ClusterIP", fe, 0, (),
                        (Backend("10.100.1.5", 8080), Backend("10.100.2.5", 8080)), "random",
                        "-", "-", affinity_timeout=60)
    without = FrontendView("default/plain", "http", "ClusterIP",
                           Frontend("10.96.0.11", 80, "TCP"), 0, (),
                           (Backend("10.100.1.5", 8080),), "random", "-", "-")
    pairs = affinity_pairs([kept, without])
    assert pairs == {(fe, "10.100.1.5", 8080), (fe, "10.100.2.5", 8080)}

    def item(frontend, client, addr):
        return (AffinityKey(frontend, client).encode(),
                Affinity(Backend(addr, 8080, True), 100).encode())

    live = item(fe, "10.99.0.100", "10.100.1.5")
    gone = item(fe, "10.99.0.101", "10.100.3.5")
    other_fe = item(Frontend("10.96.0.11", 80, "TCP"), "10.99.0.100", "10.100.1.5")
    assert stale_affinity_keys([live, gone, other_fe], pairs) == [gone[0], other_fe[0]]


def counted(sport: int, backend: str, expires: int, flags: int, kind: int = CT_SERVICE,
            proto: str = "TCP") -> tuple[bytes, bytes]:
    key = CtKey("10.99.0.100", "10.99.0.11", sport, 30000, proto, kind)
    return key.encode(), CtEntry(backend, 8080, flags, expires, 1, 1, 60).encode()


def test_recount_counts_live_counted_entries_and_lists_expired_ones():
    from cni_cilium.bpfabi import CT_F_CLOSING, CT_F_COUNTED, BackendKey
    from cni_cilium.ctgc import recount

    items = [counted(1, "10.100.1.5", 200, CT_F_COUNTED),
             counted(2, "10.100.1.5", 200, CT_F_COUNTED),
             counted(3, "10.100.2.5", 200, CT_F_COUNTED),
             counted(4, "10.100.2.5", 50, CT_F_COUNTED),             # expired, still counted
             counted(5, "10.100.2.5", 200, 0),                         # not a least-conn one
             counted(6, "10.100.2.5", 200, CT_F_COUNTED | CT_F_CLOSING),
             counted(7, "10.100.2.5", 200, CT_F_COUNTED, kind=CT_REPLY)]
    found = recount(items, now=100)
    assert found.live == {BackendKey("10.100.1.5", 8080, "TCP").encode(): 2,
                          BackendKey("10.100.2.5", 8080, "TCP").encode(): 1}
    assert found.expired == [items[3][0]]


def test_count_corrections_leave_counters_that_moved_during_the_scan_alone():
    from cni_cilium.ctgc import count_corrections

    a, b, c, d = b"a" * 8, b"b" * 8, b"c" * 8, b"d" * 8
    before = {a: 5, b: 2, c: 1}
    after = {a: 5, b: 3, c: 1, d: 1}        # b moved, d appeared: both left for next time
    live = {a: 3, b: 1, c: 1}               # a leaked two (expired/evicted entries)
    assert count_corrections(before, after, live) == {a: 3}
    assert count_corrections({a: -1}, {a: -1}, {}) == {a: 0}


def test_counters_of_backends_no_longer_served_are_stale():
    from cni_cilium.bpfabi import BackendKey
    from cni_cilium.ctgc import stale_counter_keys

    keep = BackendKey("10.100.2.4", 8080, "TCP").encode()
    gone = BackendKey("10.100.2.9", 8080, "TCP").encode()
    other_proto = BackendKey("10.100.2.4", 8080, "UDP").encode()
    live = live_backends([view("TCP", ("10.100.2.4", 8080, "active"))])
    assert stale_counter_keys([keep, gone, other_proto], live) == [gone, other_proto]
