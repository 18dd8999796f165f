"""Datapath benchmarks: figures printed, never asserted as timings.

* Programming: N services with 10 backends each, from manifest text to the pinned maps,
  through the agent's own code (YAML parse, translation, diff, batched map writes), in a
  private bpffs; then one endpoint change applied as a diff. Entry counts read back from
  the maps must match what was asked, so a broken writer cannot print a good figure.
* Traffic (with a running cluster): TCP throughput (iperf3) and request rate (new
  connection per request) pod->pod direct, pod->ClusterIP and client->NodePort (SNAT, then
  DSR), to the same remote backend pod, with ratios to direct measured in the same run.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import yaml

from cni_cilium.config import settings_from_mapping
from cni_cilium.datapath import loader
from cni_cilium.datapath.writer import write_ops
from cni_cilium.manifests import parse_documents
from cni_cilium.translate import DesiredState, apply_ops, diff_maps, translate

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
    with private_bpffs() as bpffs:
        dp = loader.load(loader.find_bpf_dir(), pin_root=os.path.join(bpffs, "cni-cilium"),
                         bpffs=bpffs)
        maps = {name: dp.open_map(name) for name in ("node_cfg", "no_masq", "lb_slots",
                                                     "lb_frontends")}
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
        for m in maps.values():
            m.close()
        compile_s = dp.compile_seconds
        del dp
    return compile_s, results


def format_program_results(compile_s: float, results: Sequence[ProgramResult]) -> str:
    lines = [f"bcc compile + load of the 5 programs: {compile_s:.2f} s",
             f"{'services':>9} {'map entries':>12} {'parse':>8} {'translate':>10} {'diff':>7} "
             f"{'write':>7} {'total':>7} {'1-endpoint change':>22}"]
    for r in results:
        lines.append(f"{r.services:>9} {r.entries:>12} {r.parse_s:>7.2f}s {r.translate_s:>9.2f}s"
                     f" {r.diff_s:>6.2f}s {r.write_s:>6.2f}s {r.total_s:>6.2f}s "
                     f"{r.update_ops:>5} writes {r.update_s:>6.2f}s")
    return "\n".join(lines)




TRAFFIC_CONFIG = "bpfLBMode: SNAT\n"
IPERF_PORT = 5201


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def traffic_benchmark(lab, seconds: float = 3.0, rounds: int = 3,
                      progress: Callable[[str], None] = print) -> dict:
    """Throughput and request rate to one backend pod on node2: pod to pod, through a
    ClusterIP, and from the external client through node1's NodePort in SNAT and then, with
    the agents switched to DSR, by direct server return."""
    from .suites.lab import CLIENT, PEER_PORT, pod

    progress("starting benchmark pods and services ...")
    docs = [{"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": name, "namespace": "default"},
             "spec": {"type": "NodePort", "selector": {"app": name},
                      "ports": [{"name": "tcp", "port": port, "targetPort": target,
                                 "protocol": "TCP"}]}}
            for name, port, target in (("bench-iperf", IPERF_PORT, IPERF_PORT),
                                       ("bench-http", 80, PEER_PORT))]
    for name in ("bench-iperf", "bench-http", "bench-cli"):
        if lab.pods.get("default", name):
            lab.pods.delete(name)
    iperf = lab.pods.run("node2", "bench-iperf", ["iperf3", "-s", "-p", str(IPERF_PORT)],
                         labels={"app": "bench-iperf"})
    http = lab.start_peer_pod("node2", "bench-http", {"app": "bench-http"})
    lab.start_peer_pod("node1", "bench-cli", {"app": "bench-cli"})
    lab.apply(docs)
    try:
        lab.wait_programmed("default/bench-iperf", {"ClusterIP": 1})
        lab.wait_programmed("default/bench-http", {"ClusterIP": 1})
        node1 = lab.provider.node("node1").ip
        svc_iperf, svc_http = lab.service("bench-iperf"), lab.service("bench-http")
        paths = {
            "pod->pod direct": (pod("bench-cli"), (iperf.ip, IPERF_PORT), (http.ip, PEER_PORT)),
            "pod->ClusterIP": (pod("bench-cli"), (svc_iperf["spec"]["clusterIP"], IPERF_PORT),
                               (svc_http["spec"]["clusterIP"], 80)),
            "client->NodePort (SNAT)": (CLIENT, (node1, svc_iperf["spec"]["ports"][0]["nodePort"]),
                                 (node1, svc_http["spec"]["ports"][0]["nodePort"])),
        }
        samples: dict[str, dict[str, list[float]]] = {
            p: {"gbps": [], "rps": []} for p in paths}
        lab.wait_for("iperf3 server", lambda: lab.run(pod("bench-iperf"), [
            "ss", "-ltn", f"sport = :{IPERF_PORT}"]).stdout.count("LISTEN"), timeout=10)

        def measure(label: str, where, ihost: str, iport: int, hhost: str, hport: int) -> None:
            res = lab.run(where, ["iperf3", "-c", ihost, "-p", str(iport), "-t",
                                  str(seconds), "-J"], timeout=seconds + 30, check=True)
            bps = json.loads(res.stdout)["end"]["sum_received"]["bits_per_second"]
            samples.setdefault(label, {"gbps": [], "rps": []})["gbps"].append(bps / 1e9)
            res = lab.run(where, ["python3", lab.tool(where, "probe.py"), "rate", hhost,
                                  str(hport), "--seconds", str(seconds)],
                          timeout=seconds + 30, check=True)
            samples[label]["rps"].append(json.loads(res.stdout)["rate"])

        for r in range(rounds):
            for label, (where, (ihost, iport), (hhost, hport)) in paths.items():
                progress(f"round {r + 1}/{rounds}: {label}")
                measure(label, where, ihost, iport, hhost, hport)
        lab.set_module_config("bpfLBMode: DSR\n", {"TCP": "DSR", "UDP": "DSR"})
        where, (ihost, iport), (hhost, hport) = paths["client->NodePort (SNAT)"]
        for r in range(rounds):
            progress(f"round {r + 1}/{rounds}: client->NodePort (DSR)")
            measure("client->NodePort (DSR)", where, ihost, iport, hhost, hport)
    finally:
        lab.set_module_config(TRAFFIC_CONFIG)
        lab.delete(docs)
        for name in ("bench-iperf", "bench-http", "bench-cli"):
            lab.pods.delete(name)
    direct = samples["pod->pod direct"]
    return {label: {"gbps": _median(s["gbps"]), "rps": _median(s["rps"]),
                    "gbps_ratio": _median(s["gbps"]) / _median(direct["gbps"]),
                    "rps_ratio": _median(s["rps"]) / _median(direct["rps"]),
                    "samples": s} for label, s in samples.items()}


def format_traffic_results(results: dict, seconds: float, rounds: int) -> str:
    lines = [f"TCP, one backend pod on node2; median of {rounds} rounds of {seconds:g} s each",
             f"{'path':24} {'throughput':>12} {'ratio':>6} {'requests/s':>11} {'ratio':>6}"]
    for label, r in results.items():
        lines.append(f"{label:24} {r['gbps']:>8.2f} Gb/s {r['gbps_ratio']:>6.2f} "
                     f"{r['rps']:>11.0f} {r['rps_ratio']:>6.2f}")
    return "\n".join(lines)
