"""Datapath benchmarks: figures printed, never asserted as timings.

* Programming: N services with 10 backends each, from manifest text to the pinned maps,
  through the agent's own code (YAML parse, translation, diff, batched map writes), in a
  private bpffs; then one endpoint change applied as a diff. Entry counts read back from
  the maps must match what was asked, so a broken writer cannot print a good figure.
* Traffic (with a running cluster): TCP throughput (iperf3) and request rate (new
  connection per request) pod->pod direct, pod->ClusterIP and client->NodePort (SNAT, then
  DSR), to the same remote backend pod, with ratios to direct measured in the same run.
* Compile cache: an agent-like start (a fresh process) that compiles the datapath and
  stores it, then one that loads it from the cache, in a private bpffs; the ratio of both.
* LB algorithms: Maglev table builds (M = 16381, 10/100/1000 backends) and what one
  backend's removal rewrites; with a cluster, new-connection rate and established-flow
  throughput through a maglev and a least-conn service against a random one, all three
  selecting the same backend pod, so the ratios are the selection's own cost.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import yaml

from cni_cilium import maglev
from cni_cilium.bpfabi import Backend, Frontend
from cni_cilium.config import settings_from_mapping
from cni_cilium.datapath import loader
from cni_cilium.datapath.writer import write_ops
from cni_cilium.manifests import parse_documents
from cni_cilium.paths import AGENT_PID as AGENT_PID_FILE
from cni_cilium.preflight import extra_lb_refusal
from cni_cilium.translate import MANAGED_MAPS, DesiredState, apply_ops, diff_maps, translate

BACKENDS_PER_SERVICE = 10
NODES = (("node1", "10.99.0.11", "10.100.1.0/24"), ("node2", "10.99.0.12", "10.100.2.0/24"),
         ("node3", "10.99.0.13", "10.100.3.0/24"))


def synthetic_manifests(services: int, backends: int = BACKENDS_PER_SERVICE,
                        generation: int = 0) -> str:
    """Nodes, `services` ClusterIP services and their EndpointSlices as one YAML text.
    `generation` shifts the first backend of service 0 (an endpoint change)."""
    docs: list[dict] = []
    for name, ip, cidr in NODES:
        docs.append({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                     "spec": {"podCIDR": cidr},
                     "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})
    base = ipaddress.IPv4Address("10.96.0.0")
    for i in range(services):
        name = f"svc-{i}"
        docs.append({"apiVersion": "v1", "kind": "Service",
                     "metadata": {"name": name, "namespace": "bench"},
                     "spec": {"clusterIP": str(base + 1 + i),
                              "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
        endpoints = []
        for b in range(backends):
            node = b % len(NODES)
            host = 2 + (i * backends + b + (generation if i == 0 and b == 0 else 0)) % 250
            endpoints.append({"addresses": [f"10.100.{node + 1}.{host}"],
                              "nodeName": NODES[node][0], "conditions": {"ready": True}})
        docs.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                     "metadata": {"name": f"{name}-1", "namespace": "bench",
                                  "labels": {"kubernetes.io/service-name": name}},
                     "addressType": "IPv4", "endpoints": endpoints,
                     "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
    return yaml.dump_all(docs, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper))


@contextlib.contextmanager
def private_bpffs() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="cni-cilium-bench-")
    subprocess.run(["mount", "-t", "bpf", "bpf", path], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", path], check=False)
        os.rmdir(path)


@contextlib.contextmanager
def private_datapath() -> Iterator[tuple[Any, dict]]:
    """(the loaded programs, their managed maps) in a private bpffs, as the agent loads
    them (this checkout's sources, or $CNI_CILIUM_BPF_DIR's), removed afterwards."""
    with private_bpffs() as bpffs:
        dp = loader.load(loader.find_bpf_dir(), pin_root=os.path.join(bpffs, "cni-cilium"),
                         bpffs=bpffs)
        maps = {name: dp.open_map(name) for name in MANAGED_MAPS}
        try:
            yield dp, maps
        finally:
            for m in maps.values():
                m.close()


@dataclass
class ProgramResult:
    services: int
    entries: int
    parse_s: float
    translate_s: float
    diff_s: float
    write_s: float
    update_ops: int
    update_s: float

    @property
    def total_s(self) -> float:
        return self.parse_s + self.translate_s + self.diff_s + self.write_s


def _parse(text: str) -> list:
    loader_cls = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    objects, problems = parse_documents(list(yaml.load_all(text, Loader=loader_cls)), "bench")
    if problems:
        raise RuntimeError(f"benchmark manifests invalid: {problems[:3]}")
    return objects


def program_benchmark(counts: Sequence[int] = (1000, 10000),
                      progress: Callable[[str], None] = print) -> tuple[float, list[ProgramResult]]:
    """(bcc compile seconds, one result per service count)."""
    settings = settings_from_mapping({"bpfLBMode": "SNAT"})
    results = []
    with private_datapath() as (dp, maps):
        programmed: dict[str, dict[bytes, bytes]] = {name: {} for name in maps}
        for count in counts:
            progress(f"programming {count} services x {BACKENDS_PER_SERVICE} backends ...")
            text = synthetic_manifests(count)
            t0 = time.perf_counter()
            objects = _parse(text)
            t1 = time.perf_counter()
            tr = translate(DesiredState(settings, "node1", objects))
            t2 = time.perf_counter()
            ops = diff_maps(programmed, tr.maps)
            t3 = time.perf_counter()
            write_ops(maps, ops)
            t4 = time.perf_counter()
            programmed = apply_ops(programmed, ops)
            fes, slots = maps["lb_frontends"].count(), maps["lb_slots"].count()
            if (fes, slots) != (count, count * BACKENDS_PER_SERVICE):
                raise RuntimeError(f"maps hold {fes} frontends / {slots} slots, expected "
                                   f"{count} / {count * BACKENDS_PER_SERVICE}")
            # One endpoint of one service replaced: the agent's path for a live change.
            changed = _parse(synthetic_manifests(count, generation=1))
            t5 = time.perf_counter()
            tr2 = translate(DesiredState(settings, "node1", changed))
            update = diff_maps(programmed, tr2.maps)
            write_ops(maps, update)
            t6 = time.perf_counter()
            programmed = apply_ops(programmed, update)
            results.append(ProgramResult(count, len(ops), t1 - t0, t2 - t1, t3 - t2, t4 - t3,
                                         len(update), t6 - t5))
            clear = diff_maps(programmed, {name: {} for name in maps})
            write_ops(maps, clear)
            programmed = apply_ops(programmed, clear)
        compile_s = dp.compile_seconds + dp.load_seconds
    return compile_s, results


PACKET_RUNS = 2000
PACKET_NODEPORT = 30080
PACKET_BACKEND = "10.100.2.50"    # a pod on node2: node1 forwards to it
PACKET_CLIENT = "10.99.0.100"
TC_VERDICTS = {0: "ok", 2: "shot", 7: "redirect"}


def _nodeport_docs() -> list[dict]:
    """One NodePort service whose only backend is a pod on node2 (pure)."""
    return [{"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": "np", "namespace": "bench"},
             "spec": {"type": "NodePort", "clusterIP": "10.96.255.250",
                      "ports": [{"name": "http", "port": 80, "targetPort": 8080,
                                 "nodePort": PACKET_NODEPORT}]}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": "np-1", "namespace": "bench",
                          "labels": {"kubernetes.io/service-name": "np"}},
             "addressType": "IPv4",
             "endpoints": [{"addresses": [PACKET_BACKEND], "nodeName": "node2",
                            "conditions": {"ready": True}}],
             "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]


def packet_cost_benchmark(counts: Sequence[int] = (1, 10000), runs: int = PACKET_RUNS,
                          progress: Callable[[str], None] = print) -> list[dict]:
    """Per packet kind, the time node1's program takes for it (median and 90th percentile
    of `runs` single BPF_PROG_TEST_RUNs, the kernel's own measure), with node1's maps
    programmed by the agent's translation for `count` services: a NodePort connection's
    SYN, its established request and its reply through the SNAT port in from_netdev, the
    translated request leaving in to_netdev, and pod -> pod passing both ways. A test run
    sends nothing (a redirect is only its return value); the FIB lookup before a redirect
    uses this host's routes, so `verdict` says how each run ended."""
    settings = settings_from_mapping({"bpfLBMode": "SNAT"})
    out = []
    with private_datapath() as (dp, maps):
        programmed: dict[str, dict[bytes, bytes]] = {name: {} for name in maps}
        for n, count in enumerate(counts):
            progress(f"per-packet cost with {count} services ...")
            docs = [*yaml.safe_load_all(synthetic_manifests(count - 1)), *_nodeport_docs()]
            objects, problems = parse_documents(docs, "bench")
            if problems:
                raise RuntimeError(f"benchmark manifests invalid: {problems[:3]}")
            ops = diff_maps(programmed, translate(DesiredState(settings, "node1",
                                                               objects)).maps)
            write_ops(maps, ops)
            programmed = apply_ops(programmed, ops)
            # Client ports differ per count: each count's connections are new.
            out += [{"services": count, **row}
                    for row in _packet_costs(dp.prog_fds, 10000 + 20000 * n, runs)]
    return out


def _packet_costs(prog_fds: dict[str, int], first_port: int, runs: int) -> list[dict]:
    """The runs of `packet_cost_benchmark` against programmed maps: 64 NodePort connections
    opened first (their SNAT ports read from the translated frames), then each kind."""
    from cni_cilium.bpfabi import MARK_TRANSLATED
    from cni_cilium.datapath.bpfsys import prog_test_run_skb, prog_test_run_timed
    from cni_cilium.datapath.frames import TCP_ACK, TCP_SYN, ipv4_tuple, tcp_frame

    node_ip, local_pod, client = NODES[0][1], "10.100.1.5", PACKET_CLIENT
    nat_port = {}
    for sport in range(first_port + runs, first_port + runs + 64):
        prog_test_run_timed(prog_fds["from_netdev"], tcp_frame(
            client, node_ip, sport, PACKET_NODEPORT, TCP_SYN))
        _r, frame, _ns = prog_test_run_timed(prog_fds["from_netdev"], tcp_frame(
            client, node_ip, sport, PACKET_NODEPORT, TCP_ACK))
        nat_port[sport] = ipv4_tuple(frame)[1]
    conns = sorted(nat_port)
    # (program, packet, its frames, skb->mark: as from_netdev leaves a packet it redirected)
    kinds: list[tuple[str, str, Callable[[int], bytes], int]] = [
        ("from_netdev", "NodePort SYN, a new connection", lambda i: tcp_frame(
            client, node_ip, first_port + i, PACKET_NODEPORT, TCP_SYN), 0),
        ("from_netdev", "NodePort request, established", lambda i: tcp_frame(
            client, node_ip, conns[i % 64], PACKET_NODEPORT, TCP_ACK), 0),
        ("from_netdev", "NodePort reply to the SNAT port", lambda i: tcp_frame(
            PACKET_BACKEND, node_ip, 8080, nat_port[conns[i % 64]], TCP_ACK), 0),
        ("to_netdev", "NodePort request leaving, translated (marked)", lambda i: tcp_frame(
            node_ip, PACKET_BACKEND, nat_port[conns[i % 64]], 8080, TCP_ACK),
         MARK_TRANSLATED),
        ("from_netdev", "pod -> pod, arriving", lambda i: tcp_frame(
            PACKET_BACKEND, local_pod, 8080, 40000 + i % 64, TCP_ACK), 0),
        ("to_netdev", "pod -> pod, leaving", lambda i: tcp_frame(
            local_pod, PACKET_BACKEND, 40000 + i % 64, 8080, TCP_ACK), 0)]
    rows = []
    for program, packet, frames, mark in kinds:
        ns, verdicts = [], set()
        for i in range(runs):
            run = prog_test_run_skb(prog_fds[program], frames(i), mark)
            ns.append(run.duration_ns)
            verdicts.add(TC_VERDICTS.get(run.retval, str(run.retval)))
        rows.append({"program": program, "packet": packet, "medianNs": round(_median(ns)),
                     "p90Ns": sorted(ns)[int(len(ns) * 0.9)],
                     "verdict": ",".join(sorted(verdicts))})
    return rows


def format_packet_costs(rows: Sequence[dict], runs: int = PACKET_RUNS) -> str:
    """The per-packet table (pure)."""
    lines = [f"node1's programs per packet (BPF_PROG_TEST_RUN, median and 90th percentile of "
             f"{runs} runs, ns)",
             "| program | packet | services | median | p90 | verdict |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['program']} | {r['packet']} | {r['services']:,} | {r['medianNs']:,} | "
              f"{r['p90Ns']:,} | {r['verdict']} |" for r in rows]
    return "\n".join(lines)


# One agent-like start: the datapath loaded as the agent loads it, timed from before the
# loader is imported (a cache hit never imports bcc), reported as JSON.
_TIMED_LOAD = """
import json, sys, time
started = time.monotonic()
from cni_cilium.datapath import compilecache, loader
dp = loader.load(loader.find_bpf_dir(), pin_root=sys.argv[1] + "/cni-cilium", bpffs=sys.argv[1],
                 cache=compilecache.CompileCache(sys.argv[2]))
print(json.dumps(dict(dp.describe(), seconds=time.monotonic() - started)))
"""


def compile_cache_benchmark(progress: Callable[[str], None] = print) -> dict:
    """Seconds of a start that compiles (and stores) and of one served by the cache."""
    runs = {}
    with private_bpffs() as bpffs, tempfile.TemporaryDirectory() as cache_dir:
        for expected in ("compile", "cache"):
            progress(f"loading the datapath ({expected}) in a fresh process ...")
            res = subprocess.run([sys.executable, "-c", _TIMED_LOAD, bpffs, cache_dir],
                                 capture_output=True, text=True, timeout=900, check=False)
            if res.returncode != 0:
                raise RuntimeError(f"datapath load failed: {res.stderr[-2000:]}")
            doc = json.loads(res.stdout.strip().splitlines()[-1])
            if doc["origin"] != expected:
                raise RuntimeError(f"expected a {expected} load, got {doc['origin']}: "
                                   f"{doc['cache']}")
            runs[expected] = {k: doc[k] for k in ("seconds", "compileSeconds", "loadSeconds")}
    runs["speedup"] = runs["compile"]["seconds"] / max(runs["cache"]["seconds"], 1e-6)
    return runs


def format_cache_results(runs: dict) -> str:
    compiled, cached = runs["compile"], runs["cache"]
    return (f"datapath start: compile {compiled['seconds']:.2f} s (clang "
            f"{compiled['compileSeconds']:.2f} s, kernel load {compiled['loadSeconds']:.2f} s); "
            f"from the compile cache {cached['seconds']:.2f} s (kernel load "
            f"{cached['loadSeconds']:.2f} s): {runs['speedup']:.0f}x faster")


def format_program_results(compile_s: float, results: Sequence[ProgramResult]) -> str:
    lines = [f"bcc compile + load of the 5 programs: {compile_s:.2f} s",
             f"{'services':>9} {'map entries':>12} {'parse':>8} {'translate':>10} {'diff':>7} "
             f"{'write':>7} {'total':>7} {'1-endpoint change':>22}"]
    for r in results:
        lines.append(f"{r.services:>9} {r.entries:>12} {r.parse_s:>7.2f}s {r.translate_s:>9.2f}s"
                     f" {r.diff_s:>6.2f}s {r.write_s:>6.2f}s {r.total_s:>6.2f}s "
                     f"{r.update_ops:>5} writes {r.update_s:>6.2f}s")
    return "\n".join(lines)




# The extra algorithms where this kernel allows them (a refused option would stop the agents).
EXTRA_LB = extra_lb_refusal(settings_from_mapping({"extraLoadBalancerAlgorithmsEnabled": True}),
                            os.uname().release)
TRAFFIC_CONFIG = "bpfLBMode: SNAT\n" + (
    "" if EXTRA_LB else "extraLoadBalancerAlgorithmsEnabled: true\n")
IPERF_PORT = 5201
HTTP_PORT = 8080
CLIENT_CPU, SERVER_CPU = 0, 1         # wrk / iperf3 client and nginx / iperf3 server
WRK_CONNECTIONS = 50
AGENT_UNIT = "cni-cilium-agent.service"
NODECTL = "/usr/local/sbin/nodectl"
NGINX_CONF = "/srv/bench/nginx.conf"
# nginx, one worker pinned to its own CPU: answers a small body, no logs, long keep-alive.
NGINX_CONFIG = """worker_processes 1;
daemon off;
pid /tmp/nginx-bench.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  server {
    listen %d reuseport backlog=4096;
    location / { return 200 "ok\\n"; }
  }
}
"""
MODES = {"SNAT": {"TCP": "SNAT", "UDP": "SNAT"}, "DSR": {"TCP": "DSR", "UDP": "DSR"},
         "Hybrid": {"TCP": "DSR", "UDP": "SNAT"}}
DIRECT = "pod->pod direct"
# The agents count as idle below 5% of a CPU over 2 s (a status write every 2 s and the
# ct GC stay under it on a quiet node); a settle gives up after 3 minutes.
BPF_STATS_SYSCTL = "kernel.bpf_stats_enabled"
SETTLE_SHARE = 0.05
SETTLE_WINDOW_S = 2.0
SETTLE_TIMEOUT_S = 180.0
METRICS = (("conn", "new conn/s"), ("keepalive", "keep-alive req/s"), ("gbps", "iperf3 Gb/s"))


def busiest_share(before: dict[str, float], after: dict[str, float], seconds: float) -> float:
    """The largest CPU share (of one CPU) any agent used between two readings of
    CPU seconds per node; nodes missing from either reading are left out."""
    shares = [(after[n] - before[n]) / seconds for n in after if n in before]
    return max(shares, default=0.0)


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def parse_wrk(text: str) -> dict:
    """wrk's summary: requests, requests/s, socket errors, non-2xx answers."""
    def number(pattern: str) -> float:
        m = re.search(pattern, text)
        return float(m.group(1)) if m else 0.0
    errors = re.search(r"Socket errors: (.*)", text)
    return {"requests": int(number(r"(\d+) requests in")),
            "rps": number(r"Requests/sec:\s+([\d.]+)"),
            "socketErrors": errors.group(1).strip() if errors else "",
            "non2xx": int(number(r"Non-2xx or 3xx responses: (\d+)"))}


def child_cpu_seconds(stat_line: str, ticks: int = 100) -> float:
    """CPU time of the reaped children of a process, from its /proc/PID/stat line."""
    fields = stat_line.rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / ticks      # cutime, cstime


def process_cpu_seconds(stat_line: str, ticks: int = 100) -> float:
    """A process's own CPU time from its /proc/PID/stat line."""
    fields = stat_line.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / ticks      # utime, stime


@dataclass(frozen=True)
class Path:
    """Where the generator runs and what it connects to."""

    label: str
    where: Any                  # lab.Where
    http: tuple[str, int]
    iperf: tuple[str, int]


class TrafficBench:
    """The paths of one cluster measured with wrk and iperf3 (see `traffic_benchmark`)."""

    def __init__(self, lab, seconds: float, progress: Callable[[str], None]):
        self.lab = lab
        self.seconds = seconds
        self.progress = progress
        self.server_pid = ""

    # ---------------------------------------------------------------- generators
    def wrk(self, where, host: str, port: int, close: bool, programs: bool = False) -> dict:
        """wrk pinned to the client CPU; its own CPU share and the server's; with
        `programs`, also the BPF programs' run time and runs per request (all nodes)."""
        header = ["-H", "Connection: close"] if close else []
        script = (f"taskset -c {CLIENT_CPU} wrk -t1 -c{WRK_CONNECTIONS} "
                  f'-d{max(1, round(self.seconds))}s --timeout 3s "$@"; cat /proc/$$/stat')
        server_before, agents_before = self.server_cpu(), self.agents_cpu()
        programs_before = self.program_runs() if programs else None
        res = self.lab.run(where, ["sh", "-c", script, "wrk", *header,
                                   f"http://{host}:{port}/"],
                           timeout=self.seconds + 60, check=True)
        after = self.program_runs() if programs else None
        server, agents = self.server_cpu() - server_before, self.agents_cpu()
        out = parse_wrk(res.stdout)
        if after and programs_before and out["requests"]:
            out["bpfNsPerRequest"] = round((after[0] - programs_before[0]) / out["requests"])
            out["bpfRunsPerRequest"] = round((after[1] - programs_before[1])
                                             / out["requests"], 2)
        out["clientCpu"] = round(child_cpu_seconds(res.stdout.strip().splitlines()[-1])
                                 / self.seconds, 2)
        out["serverCpu"] = round(server / self.seconds, 2)
        out["agentCpu"] = {n: round((agents[n] - agents_before[n]) / self.seconds, 2)
                           for n in agents if n in agents_before}
        return out

    def iperf(self, where, host: str, port: int) -> float:
        res = self.lab.run(where, ["iperf3", "-c", host, "-p", str(port), "-A", str(CLIENT_CPU),
                                   "-t", str(max(1, round(self.seconds))), "-J"],
                           timeout=self.seconds + 60, check=True)
        return json.loads(res.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9

    @contextlib.contextmanager
    def program_stats(self) -> Iterator[None]:
        """kernel.bpf_stats_enabled on every node while inside (the programs' run counters
        move only then; they cost two clock reads a run), as it was afterwards."""
        from .suites.lab import node

        names = [info.name for info in self.lab.provider.nodes()]
        was = {n: self.lab.run(node(n), ["sysctl", "-n", BPF_STATS_SYSCTL]).stdout.strip()
               for n in names}
        for n in names:
            self.lab.run(node(n), ["sysctl", "-qw", f"{BPF_STATS_SYSCTL}=1"], check=True)
        try:
            yield
        finally:
            for n in names:
                if was[n] in ("0", "1"):
                    self.lab.run(node(n), ["sysctl", "-qw", f"{BPF_STATS_SYSCTL}={was[n]}"])

    def server_cpu(self) -> float:
        """CPU seconds the nginx worker used so far (0 when it cannot be read)."""
        from .suites.lab import node

        if not self.server_pid:
            found = self.lab.run(node("node2"), ["pgrep", "-f", "nginx: worker"]).stdout
            self.server_pid = found.split()[0] if found.split() else ""
        res = self.lab.run(node("node2"), ["cat", f"/proc/{self.server_pid}/stat"])
        return process_cpu_seconds(res.stdout) if res.returncode == 0 and res.stdout else 0.0

    def agents_cpu(self) -> dict[str, float]:
        """CPU seconds each node's agent used so far; nodes without a running agent (the
        kube-proxy peer's phase) are left out. The agents share the cores with the
        generator and the server: their share is what the datapath's figures lost."""
        from .suites.lab import node

        used = {}
        for info in self.lab.provider.nodes():
            # No pid file (agents stopped for the peer) must not read /proc/stat instead.
            res = self.lab.run(node(info.name), [
                "sh", "-c", f'pid=$(cat {AGENT_PID_FILE}) && [ -n "$pid" ] && '
                'cat "/proc/$pid/stat"'])
            if res.returncode == 0 and ")" in res.stdout:
                used[info.name] = process_cpu_seconds(res.stdout)
        return used

    def program_runs(self) -> tuple[int, int] | None:
        """(run time ns, runs) of every node's programs together, from the agents' status;
        None when a node's agent does not answer (the kube-proxy peer's phase)."""
        from .suites.lab import LabError

        total_ns = total_runs = 0
        for info in self.lab.provider.nodes():
            try:
                programs = self.lab.agent_view(info.name, "status")["bpf"]["programs"]
            except (LabError, ValueError, KeyError):   # no agent, or one without counters
                return None
            for run in programs.values():
                total_ns += run["runTimeNs"]
                total_runs += run["runCount"]
        return total_ns, total_runs

    def settle(self, why: str, window: float = SETTLE_WINDOW_S,
               threshold: float = SETTLE_SHARE, timeout: float = SETTLE_TIMEOUT_S) -> float:
        """Wait until no agent uses more than `threshold` of a CPU over `window` seconds:
        after an apply or a mode switch the agents retranslate and rewrite maps for a
        while, and a wrk run in that time measures the agents, not the datapath. Returns
        the seconds waited; past `timeout` it says so and goes on (the runs record each
        agent's CPU, so a busy agent stays visible in the results)."""
        started = time.monotonic()
        while True:
            before = self.agents_cpu()
            time.sleep(window)
            share = busiest_share(before, self.agents_cpu(), window)
            waited = time.monotonic() - started
            if share <= threshold:
                if waited > window * 1.5:
                    self.progress(f"  agents idle after {waited:.0f} s ({why})")
                return waited
            if waited >= timeout:
                self.progress(f"  an agent still uses {share:.2f} of a CPU {waited:.0f} s "
                              f"after {why}; measuring anyway")
                return waited

    def measure_round(self, paths: Sequence[Path], into: dict, paired: bool = True) -> None:
        """One round of the three figures of `paths`, appended to into[label], figure by
        figure: each path's figure is measured within seconds of the same figure of
        paths[0] (the baseline, direct), not a whole round's minutes later, and with
        `paired` it is paired with that sample. The other paths' order rotates from round
        to round, so none is always the farthest from its baseline sample."""
        base, others = paths[0], list(paths[1:])
        index = len(_path_samples(into, base.label)["conn"])
        if others:
            turn = index % len(others)
            others = others[turn:] + others[:turn]
        ordered = [base, *others]
        if paired:
            for path in others:
                _path_samples(into, path.label).setdefault("pairs", []).append(index)
        runs: dict[str, dict] = {path.label: {} for path in ordered}
        for key, what in (("close", "new connections"), ("keepalive", "keep-alive")):
            self.progress(f"  {what}: " + ", ".join(path.label for path in ordered))
            for path in ordered:
                runs[path.label][key] = self.wrk(path.where, *path.http,
                                                 close=key == "close")
        self.progress("  iperf3: " + ", ".join(path.label for path in ordered))
        gbps = {path.label: self.iperf(path.where, *path.iperf) for path in ordered}
        for path in ordered:
            samples = _path_samples(into, path.label)
            samples["conn"].append(runs[path.label]["close"]["rps"])
            samples["keepalive"].append(runs[path.label]["keepalive"]["rps"])
            samples["gbps"].append(gbps[path.label])
            samples["runs"].append(runs[path.label])

    def program_cost(self, path: Path, into: dict) -> None:
        """The datapath's own cost on a path: BPF run time and runs per request of one
        new-connection and one keep-alive wrk run (inside `program_stats`). Separate runs:
        counting costs each program run two clock reads, which the rates must not pay."""
        self.progress(f"  {path.label} (programs' time)")
        _path_samples(into, path.label)["programs"] = {
            key: {k: run.get(k) for k in ("bpfNsPerRequest", "bpfRunsPerRequest", "rps")}
            for key, run in (("conn", self.wrk(path.where, *path.http, True, True)),
                             ("keepalive", self.wrk(path.where, *path.http, False, True)))}


def _path_samples(into: dict, label: str) -> dict:
    """A path's sample lists in `into`, created empty on first use."""
    return into.setdefault(label, {**{m: [] for m, _ in METRICS}, "runs": []})


def summarise(samples: dict, baseline: str = DIRECT) -> dict:
    """Per path, the median of each figure; for a path paired with `baseline` round by
    round (`pairs`: the baseline's sample index per sample), also `ratios`: per figure the
    median of the per-round ratios, and `ratioQuartiles`: their first and third quartiles,
    the verdict's uncertainty (pure). Pairing takes out what drifts between the seconds
    apart a figure of the baseline and of the path are measured (other load, the host's
    frequency)."""
    out = {}
    for label, s in samples.items():
        summary = {**{m: _median(s[m]) for m, _ in METRICS}, "samples": s}
        if s.get("programs"):
            summary["programs"] = s["programs"]
        if s.get("pairs") and baseline in samples:
            base = samples[baseline]
            per_round = {m: [s[m][i] / base[m][j] for i, j in enumerate(s["pairs"])
                             if base[m][j]] for m, _ in METRICS}
            summary["ratios"] = {m: _median(r) for m, r in per_round.items()}
            summary["ratioQuartiles"] = {m: _quartiles(r) for m, r in per_round.items()}
        out[label] = summary
    return out


def _quartiles(values: Sequence[float]) -> list[float]:
    """[first, third] quartile (inclusive method); [] for fewer than three values, whose
    quartiles would say nothing."""
    if len(values) < 3:
        return []
    q1, _q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return [q1, q3]


def _peer_setup(lab, progress) -> None:
    """Detach the module: agents stopped and `cni-cilium bpf remove` (filters, routes,
    maps) on every node; static routes to the other nodes' pod CIDRs instead."""
    from .suites.lab import AGENT_CLI, node

    infos = list(lab.provider.nodes())
    for info in infos:
        progress(f"kube-proxy peer: detaching cni-cilium on {info.name}")
        lab.run(node(info.name), [NODECTL, "stop", AGENT_UNIT], check=True)
        lab.run(node(info.name), [AGENT_CLI, "bpf", "remove"], check=True)
        for other in infos:
            if other.name != info.name:
                lab.run(node(info.name), ["ip", "route", "replace", other.pod_cidr, "via",
                                          other.ip, "proto", "static"], check=True)


def _peer_program(lab, text: str) -> None:
    """kube-proxy's nat table on every node (its KUBE-* chains first removed)."""
    from .suites.lab import AGENT_CLI, node
    from .timescale import scaled

    # iptables-nft takes its time over a large ruleset (10,000 services: ~10^5 lines),
    # so the limit grows with the text: 2 min plus 1 s per 100 lines, time-scaled.
    timeout = scaled(120 + text.count("\n") / 100)
    for info in lab.provider.nodes():
        lab.run(node(info.name), [AGENT_CLI, "kube-proxy", "cleanup"], check=True)
        lab.run(node(info.name), ["iptables-restore", "--noflush"], input=text,
                timeout=timeout, check=True)


def _peer_teardown(lab, progress) -> None:
    """KUBE-* chains and the static routes gone, the nat table removed when nothing else
    is in it (so netfilter stops tracking connections), agents started again."""
    from .suites.lab import AGENT_CLI, node

    infos = list(lab.provider.nodes())
    for info in infos:
        where = node(info.name)
        lab.run(where, [AGENT_CLI, "kube-proxy", "cleanup"], timeout=600)
        if "-A " not in lab.run(where, ["iptables-save", "-t", "nat"]).stdout:
            lab.run(where, ["nft", "delete", "table", "ip", "nat"])
        for other in infos:
            if other.name != info.name:
                lab.run(where, ["ip", "route", "del", other.pod_cidr, "proto", "static"])
        lab.run(where, [NODECTL, "start", AGENT_UNIT], check=True)
    for info in infos:
        progress(f"kube-proxy peer: cni-cilium back on {info.name}")
        lab.wait_for(f"{info.name}'s agent", lambda n=info.name: lab.agent_view(
            n, "status")["state"] == "running" and all(
            d["ok"] for d in lab.agent_view(n, "status")["devices"].values()), timeout=120)


def _extra_services(first: int, last: int) -> list[dict]:
    """Services extra-<first..last-1>: ClusterIP, selecting the nginx pod (real services
    with a backend, programmed on every node)."""
    return [{"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": f"extra-{i}", "namespace": "default"},
             "spec": {"selector": {"app": "bench-http"},
                      "ports": [{"name": "http", "port": 80, "targetPort": HTTP_PORT}]}}
            for i in range(first, last)]


def traffic_benchmark(lab, seconds: float = 3.0, rounds: int = 2,
                      counts: Sequence[int] = (1, 1000, 10000), peer: str = "",
                      progress: Callable[[str], None] = print) -> dict:
    """New connections/s (wrk, `Connection: close`), keep-alive requests/s (wrk) and
    iperf3 throughput to nginx and iperf3 pods on node2: pod->pod direct and pod->ClusterIP
    from a pod on node1, client->NodePort and client->LoadBalancer IP through node1 in
    SNAT, DSR and Hybrid; at each service count in `counts` (the extra services are real
    ClusterIP services of the same pod); with peer "kube-proxy", the same paths through
    kube-proxy's iptables rules for the same services on the same nodes, the module
    detached. Medians of `rounds` rounds, paths interleaved in each round."""
    from cni_cilium.manifests import EndpointSlice, Service, parse_documents

    from .kubeproxy_rules import iptables_restore_text, service_ports
    from .suites.lab import CLIENT, node, pod

    progress("starting benchmark pods and services ...")
    docs = [{"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": name, "namespace": "default"},
             "spec": {"type": "LoadBalancer", "selector": {"app": name},
                      "ports": [{"name": "tcp", "port": port, "targetPort": target,
                                 "protocol": "TCP"}]}}
            for name, port, target in (("bench-iperf", IPERF_PORT, IPERF_PORT),
                                       ("bench-http", 80, HTTP_PORT))]
    for name in ("bench-iperf", "bench-http", "bench-cli"):
        if lab.pods.get("default", name):
            lab.pods.delete(name)
    lab.provider.put_file("node2", NGINX_CONF, (NGINX_CONFIG % HTTP_PORT).encode())
    iperf = lab.pods.run("node2", "bench-iperf", ["iperf3", "-s", "-p", str(IPERF_PORT), "-A",
                                                  str(SERVER_CPU)], labels={"app": "bench-iperf"})
    http = lab.pods.run("node2", "bench-http", ["taskset", "-c", str(SERVER_CPU), "nginx", "-c",
                                                NGINX_CONF, "-p", "/tmp"],
                        labels={"app": "bench-http"},
                        ports=[{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}])
    lab.pods.run("node1", "bench-cli", ["sleep", "infinity"], labels={"app": "bench-cli"})
    lab.apply(docs)
    bench = TrafficBench(lab, seconds, progress)
    applied = 1
    cilium: dict[int, dict] = {}
    proxy: dict[int, dict] = {}
    applies: dict[int, float] = {}
    settled: dict[str, float] = {}
    cleanup_errors: list[str] = []
    try:
        for name in ("bench-iperf", "bench-http"):
            lab.wait_programmed(f"default/{name}", {"ClusterIP": 1})
        node1 = lab.provider.node("node1").ip
        svc = {n: lab.service(n) for n in ("bench-iperf", "bench-http")}

        def frontends(kind: str) -> tuple[tuple[str, int], tuple[str, int]]:
            out = []
            for name in ("bench-http", "bench-iperf"):
                spec = svc[name]["spec"]
                out.append({"ClusterIP": (spec["clusterIP"], spec["ports"][0]["port"]),
                            "NodePort": (node1, spec["ports"][0]["nodePort"]),
                            "LoadBalancer": (svc[name]["status"]["loadBalancer"]["ingress"][0][
                                "ip"], spec["ports"][0]["port"])}[kind])
            return out[0], out[1]

        direct = Path(DIRECT, pod("bench-cli"), (http.ip, HTTP_PORT), (iperf.ip, IPERF_PORT))
        clusterip = Path("pod->ClusterIP", pod("bench-cli"), *frontends("ClusterIP"))

        def external(mode: str) -> list[Path]:
            suffix = f" ({mode})" if mode else ""
            return [Path(f"client->NodePort{suffix}", CLIENT, *frontends("NodePort")),
                    Path(f"client->LoadBalancer{suffix}", CLIENT, *frontends("LoadBalancer"))]

        lab.wait_for("iperf3 and nginx", lambda: all(
            "LISTEN" in lab.run(pod(p), ["ss", "-ltn", f"sport = :{port}"]).stdout
            for p, port in (("bench-iperf", IPERF_PORT), ("bench-http", HTTP_PORT))),
            timeout=20)
        for count in counts:
            if count - 1 > applied - 1:
                progress(f"applying services up to {count} ...")
                started = time.monotonic()
                lab.apply(_extra_services(applied - 1, count - 1))
                applied = count
                for info in lab.provider.nodes():
                    lab.wait_for(f"{count} services on {info.name}",
                                 lambda n=info.name, want=count + 1: lab.agent_view(
                                     n, "status")["services"]["services"] >= want, timeout=600)
                applies[count] = round(time.monotonic() - started, 1)
                progress(f"  {count} services programmed on every node in "
                         f"{applies[count]} s")
            settled[f"{count} services"] = round(bench.settle(f"{count} services"), 1)
            samples: dict = {}
            for mode in MODES:
                lab.set_module_config(f"bpfLBMode: {mode}\n", MODES[mode], timeout=120)
                settled[f"{count} services, {mode}"] = round(
                    bench.settle(f"switching {count} services to {mode}"), 1)
                paths = [clusterip] if mode == "SNAT" else []
                for r in range(rounds):
                    progress(f"cni-cilium, {count} services, {mode}, round {r + 1}/{rounds}")
                    bench.measure_round([direct, *paths, *external(mode)], samples)
                progress(f"cni-cilium, {count} services, {mode}: the programs' time per request")
                with bench.program_stats():
                    for path in [direct, *paths, *external(mode)]:
                        bench.program_cost(path, samples)
            cilium[count] = summarise(samples)
        if peer == "kube-proxy":
            objects, _problems = parse_documents(
                [d for text in lab.api.desired_files().values() for d in [json.loads(text)]],
                "store")
            ports = service_ports([o for o in objects if isinstance(o, Service)],
                                  [o for o in objects if isinstance(o, EndpointSlice)])
            measured = [p for p in ports if p.service in ("default/bench-http",
                                                          "default/bench-iperf")]
            extras = [p for p in ports if p.service.startswith("default/extra-")]
            _peer_setup(lab, progress)
            try:
                for count in counts:
                    text = iptables_restore_text(extras[:count - 1] + measured, "10.100.0.0/16")
                    started = time.monotonic()
                    _peer_program(lab, text)
                    progress(f"kube-proxy: {count} services ({text.count(chr(10))} lines) "
                             f"programmed on every node in {time.monotonic() - started:.1f} s")
                    samples = {}
                    for r in range(rounds):
                        progress(f"kube-proxy, {count} services, round {r + 1}/{rounds}")
                        bench.measure_round([direct, clusterip, *external("")], samples,
                                            paired=False)
                    proxy[count] = summarise(samples)
            finally:
                _attempt("kube-proxy peer teardown", lambda: _peer_teardown(lab, progress),
                         cleanup_errors, progress)
    finally:
        def restore() -> None:
            lab.set_module_config(TRAFFIC_CONFIG)
            lab.delete(docs + _extra_services(0, applied - 1))
            for name in ("bench-iperf", "bench-http", "bench-cli"):
                lab.pods.delete(name)
            lab.run(node("node2"), ["rm", "-f", NGINX_CONF])
        _attempt("restoring the cluster", restore, cleanup_errors, progress)
    return {"counts": list(counts), "rounds": rounds, "seconds": seconds, "cilium": cilium,
            "kubeProxy": proxy, "applySeconds": applies, "settleSeconds": settled,
            "cleanupErrors": cleanup_errors}


def _attempt(what: str, action: Callable[[], None], errors: list[str],
             progress: Callable[[str], None]) -> None:
    """Run a clean-up step; a failure is reported and kept with the results instead of
    discarding the figures measured before it."""
    try:
        action()
    except Exception as exc:          # whatever broke, the measurements stand
        errors.append(f"{what}: {type(exc).__name__}: {exc}")
        progress(f"{what} failed: {exc}")


def format_apply_results(results: dict) -> str:
    """The control path a user waits for: `apply` of the extra services until every
    node's agent lists them."""
    lines = ["apply (ApiServer.apply, one call) until every node's agent has the services:"]
    previous = 1
    # A --json document read back has its counts as string keys.
    applied = {int(count): seconds for count, seconds in results.get("applySeconds", {}).items()}
    for count, seconds in sorted(applied.items()):
        lines.append(f"  {count - previous:>6} services added ({count} in all): {seconds:.1f} s")
        previous = count
    waits = {k: v for k, v in results.get("settleSeconds", {}).items() if v > SETTLE_WINDOW_S * 1.5}
    if waits:
        lines.append(f"waited for the agents to go idle (< {SETTLE_SHARE:g} of a CPU) before "
                     "measuring:")
        lines += [f"  after {what}: {seconds:.0f} s" for what, seconds in waits.items()]
    return "\n".join(lines)


def _cell(value: float, base: float, digits: int, paired: float | None = None,
          spread: Sequence[float] = ()) -> str:
    """A figure and its ratio: the paired one (with its quartiles when given) when there
    is one, else value / base."""
    if not value:
        return "-"
    ratio = paired if paired is not None else (value / base if base else None)
    if ratio is None:
        return f"{value:,.{digits}f}"
    quartiles = f" [{spread[0]:.2f}-{spread[1]:.2f}]" if len(spread) == 2 else ""
    return f"{value:,.{digits}f} ({ratio:.2f}{quartiles})"


def format_traffic_results(results: dict) -> str:
    """One table: path and service count x (cni-cilium, kube-proxy), each figure with its
    ratio to pod->pod direct through cni-cilium at the same service count."""
    head = ["path", "services"]
    for _key, name in METRICS:
        head += [f"{name} cni-cilium", f"{name} kube-proxy"]
    rows = [head]
    for count in results["counts"]:
        # A --json document read back has its counts as string keys.
        ours = results["cilium"].get(count) or results["cilium"].get(str(count), {})
        theirs = results["kubeProxy"].get(count) or results["kubeProxy"].get(str(count), {})
        base = ours.get(DIRECT, {})
        for label in ours:
            peer_label = re.sub(r" \((SNAT)\)$", "", label)
            other = theirs.get(peer_label, {}) if peer_label != label or label in (
                DIRECT, "pod->ClusterIP") else {}
            row = [label, f"{count:,}"]
            for key, _name in METRICS:
                digits = 1 if key == "gbps" else 0
                paired = ours[label].get("ratios", {}).get(key)
                spread = ours[label].get("ratioQuartiles", {}).get(key, ())
                row += [_cell(ours[label][key], base.get(key, 0), digits, paired, spread),
                        _cell(other.get(key, 0), base.get(key, 0), digits)]
            rows.append(row)
    lines = [f"wrk -t1 -c{WRK_CONNECTIONS} (CPU {CLIENT_CPU}) and iperf3 against nginx / iperf3 "
             f"on node2 (CPU {SERVER_CPU}); medians of {results['rounds']} rounds of "
             f"{results['seconds']:g} s; (ratio to pod->pod direct, cni-cilium, same count: "
             "for cni-cilium the median of per-round ratios [their quartiles], each figure of "
             "a path measured right after the same figure of direct); "
             "kube-proxy's NodePort/LoadBalancer figures are on the SNAT rows (it masquerades)",
             "| " + " | ".join(rows[0]) + " |",
             "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    lines += format_program_costs(results)
    busiest = busiest_agent_cpu(results)
    if busiest:
        lines.append("busiest agent's CPU share during the cni-cilium wrk runs: median "
                     f"{_median(busiest):.2f}, max {max(busiest):.2f} of a CPU")
    lines += [f"clean-up failed: {e}" for e in results.get("cleanupErrors", [])]
    return "\n".join(lines)


def format_program_costs(results: dict) -> list[str]:
    """The table of the datapath's own time per request and path (pure; empty when the
    run measured none)."""
    rows = []
    for count in results["counts"]:
        ours = results["cilium"].get(count) or results["cilium"].get(str(count), {})
        for label, summary in ours.items():
            cost = summary.get("programs")
            if not cost:
                continue
            rows.append([label, f"{count:,}"] + [
                f"{cost[key]['bpfNsPerRequest'] / 1000:.2f} ({cost[key]['bpfRunsPerRequest']:g})"
                if cost.get(key, {}).get("bpfNsPerRequest") is not None else "-"
                for key in ("conn", "keepalive")])
    if not rows:
        return []
    return ["", "cni-cilium's BPF programs per request, all nodes together: µs of run time "
            "(program runs), from the kernel's run counters (kernel.bpf_stats_enabled) "
            "during one extra wrk run per path whose rate is not in the table above",
            "| path | services | new conn | keep-alive |", "|---|---|---|---|",
            *["| " + " | ".join(r) + " |" for r in rows]]


def busiest_agent_cpu(results: dict) -> list[float]:
    """Per cni-cilium wrk run, the largest agent CPU share of any node (pure; runs of
    records without `agentCpu` are skipped)."""
    shares = []
    for paths in results["cilium"].values():
        for summary in paths.values():
            for run in summary["samples"]["runs"]:
                for record in run.values():
                    if record.get("agentCpu"):
                        shares.append(max(record["agentCpu"].values()))
    return shares


def parse_counts(text: str, option: str) -> list[int]:
    """A comma-separated list of positive service counts; ValueError names the option."""
    try:
        counts = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        counts = []
    if not counts or any(c < 1 for c in counts):
        raise ValueError(f"{option}: {text!r}: expected positive integers separated by commas")
    return counts
MAGLEV_BACKENDS = (10, 100, 1000)


def maglev_benchmark(size: int = maglev.DEFAULT_TABLE_SIZE,
                     counts: Sequence[int] = MAGLEV_BACKENDS) -> list[dict]:
    """Per backend count: the table build time (uncached), and for one backend removed the
    table positions that moved and the lb_maglev chunks the agent rewrites."""
    out = []
    for n in counts:
        pool = [Backend(f"10.100.{1 + i // 250}.{2 + i % 250}", 8080) for i in range(n)]
        names = tuple(sorted(maglev.backend_name(b) for b in pool))
        started = time.perf_counter()
        maglev.build_table.__wrapped__(names, size)
        build_s = time.perf_counter() - started
        table_key = Frontend("10.96.0.1", 80, "TCP")
        before = dict(maglev.table_chunks(table_key, tuple(pool), size))
        after = dict(maglev.table_chunks(table_key, tuple(pool[1:]), size))
        old, new = maglev.table_for(pool, size), maglev.table_for(pool[1:], size)
        out.append({"backends": n, "tableSize": size, "build_s": build_s,
                    "moved": sum(1 for a, b in zip(old, new) if a != b),
                    "ofRemoved": sum(1 for b in old if b == pool[0]),
                    "chunksRewritten": sum(1 for k, v in after.items() if before.get(k) != v),
                    "chunks": len(before)})
    return out


def format_maglev_results(results: Sequence[dict]) -> str:
    lines = [f"maglev table build (pure Python, M = {results[0]['tableSize']}) and one "
             "backend removed",
             f"{'backends':>9} {'build':>9} {'moved':>7} {'of removed':>11} "
             f"{'chunks rewritten':>17}"]
    for r in results:
        lines.append(f"{r['backends']:>9} {1000 * r['build_s']:>7.1f}ms {r['moved']:>7} "
                     f"{r['ofRemoved']:>11} {r['chunksRewritten']:>8} / {r['chunks']}")
    return "\n".join(lines)


ALGORITHMS = ("random", "maglev", "least-conn")


def algorithm_benchmark(lab, seconds: float = 3.0, rounds: int = 3,
                        progress: Callable[[str], None] = print) -> dict:
    """Request rate (wrk, a new connection each: every one runs the selection) and iperf3
    throughput (one established flow: conntrack, no selection) from the external client
    through node1's NodePort of one service per algorithm, all selecting the same single
    backend pod on node2, so the differences are the selection's cost."""
    from .suites.lab import CLIENT, pod

    docs = []
    for algorithm in ALGORITHMS:
        for kind, port, target in (("http", 80, HTTP_PORT), ("iperf", IPERF_PORT, IPERF_PORT)):
            docs.append({"apiVersion": "v1", "kind": "Service",
                         "metadata": {"name": f"alg-{kind}-{algorithm}", "namespace": "default",
                                      "annotations": {"service.cilium.io/lb-algorithm":
                                                      algorithm}},
                         "spec": {"type": "NodePort", "selector": {"app": f"alg-{kind}"},
                                  "ports": [{"name": "tcp", "port": port, "targetPort": target,
                                             "protocol": "TCP"}]}})
    for name in ("alg-http", "alg-iperf"):
        if lab.pods.get("default", name):
            lab.pods.delete(name)
    lab.pods.run("node2", "alg-iperf", ["iperf3", "-s", "-p", str(IPERF_PORT)],
                 labels={"app": "alg-iperf"})
    lab.provider.put_file("node2", NGINX_CONF, (NGINX_CONFIG % HTTP_PORT).encode())
    lab.pods.run("node2", "alg-http", ["taskset", "-c", str(SERVER_CPU), "nginx", "-c",
                                       NGINX_CONF, "-p", "/tmp"], labels={"app": "alg-http"})
    lab.apply(docs)
    samples: dict[str, dict[str, list[float]]] = {a: {"gbps": [], "rps": []} for a in ALGORITHMS}
    traffic = TrafficBench(lab, seconds, progress)
    try:
        for doc in docs:
            lab.wait_programmed(f"default/{doc['metadata']['name']}", {"ClusterIP": 1})
        node1 = lab.provider.node("node1").ip
        lab.wait_for("each alg-* service to run its algorithm on node1", lambda: all(
            f["algorithm"] == f["algorithmRequested"] for f in lab.agent_view(
                "node1", "services")["frontends"] if f["service"].startswith(
                    "default/alg-")), timeout=20)
        lab.wait_for("iperf3 server", lambda: lab.run(pod("alg-iperf"), [
            "ss", "-ltn", f"sport = :{IPERF_PORT}"]).stdout.count("LISTEN"), timeout=10)
        for r in range(rounds):
            for algorithm in ALGORITHMS:
                progress(f"round {r + 1}/{rounds}: {algorithm}")
                http = lab.service(f"alg-http-{algorithm}")["spec"]["ports"][0]["nodePort"]
                iperf = lab.service(f"alg-iperf-{algorithm}")["spec"]["ports"][0]["nodePort"]
                samples[algorithm]["rps"].append(traffic.wrk(CLIENT, node1, http,
                                                             close=True)["rps"])
                samples[algorithm]["gbps"].append(traffic.iperf(CLIENT, node1, iperf))
    finally:
        lab.delete(docs)
        for name in ("alg-http", "alg-iperf"):
            lab.pods.delete(name)
    base = samples["random"]
    return {a: {"rps": _median(s["rps"]), "gbps": _median(s["gbps"]),
                "rps_ratio": _median(s["rps"]) / _median(base["rps"]),
                "gbps_ratio": _median(s["gbps"]) / _median(base["gbps"]), "samples": s}
            for a, s in samples.items()}


def format_algorithm_results(results: dict, seconds: float, rounds: int) -> str:
    lines = [f"client -> node1 NodePort (SNAT) -> one pod on node2, by algorithm; median of "
             f"{rounds} rounds of {seconds:g} s; ratios to random",
             f"{'algorithm':12} {'new conn/s':>11} {'ratio':>6} {'throughput':>12} {'ratio':>6}"]
    for algorithm, r in results.items():
        lines.append(f"{algorithm:12} {r['rps']:>11.0f} {r['rps_ratio']:>6.2f} "
                     f"{r['gbps']:>7.2f} Gb/s {r['gbps_ratio']:>6.2f}")
    return "\n".join(lines)
