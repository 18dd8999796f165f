"""`cni-cilium`: the node agent and its command-line tools."""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import __version__, nodecli, paths
from .config import ConfigError, Settings, defaults, load_settings_file
from .preflight import FAIL, Verdict, evaluate, parse_os_release

DEFAULT_CONFIG = paths.CONFIG
EXIT_OK, EXIT_UNSUPPORTED, EXIT_USAGE = 0, 1, 2


def _print_problems(problems: list[str]) -> None:
    for line in problems:
        print(f"error: {line}", file=sys.stderr)


def cmd_config_validate(args: argparse.Namespace) -> int:
    try:
        settings = load_settings_file(args.file)
    except ConfigError as exc:
        _print_problems(exc.problems)
        return EXIT_USAGE
    if args.json:
        print(settings.to_json())
        return EXIT_OK
    eff = settings.effective()
    print(f"{args.file}: valid")
    for key, value in eff["settings"].items():
        print(f"  {key}: {json.dumps(value)}")
    print("effective:")
    for key, value in eff["effective"].items():
        print(f"  {key}: {json.dumps(value)}")
    for warning in settings.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


def _load_optional_settings(path: str | None) -> Settings:
    if path:
        return load_settings_file(path)
    if os.path.exists(DEFAULT_CONFIG):
        return load_settings_file(DEFAULT_CONFIG)
    return defaults()


def cmd_preflight(args: argparse.Namespace) -> int:
    if bool(args.os_release) != bool(args.kernel_release):
        print("error: --os-release and --kernel-release go together", file=sys.stderr)
        return EXIT_USAGE
    try:
        settings = _load_optional_settings(args.config)
    except ConfigError as exc:
        _print_problems(exc.problems)
        return EXIT_USAGE
    remote = bool(args.os_release)
    os_release_path = args.os_release or "/etc/os-release"
    try:
        with open(os_release_path, encoding="utf-8") as fh:
            os_release = parse_os_release(fh.read())
    except OSError as exc:
        print(f"error: {os_release_path}: cannot read: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    kernel_release = args.kernel_release or os.uname().release
    verdict = evaluate(os_release, kernel_release, settings)
    if not remote:
        from .probes import live_probes  # edge: subprocess, mounts, bcc

        verdict = Verdict(verdict.checks + tuple(live_probes(settings)))
    report = {
        "supported": verdict.supported,
        "os": {k: os_release.get(k, "") for k in ("ID", "VERSION_ID", "PRETTY_NAME")},
        "kernelRelease": kernel_release,
        "liveProbes": not remote,
        "checks": [c.to_dict() for c in verdict.checks],
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['os']['PRETTY_NAME'] or report['os']['ID']}, kernel {kernel_release}"
              f"{'' if not remote else ' (rules only, no live probes)'}")
        for check in verdict.checks:
            print(f"  [{check.status:4}] {check.name}: {check.message}")
            if check.remedy and check.status == FAIL:
                print(f"         fix: {check.remedy}")
        print("supported" if verdict.supported else "NOT supported")
    return EXIT_OK if verdict.supported else EXIT_UNSUPPORTED


def cmd_agent(args: argparse.Namespace) -> int:
    from .agent.main import run

    return run(args.config, args.node_name, bpf_dir=args.bpf_dir, log_file=args.log_file,
               cluster_cidr=args.cluster_cidr, service_cidr=args.service_cidr,
               source=args.source, kubeconfig=args.kubeconfig)


def cmd_kube_proxy_cleanup(args: argparse.Namespace) -> int:
    from .kubeproxy import cleanup

    report = cleanup(dry_run=args.dry_run)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        for variant, tables in report["removed"].items():
            for table, chains in tables.items():
                verb = "would remove" if args.dry_run else "removed"
                print(f"{variant} {table}: {verb} {', '.join(chains) or 'jumps to KUBE-*'}")
        if not report["removed"]:
            print("no KUBE-* chains")
    for line in report["errors"]:
        print(f"error: {line}", file=sys.stderr)
    return EXIT_UNSUPPORTED if report["errors"] else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cni-cilium",
        description="cni-cilium node agent: eBPF pod networking and kube-proxy replacement.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    config = sub.add_parser("config", help="module configuration tools")
    config_sub = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    config_sub.required = True
    validate = config_sub.add_parser(
        "validate", help="validate a ModuleConfig or settings file and print effective values")
    validate.add_argument("file", help="ModuleConfig YAML (spec.settings) or a settings mapping")
    validate.add_argument("--json", action="store_true", help="print machine-readable JSON")
    validate.set_defaults(func=cmd_config_validate)

    preflight = sub.add_parser(
        "preflight", help="check that this host (or a described one) can run the module",
        description="Exit 0 when supported, 1 when not, 2 on bad input.")
    preflight.add_argument("--json", action="store_true", help="print every check as JSON")
    preflight.add_argument("--config", help=f"settings to check against (default {DEFAULT_CONFIG}"
                           " if present, else defaults)")
    preflight.add_argument("--os-release", metavar="FILE",
                           help="evaluate the rules for another machine's /etc/os-release")
    preflight.add_argument("--kernel-release", metavar="R",
                           help="that machine's `uname -r` (with --os-release; no live probes)")
    preflight.set_defaults(func=cmd_preflight)

    agent = sub.add_parser("agent", help="run the node agent in the foreground")
    agent.add_argument("--config", default=DEFAULT_CONFIG, help="module config file")
    agent.add_argument("--node-name", help="this node's name (default: the hostname)")
    agent.add_argument("--bpf-dir", help=f"BPF sources (default {paths.BPF_DIR}, else the "
                       "source checkout's bpf/)")
    agent.add_argument("--log-file", default=paths.AGENT_LOG,
                       help="log file, or - for stderr (default %(default)s)")
    agent.add_argument("--cluster-cidr", default="10.100.0.0/16",
                       help="all pods' addresses, never masqueraded (default %(default)s)")
    agent.add_argument("--service-cidr", default="10.96.0.0/16",
                       help="ClusterIP range routed via cilium_host (default %(default)s)")
    agent.add_argument("--source", choices=("manifests", "kube"), default="manifests",
                       help="desired state from the manifest directory (default) or the "
                       "Kubernetes API")
    agent.add_argument("--kubeconfig", help="with --source kube outside a pod "
                       "(default: the pod's service account, else ~/.kube/config)")
    agent.set_defaults(func=cmd_agent)
    nodecli.register(sub)

    kube_proxy = sub.add_parser("kube-proxy", help="kube-proxy replacement helpers")
    kp_sub = kube_proxy.add_subparsers(dest="kube_proxy_command", metavar="SUBCOMMAND")
    kp_sub.required = True
    kp_clean = kp_sub.add_parser(
        "cleanup", help="remove kube-proxy's KUBE-* iptables chains (nft and legacy)")
    kp_clean.add_argument("--json", action="store_true")
    kp_clean.add_argument("--dry-run", action="store_true", help="only report what is there")
    kp_clean.set_defaults(func=cmd_kube_proxy_cleanup)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `cni-cilium` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
