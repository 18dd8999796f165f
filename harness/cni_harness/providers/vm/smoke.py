"""The VM smoke: image, boot, deploy with playbooks/site.yml, a little real traffic.

`python -m cni_harness.providers.vm.smoke --cluster NAME --out result.json` brings a VM
cluster up (baking the image first when the cache lacks it), deploys the module through
the systemd path, starts peer pods, and probes a NodePort from the external client and
one pod from a pod on another node. It writes what it measured and observed as JSON, and
always takes the cluster down again (also on SIGTERM, which is how a caller bounds it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable

from ...deploy.playbook import CONFIG_NAME, run_playbook
from ...signals import sigterm_exits
from ...state import write_atomic
from ...suites.lab import CLIENT, Lab, errors, names, node, pod
from ...timescale import ENV as TIME_SCALE_ENV
from . import image as vm_image
from .provider import VmProvider

CONFIG = "bpfLBMode: Hybrid\ntunnelMode: Disabled\n"
AGENT_UNIT = "cni-cilium-agent.service"
TRIES = 6


def service(name: str, selector: dict[str, str]) -> dict:
    """A NodePort service for the peer servers' HTTP port."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "NodePort", "selector": selector,
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080,
                                "protocol": "TCP"}]}}


def traffic(lab: Lab, nodes: list[str], progress: Callable[[str], None]) -> dict:
    """Backends on the workers, a client pod on the control plane; probes and evidence."""
    workers = nodes[1:] or nodes
    backends = {f"web-{i}": n for i, n in enumerate(workers, start=1)}
    for name, where in backends.items():
        lab.start_peer_pod(where, name, {"app": "web"})
    client_pod = lab.start_peer_pod(nodes[0], "cl-1", {"app": "client"})
    lab.apply([service("web", {"app": "web"})])
    lab.wait_programmed("default/web", timeout=60)
    node_port = lab.service("web")["spec"]["ports"][0]["nodePort"]
    entry = lab.provider.node(nodes[0]).ip
    progress(f"probing NodePort {entry}:{node_port} from the client")
    from_client = lab.probe(CLIENT, "tcp", entry, node_port, count=TRIES, timeout=3)
    target = next(r for r in lab.pods.list() if r.name == "web-1")
    progress(f"probing pod web-1 ({target.ip} on {target.node}) from cl-1 on {nodes[0]}")
    pod_to_pod = lab.probe(pod("cl-1"), "tcp", target.ip, 8080, count=3, timeout=3)
    agents = {n: lab.agent(n, "status")["state"] for n in nodes}
    units = {n: lab.run(node(n), ["systemctl", "is-active", AGENT_UNIT]).stdout.strip()
             for n in nodes}
    return {"nodePort": {"address": f"{entry}:{node_port}", "answeredBy": dict(names(
                from_client)), "errors": errors(from_client)},
            "podToPod": {"from": f"cl-1 {client_pod.ip} on {nodes[0]}",
                         "to": f"web-1 {target.ip} on {target.node}",
                         "answeredBy": dict(names(pod_to_pod)), "errors": errors(pod_to_pod),
                         "peersSeen": sorted({a.get("peer", "") for a in pod_to_pod})},
            "backends": backends, "agents": agents, "agentUnits": units}


def run(cluster: str, nodes: int, os_entry: str, keep: bool, reboot: bool,
        progress: Callable[[str], None], record: dict[str, Any]) -> dict:
    """The smoke; fills and returns `record` (timings in seconds, what each step
    observed), also as far as it got when a step fails."""
    provider = VmProvider(cluster, nodes=nodes, os_entry=os_entry, progress=progress)
    os.environ.setdefault(TIME_SCALE_ENV, f"{provider.time_scale():g}")
    record.update({"cluster": cluster, "osEntry": os_entry, "nodes": nodes,
                   "timeScale": float(os.environ[TIME_SCALE_ENV]), "seconds": {}})
    seconds = record["seconds"]
    try:
        started = time.monotonic()
        image = vm_image.ensure_image(provider.image_spec(), progress=progress)
        seconds["image"] = round(time.monotonic() - started, 1)
        record["image"] = {"key": image.key, "kernel": image.kernel_release,
                           "bakeSeconds": image.bake_seconds}
        started = time.monotonic()
        provider.down()              # whatever an earlier run of this name left
        provider.up()
        seconds["up"] = round(time.monotonic() - started, 1)
        started = time.monotonic()
        # Recorded as the cluster's config, which every later deploy of it uses too.
        write_atomic(os.path.join(provider.state_dir, CONFIG_NAME), CONFIG)
        result = run_playbook(provider, progress=progress)
        seconds["deploy"] = round(time.monotonic() - started, 1)
        record["deploy"] = {"rc": result.rc, "failedTasks": result.failed_tasks,
                            "changed": result.changed}
        if result.rc != 0:
            return record
        started = time.monotonic()
        lab = Lab(provider, progress=progress)
        lab.install_tools()
        names_ = [n.name for n in provider.nodes()]
        record["bootIds"] = {n: provider.boot_id(n) for n in names_}
        record["traffic"] = traffic(lab, names_, progress)
        seconds["traffic"] = round(time.monotonic() - started, 1)
        if reboot:
            started = time.monotonic()
            last = names_[-1]
            provider.reboot(last)
            record["reboot"] = {"node": last, "bootIdAfter": provider.boot_id(last),
                                "generation": provider.generation(last),
                                "agentUnit": lab.run(node(last), [
                                    "systemctl", "is-active", AGENT_UNIT]).stdout.strip()}
            seconds["reboot"] = round(time.monotonic() - started, 1)
        return record
    finally:
        if not keep:
            started = time.monotonic()
            provider.down()
            seconds["down"] = round(time.monotonic() - started, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vm-smoke", description=__doc__)
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--os-entry", default="debian-12")
    parser.add_argument("--out", required=True, help="where the JSON record goes")
    parser.add_argument("--keep", action="store_true", help="leave the cluster running")
    parser.add_argument("--reboot", action="store_true", help="also reboot the last node")
    args = parser.parse_args(argv)
    began = time.monotonic()

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - began:7.1f}s] {message}", flush=True)

    record: dict[str, Any] = {}
    try:
        with sigterm_exits():
            run(args.cluster, args.nodes, args.os_entry, args.keep, args.reboot, progress, record)
        return 0 if record.get("deploy", {}).get("rc") == 0 else 1
    except BaseException as exc:
        record["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        record["totalSeconds"] = round(time.monotonic() - began, 1)
        write_atomic(args.out, json.dumps(record, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    sys.exit(main())
