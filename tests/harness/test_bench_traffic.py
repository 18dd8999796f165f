"""The traffic table of `cni-harness bench datapath` (the pure part)."""

from __future__ import annotations

import pytest

from cni_harness.bench import (
    DIRECT,
    Path,
    TrafficBench,
    busiest_agent_cpu,
    busiest_share,
    format_apply_results,
    format_traffic_results,
    summarise,
)

pytestmark = pytest.mark.unit


def _summary(conn: float, agent_cpu: list[dict[str, float]]) -> dict:
    runs = [{"close": {"rps": conn, "agentCpu": cpu}, "keepalive": {"rps": conn * 5}}
            for cpu in agent_cpu]
    return {"conn": conn, "keepalive": conn * 5, "gbps": 5.0,
            "samples": {"runs": runs}}


def test_ratios_to_direct_and_the_busiest_agent_per_run():
    results = {"counts": [1], "rounds": 2, "seconds": 3.0,
               "cilium": {1: {DIRECT: _summary(1000, [{"node1": 0.02, "node2": 0.05}]),
                              "client->NodePort (SNAT)": _summary(
                                  900, [{"node1": 0.19, "node2": 0.1}, {}])}},
               "kubeProxy": {1: {DIRECT: _summary(1100, [])}}}
    assert busiest_agent_cpu(results) == [0.05, 0.19]
    text = format_traffic_results(results)
    assert "| client->NodePort (SNAT) | 1 | 900 (0.90) | - |" in text
    assert "| pod->pod direct | 1 | 1,000 (1.00) | 1,100 (1.10) |" in text
    assert "busiest agent's CPU share during the cni-cilium wrk runs: median 0.12, max 0.19" \
        in text


def _samples(conn: list[float], pairs: list[int] | None = None) -> dict:
    out = {"conn": conn, "keepalive": [c * 5 for c in conn], "gbps": [5.0] * len(conn),
           "runs": []}
    if pairs is not None:
        out["pairs"] = pairs
    return out


def test_paired_ratios_are_medians_of_each_round_against_the_direct_round_before_it():
    # Direct drifts from 1000 to 2000 between modes; the path runs at 0.9x of each round's.
    samples = {DIRECT: _samples([1000, 1000, 2000, 2000]),
               "client->NodePort (DSR)": _samples([1800, 1800], pairs=[2, 3]),
               "client->NodePort (SNAT)": _samples([900, 950], pairs=[0, 1])}
    summary = summarise(samples)
    assert DIRECT in summary and "ratios" not in summary[DIRECT]
    assert summary["client->NodePort (DSR)"]["ratios"] == {"conn": 0.9, "keepalive": 0.9,
                                                           "gbps": 1.0}
    assert summary["client->NodePort (SNAT)"]["ratios"]["conn"] == pytest.approx(0.925)
    # Against the median of all direct rounds (1500) the DSR path would read 1.20.
    text = format_traffic_results({"counts": [1], "rounds": 2, "seconds": 3.0,
                                   "cilium": {"1": summary}, "kubeProxy": {}})
    assert "| client->NodePort (DSR) | 1 | 1,800 (0.90) | - |" in text
    assert "| pod->pod direct | 1 | 1,500 (1.00) | - |" in text


def test_busiest_share_is_the_largest_agent_cpu_between_two_readings():
    before = {"node1": 10.0, "node2": 4.0, "node3": 1.0}
    after = {"node1": 10.1, "node2": 4.6, "gone": 9.0}
    assert busiest_share(before, after, 2.0) == pytest.approx(0.3)
    assert busiest_share({}, after, 2.0) == 0.0


def test_apply_results_name_the_settles_that_took_time():
    text = format_apply_results({"applySeconds": {10000: 16.2},
                                 "settleSeconds": {"10000 services": 2.0,
                                                   "10000 services, DSR": 14.3}})
    assert "9999 services added (10000 in all): 16.2 s" in text
    assert "after 10000 services, DSR: 14 s" in text
    assert "after 10000 services:" not in text
    # The same read back from `--json` (string keys).
    assert "9999 services added (10000 in all): 16.2 s" in format_apply_results(
        {"applySeconds": {"10000": 16.2}})


def test_the_programs_time_per_request_gets_its_own_table_from_the_extra_runs():
    samples = {DIRECT: _samples([1000]),
               "client->NodePort (SNAT)": _samples([900], pairs=[0])}
    samples[DIRECT]["programs"] = {
        "conn": {"bpfNsPerRequest": 21500, "bpfRunsPerRequest": 40.0, "rps": 990},
        "keepalive": {"bpfNsPerRequest": 4012, "bpfRunsPerRequest": 8.02, "rps": 5000}}
    samples["client->NodePort (SNAT)"]["programs"] = {
        "conn": {"bpfNsPerRequest": None, "bpfRunsPerRequest": None, "rps": 0},
        "keepalive": {"bpfNsPerRequest": 5950, "bpfRunsPerRequest": 10.0, "rps": 4500}}
    text = format_traffic_results({"counts": [1], "rounds": 1, "seconds": 3.0,
                                   "cilium": {1: summarise(samples)}, "kubeProxy": {}})
    assert "| pod->pod direct | 1 | 21.50 (40) | 4.01 (8.02) |" in text
    assert "| client->NodePort (SNAT) | 1 | - | 5.95 (10) |" in text
    # The rates table stays the rounds' own.
    assert "| client->NodePort (SNAT) | 1 | 900 (0.90) | - |" in text


def test_no_programs_table_when_the_run_measured_none():
    text = format_traffic_results({"counts": [1], "rounds": 1, "seconds": 3.0,
                                   "cilium": {1: summarise({DIRECT: _samples([1000])})},
                                   "kubeProxy": {}})
    assert "BPF programs per request" not in text


class _RecordingBench(TrafficBench):
    """A TrafficBench whose generators return a figure per path and note the order."""

    def __init__(self):
        super().__init__(lab=None, seconds=1, progress=lambda _line: None)
        self.calls: list[tuple[str, str]] = []

    def wrk(self, where, host, port, close, programs=False):
        self.calls.append(("close" if close else "keepalive", where))
        return {"rps": float(port)}

    def iperf(self, where, host, port):
        self.calls.append(("iperf", where))
        return float(port)


def _path(name: str, port: int) -> Path:
    return Path(name, name, ("10.0.0.1", port), ("10.0.0.1", port))


def test_a_round_measures_figure_by_figure_with_direct_first_and_rotates_the_others():
    bench, samples = _RecordingBench(), {}
    paths = [_path(DIRECT, 1000), _path("a", 900), _path("b", 800)]
    bench.measure_round(paths, samples)
    bench.measure_round(paths, samples)
    first, second = bench.calls[:9], bench.calls[9:]
    assert first == [(k, w) for k in ("close", "keepalive", "iperf")
                     for w in (DIRECT, "a", "b")]
    assert second == [(k, w) for k in ("close", "keepalive", "iperf")
                      for w in (DIRECT, "b", "a")]
    assert samples["a"]["pairs"] == [0, 1] and "pairs" not in samples[DIRECT]
    assert samples["b"]["conn"] == [800.0, 800.0]
    assert summarise(samples)["a"]["ratios"] == {"conn": 0.9, "keepalive": 0.9, "gbps": 0.9}


def test_an_unpaired_round_records_no_pairs():
    bench, samples = _RecordingBench(), {}
    bench.measure_round([_path(DIRECT, 1000), _path("a", 900)], samples, paired=False)
    assert "pairs" not in samples["a"] and samples["a"]["keepalive"] == [900.0]


def test_paired_cells_carry_the_quartiles_of_their_per_round_ratios_from_three_rounds():
    samples = {DIRECT: _samples([1000] * 5),
               "client->NodePort (SNAT)": _samples([800, 850, 900, 950, 1000],
                                                   pairs=[0, 1, 2, 3, 4]),
               "client->NodePort (DSR)": _samples([900, 900], pairs=[0, 1])}
    summary = summarise(samples)
    assert summary["client->NodePort (SNAT)"]["ratioQuartiles"]["conn"] == \
        pytest.approx([0.85, 0.95])
    assert summary["client->NodePort (DSR)"]["ratioQuartiles"]["conn"] == []
    text = format_traffic_results({"counts": [1], "rounds": 5, "seconds": 2.0,
                                   "cilium": {1: summary}, "kubeProxy": {}})
    assert "| client->NodePort (SNAT) | 1 | 900 (0.90 [0.85-0.95]) | - |" in text
    assert "| client->NodePort (DSR) | 1 | 900 (0.90) | - |" in text
