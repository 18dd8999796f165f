"""`cni-harness` subcommands for clusters: cluster, node, pod, apply/delete, deploy, bench.

Handlers only: parse, call the provider or the harness modules, print, map errors to the
exit statuses of docs/architecture.md (0 ok, 1 failed, 2 bad input, 3 provider unavailable).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from .addressing import DEFAULT_CLUSTER, DEFAULT_NODES, PlanError
from .providers.base import EXIT_PROVIDER_UNAVAILABLE, ProviderUnavailable
from .providers.local import ClusterError, LocalProvider, NodeDown

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def progress(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def provider_for(args: argparse.Namespace) -> LocalProvider:
    return LocalProvider(args.name, getattr(args, "nodes", DEFAULT_NODES), progress=progress)


def _fail(message: str, status: int = EXIT_FAIL) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


def guarded(handler):
    """Map the harness's expected errors to one-line messages and exit statuses."""
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except PlanError as exc:
            return _fail(str(exc), EXIT_USAGE)
        except ProviderUnavailable as exc:
            return _fail(str(exc), EXIT_PROVIDER_UNAVAILABLE)
        except KeyError as exc:
            return _fail(str(exc.args[0]) if exc.args else str(exc), EXIT_USAGE)
        except ClusterError as exc:
            return _fail(str(exc))
    run.__doc__ = handler.__doc__
    return run


# ---------------------------------------------------------------- cluster

@guarded
def cmd_cluster_up(args: argparse.Namespace) -> int:
    if args.config:
        from cni_cilium.config import ConfigError, load_settings_file
        try:
            load_settings_file(args.config)
        except ConfigError as exc:
            for line in exc.problems:
                print(f"error: {line}", file=sys.stderr)
            return EXIT_USAGE
    provider = provider_for(args)
    provider.up()
    if args.config:
        from .deploy import record_config
        record_config(provider.state_dir, args.config)
    status = provider.status()
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        _print_status(status)
    return EXIT_OK


@guarded
def cmd_cluster_down(args: argparse.Namespace) -> int:
    provider_for(args).down()
    return EXIT_OK


def _print_status(status: dict) -> None:
    print(f"cluster {status['cluster']} ({status['provider']}): {status['state']}")
    if status["state"] == "absent":
        return
    print(f"  inventory:  {status['inventory']}\n  ssh config: {status['sshConfig']}")
    print(f"  client {status['client']['ip']} ({status['client']['netns']}), "
          f"world {status['world']['ip']} ({status['world']['netns']})")
    for node in status["nodes"]:
        role = " control-plane" if "node-role.kubernetes.io/control-plane" in node["labels"] \
            else ""
        print(f"  {node['name']:8} {node['ip']:12} pods {node['podCIDR']:15} "
              f"{node['state']}{role}")


@guarded
def cmd_cluster_status(args: argparse.Namespace) -> int:
    status = provider_for(args).status()
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        _print_status(status)
    return EXIT_OK if status["state"] == "running" else EXIT_FAIL


# ---------------------------------------------------------------- node

def _strip_dashdash(argv: list[str]) -> list[str]:
    return argv[1:] if argv and argv[0] == "--" else argv


@guarded
def cmd_node_exec(args: argparse.Namespace) -> int:
    argv = _strip_dashdash(args.argv)
    if not argv:
        return _fail("node exec: give a command after --", EXIT_USAGE)
    provider = provider_for(args)
    try:
        cmd = provider.exec_command(args.node, argv)
    except NodeDown as exc:
        return _fail(str(exc))
    return subprocess.run(cmd, check=False).returncode


@guarded
def cmd_node_reboot(args: argparse.Namespace) -> int:
    provider = provider_for(args)
    before = provider.boot_id(args.node)
    started = time.monotonic()
    provider.reboot(args.node, hard=args.hard)
    from .pods import restart_node_pods
    restart_node_pods(provider, args.node, progress=progress)
    from .apiserver import ApiServer
    ApiServer.for_provider(provider).sync(nodes=[args.node])
    print(f"{args.node} rebooted in {time.monotonic() - started:.2f} s: boot id {before} -> "
          f"{provider.boot_id(args.node)}")
    return EXIT_OK


@guarded
def cmd_node_ssh(args: argparse.Namespace) -> int:
    provider = provider_for(args)
    provider.plan().node(args.node)
    if not os.path.exists(provider.ssh_config_path):
        return _fail(f"cluster {args.name} is not up (no {provider.ssh_config_path})")
    argv = ["ssh", "-F", provider.ssh_config_path, args.node, *_strip_dashdash(args.argv)]
    os.execvp("ssh", argv)
    return EXIT_FAIL  # not reached


# ---------------------------------------------------------------- parser

def _cluster_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default=DEFAULT_CLUSTER,
                        help=f"cluster name (default {DEFAULT_CLUSTER})")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the cluster, node, pod, apply, delete, deploy and bench commands."""
    cluster = sub.add_parser("cluster", help="local namespace clusters: up, down, status")
    csub = cluster.add_subparsers(dest="cluster_command", metavar="SUBCOMMAND")
    csub.required = True
    up = csub.add_parser("up", help="create a cluster (fabric, client, world, nodes with sshd)",
                         description="Create (or find already up) a local namespace cluster.")
    _cluster_args(up)
    up.add_argument("--nodes", type=int, default=DEFAULT_NODES,
                    help=f"number of nodes (default {DEFAULT_NODES}; node1 is the control plane)")
    up.add_argument("--config", metavar="MODULECONFIG",
                    help="ModuleConfig to deploy later with `cni-harness deploy` (validated now)")
    up.add_argument("--json", action="store_true")
    up.set_defaults(func=cmd_cluster_up)
    down = csub.add_parser("down", help="remove everything a cluster made (also after a crash)")
    _cluster_args(down)
    down.set_defaults(func=cmd_cluster_down)
    st = csub.add_parser("status", help="nodes, addresses, state; exit 1 unless running")
    _cluster_args(st)
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_cluster_status)

    node = sub.add_parser("node", help="nodes of a cluster: exec, reboot, ssh")
    nsub = node.add_subparsers(dest="node_command", metavar="SUBCOMMAND")
    nsub.required = True
    ex = nsub.add_parser("exec", help="run a command as root on a node (its namespaces)",
                         description="Example: cni-harness node exec node1 -- ip addr")
    _cluster_args(ex)
    ex.add_argument("node")
    ex.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD...")
    ex.set_defaults(func=cmd_node_exec)
    rb = nsub.add_parser("reboot", help="reboot a node: processes killed, namespaces rebuilt, "
                         "new boot id, boot sequence (sshd, then the agent if installed)")
    _cluster_args(rb)
    rb.add_argument("node")
    rb.add_argument("--hard", action="store_true", help="kill at once (no service stop)")
    rb.set_defaults(func=cmd_node_reboot)
    ssh = nsub.add_parser("ssh", help="ssh to a node through its sshd")
    _cluster_args(ssh)
    ssh.add_argument("node")
    ssh.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD...")
    ssh.set_defaults(func=cmd_node_ssh)
