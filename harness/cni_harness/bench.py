"""Datapath benchmarks: figures printed, never asserted as timings.

* Programming: N services with 10 backends each, from manifest text to the pinned maps,
  through the agent's own code (YAML parse, translation, diff, batched map writes), in a
  private bpffs; then one endpoint change applied as a diff. Entry counts read back from
  the maps must match what was asked, so a broken writer cannot print a good figure.
* Traffic (with a running cluster): TCP throughput (iperf3) and request rate (new
  connection per request) pod->pod direct, pod->ClusterIP and client->NodePort, to the same
  remote backend pod, with ratios to direct measured in the same run.
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


def program_results_json(compile_s: float, results: Sequence[ProgramResult]) -> str:
    return json.dumps({"compileSeconds": compile_s, "programming": [
        {**r.__dict__, "total_s": r.total_s} for r in results]}, indent=2)


def cmd_bench(args) -> int:
    """`cni-harness bench`: print the datapath figures of this machine."""
    counts = [int(c) for c in args.services.split(",") if c]
    compile_s, results = program_benchmark(counts, progress=lambda m: print(f"==> {m}",
                                                                            flush=True))
    if args.json:
        print(program_results_json(compile_s, results))
    else:
        print(format_program_results(compile_s, results))
    return 0


def register(sub) -> None:
    """Add `bench` to cni-harness's subcommands."""
    bench = sub.add_parser("bench", help="datapath benchmarks (figures, not pass/fail)")
    bench.add_argument("--services", default="1000,10000",
                       help="service counts to program (10 backends each; default %(default)s)")
    bench.add_argument("--json", action="store_true", help="print machine-readable JSON")
    bench.set_defaults(func=cmd_bench)
