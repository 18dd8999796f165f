"""The per-packet program time of `cni-harness bench datapath`: the real programs in a
private bpffs, maps from the agent's translation, BPF_PROG_TEST_RUN (root; nothing sent)."""

from __future__ import annotations

import pytest

from cni_harness.bench import format_packet_costs, packet_cost_benchmark

pytestmark = [pytest.mark.probe, pytest.mark.slow]


def test_each_packet_kind_is_timed_and_nodeport_packets_are_translated():
    rows = packet_cost_benchmark(counts=(1, 100), runs=50, progress=lambda _m: None)
    assert [(r["services"], r["program"]) for r in rows[:6]] == [
        (1, "from_netdev"), (1, "from_netdev"), (1, "from_netdev"), (1, "to_netdev"),
        (1, "from_netdev"), (1, "to_netdev")]
    assert len(rows) == 12 and all(r["medianNs"] > 0 and r["p90Ns"] >= r["medianNs"]
                                   for r in rows)
    by_kind = {(r["services"], r["packet"]): r["verdict"] for r in rows}
    for count in (1, 100):
        # Passing pod traffic is left to the stack; NodePort packets are translated and
        # redirected (or dropped where this host's FIB has no route): never passed as is.
        assert by_kind[(count, "pod -> pod, arriving")] == "ok"
        assert by_kind[(count, "pod -> pod, leaving")] == "ok"
        for packet in ("NodePort SYN, a new connection", "NodePort request, established",
                       "NodePort reply to the SNAT port"):
            assert "ok" not in by_kind[(count, packet)].split(","), packet
    text = format_packet_costs(rows, runs=50)
    assert "| from_netdev | NodePort request, established | 100 |" in text
