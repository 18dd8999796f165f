"""`cni-harness kind ...`: the kind cluster config, the agent's manifests, checks, lifecycle."""

from __future__ import annotations

import argparse
import json

import yaml

from ..providers.base import ProviderUnavailable
from ..providers.kind import (
    DEFAULT_CLUSTER,
    DEFAULT_IMAGE,
    KindProvider,
    agent_manifests,
    check_host,
    cluster_config,
    config_problems,
    manifest_problems,
)
from .common import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_PROVIDER_UNAVAILABLE,
    CliError,
    print_check,
    unavailable,
    usage_error,
)


def _load_docs(path: str) -> list:
    with open(path, encoding="utf-8") as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]


def cmd_config(args: argparse.Namespace) -> int:
    print(yaml.safe_dump(cluster_config(args.name, args.nodes), sort_keys=False), end="")
    return EXIT_OK


def cmd_manifests(args: argparse.Namespace) -> int:
    module_config = None
    if args.config:
        with open(args.config, encoding="utf-8") as fh:
            module_config = fh.read()
    print(yaml.safe_dump_all(agent_manifests(args.image, module_config=module_config),
                             sort_keys=False), end="")
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate a kind config and manifests (given files, or the generated ones)."""
    try:
        config = _load_docs(args.kind_config)[0] if args.kind_config else cluster_config(
            args.name, args.nodes)
        docs = _load_docs(args.manifests) if args.manifests else agent_manifests(args.image)
    except (OSError, yaml.YAMLError, IndexError) as exc:
        raise usage_error(str(exc).replace("\n", " ")) from exc
    problems = [f"kind config: {p}" for p in config_problems(config)]
    problems += [f"manifests: {p}" for p in manifest_problems(docs)]
    if args.json:
        print(json.dumps({"ok": not problems, "problems": problems,
                          "objects": [f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"
                                      for d in docs if isinstance(d, dict)]}, indent=2))
    elif problems:
        raise CliError(problems)
    else:
        print(f"kind config valid (kind.x-k8s.io/v1alpha4 Cluster); {len(docs)} manifests "
              "valid against the Kubernetes API schema")
    return EXIT_FAIL if problems else EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    return print_check("kind", check_host(), args.json,
                       ok_message="kind: this host can run a kind cluster")


def _drive(action: str):
    def handler(args: argparse.Namespace) -> int:
        provider = KindProvider(cluster=args.name, node_count=args.nodes, image=args.image)
        if action != "status":
            available = check_host()
            if not available.ok:
                raise unavailable("kind", available)
        try:
            if action == "up":
                provider.up()
                print(provider.kubeconfig)
            elif action == "down":
                provider.down()
            else:
                print(json.dumps(provider.status(), indent=2))
        except ProviderUnavailable as exc:
            raise CliError(str(exc), EXIT_PROVIDER_UNAVAILABLE) from exc
        return EXIT_OK
    return handler


def register(sub: argparse._SubParsersAction) -> None:
    """Add `kind` and its subcommands to the cni-harness parser."""
    parser = sub.add_parser("kind", help="a kind cluster with cni-cilium as its CNI")
    ksub = parser.add_subparsers(dest="kind_command", metavar="SUBCOMMAND")
    ksub.required = True
    commands = [
        ("config", "print the kind cluster config (no default CNI, kube-proxy off)",
         cmd_config),
        ("manifests", "print the agent's RBAC, ConfigMap and DaemonSet", cmd_manifests),
        ("validate", "validate the kind config and the manifests against their schemas",
         cmd_validate),
        ("check", "what this host lacks to run kind (exit 3 when anything)", cmd_check),
        ("up", "create the cluster, build and load the agent image, deploy it", _drive("up")),
        ("down", "delete the cluster", _drive("down")),
        ("status", "the cluster's state and nodes", _drive("status")),
    ]
    for name, help_text, handler in commands:
        cmd = ksub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument("--name", default=DEFAULT_CLUSTER, help="kind cluster name")
        cmd.add_argument("--nodes", type=int, default=3, choices=range(1, 11),
                         metavar="N", help="nodes (1 control plane + N-1 workers)")
        cmd.add_argument("--image", default=DEFAULT_IMAGE, help="the agent image")
        cmd.add_argument("--json", action="store_true")
        if name == "manifests":
            cmd.add_argument("--config", help="ModuleConfig file to put in the ConfigMap")
        if name == "validate":
            cmd.add_argument("--kind-config", help="a kind config file (default: generated)")
            cmd.add_argument("--manifests", help="a manifests file (default: generated)")
        cmd.set_defaults(func=handler)
