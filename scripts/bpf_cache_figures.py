#!/usr/bin/env python3
"""The datapath compile cache's figures on this machine (as root, in the project's venv):

1. fresh 3-node clusters deployed with `playbooks/site.yml`: without seeding (every agent
   compiles, as before the cache), seeded from an empty controller store (one compile),
   seeded with the entry kept on the controller (no compile); the time of the deploy's
   agent-start tasks (from ansible-runner's events) and of the whole deploy;
2. on the last cluster, alternating `--rounds` times: an agent restart and a node reboot
   until the agent runs, with the node's cache entry removed (compile) and present (hit).

Prints the figures, or JSON with --json. Nothing is asserted: the machine may be shared.
    .venv/bin/python scripts/bpf_cache_figures.py [--name bcf] [--rounds 2] [--json]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time
from datetime import datetime

from cni_harness.deploy.playbook import run_playbook
from cni_harness.testing import fresh_local_cluster

CLI = "/opt/cni-cilium/venv/bin/cni-cilium"
ENTRIES = "/var/cache/cni-cilium/bpf/*.json"
# The deploy's tasks around the agents' start (the rest does not depend on the cache).
START_TASKS = (
    "Learn this node's datapath compile-cache key",
    "Compile once per key, on the first node with it, unless the controller keeps it",
    "Keep the entry on the controller",
    "Give every node its key's entry before its agent starts",
    "Restart the cni-cilium agent (nodeinit)",
    "Wait until the agent runs, or learn why it could not start",
)


def task_seconds(state_dir: str) -> dict[str, float]:
    """Wall time of each task over all hosts (first start to last end)."""
    spans: dict[str, tuple[datetime, datetime]] = {}
    pattern = os.path.join(state_dir, "ansible-runner", "artifacts", "*", "job_events", "*.json")
    for path in glob.glob(pattern):
        with open(path, encoding="utf-8") as fh:
            event = json.load(fh)
        data = event.get("event_data", {})
        if not data.get("start") or event.get("event") not in ("runner_on_ok",
                                                               "runner_on_failed"):
            continue
        start, end = datetime.fromisoformat(data["start"]), datetime.fromisoformat(data["end"])
        low, high = spans.get(data["task"], (start, end))
        spans[data["task"]] = (min(low, start), max(high, end))
    return {task: round((high - low).total_seconds(), 1) for task, (low, high) in spans.items()}


def deploy_figures(provider, extravars: dict) -> dict:
    result = run_playbook(provider, extravars=extravars)
    if result.rc != 0:
        raise SystemExit(f"deploy failed: {result.failed_tasks}")
    tasks = task_seconds(provider.state_dir)
    agents = {node: json.loads(provider.exec(node, [CLI, "status", "--json"]).stdout)["bpf"]
              for node in ("node1", "node2", "node3")}
    return {"deploySeconds": round(result.seconds, 1),
            "agentStartTasks": {t: tasks[t] for t in START_TASKS if t in tasks},
            "agentStartSeconds": round(sum(tasks.get(t, 0.0) for t in START_TASKS), 1),
            "agents": {node: [bpf["origin"], bpf["compileSeconds"], bpf["loadSeconds"]]
                       for node, bpf in agents.items()}}


def until_running(provider, node: str, action) -> tuple[float, str]:
    """Seconds from `action` to a running agent on `node`, and where its programs came from."""
    since = provider.exec(node, ["date", "+%s.%N"]).stdout.strip()
    started = time.monotonic()
    action()
    ready = provider.exec(node, [CLI, "wait-ready", "--since", since, "--timeout", "900",
                                 "--json"]).stdout
    if json.loads(ready)["state"] != "running":
        raise SystemExit(f"{node}: agent not running: {ready}")
    seconds = time.monotonic() - started
    return round(seconds, 2), json.loads(provider.exec(node, [CLI, "status", "--json"])
                                         .stdout)["bpf"]["origin"]


def start_figures(provider, rounds: int) -> dict:
    out: dict[str, list] = {"restart": [], "reboot": []}
    actions = {
        "restart": ("node2", lambda: provider.exec(
            "node2", ["nodectl", "restart", "cni-cilium-agent.service"])),
        "reboot": ("node3", lambda: provider.reboot("node3")),
    }
    for _ in range(rounds):
        for kind, (node, action) in actions.items():
            provider.exec(node, ["sh", "-c", f"rm -f {ENTRIES}"])
            out[kind].append(("entry removed", *until_running(provider, node, action)))
            out[kind].append(("entry present", *until_running(provider, node, action)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default="bcf", help="cluster name (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="restart/reboot pairs")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    figures: dict = {"loadAverage": [os.getloadavg()]}
    with tempfile.TemporaryDirectory(prefix="bpf-cache-store-") as store:
        runs = (("withoutSeeding", {"cni_cilium_bpf_cache_seed": False}),
                ("seededFromEmptyStore", {"configure_bpf_cache_store": store}),
                ("seededEntryKept", {"configure_bpf_cache_store": store}))
        for index, (label, extravars) in enumerate(runs):
            with fresh_local_cluster(args.name) as provider:
                figures[label] = deploy_figures(provider, extravars)
                if index == len(runs) - 1:
                    figures["starts"] = start_figures(provider, args.rounds)
            figures["loadAverage"].append(os.getloadavg())
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    for label, _ in runs:
        run = figures[label]
        print(f"{label}: deploy {run['deploySeconds']} s, agents' start tasks "
              f"{run['agentStartSeconds']} s {run['agentStartTasks']}, agents {run['agents']}")
    for kind, samples in figures["starts"].items():
        print(f"{kind}: " + "; ".join(f"{what} {secs} s ({origin})"
                                      for what, secs, origin in samples))
    print(f"load average (1, 5, 15 min) before/after each cluster: {figures['loadAverage']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
