"""`cni-harness` subcommands for clusters: cluster, node, pod, apply/delete, deploy, bench.

Handlers only: parse, call the provider or the harness modules, print; the harness's
expected errors become `CliError`s with the exit statuses of docs/architecture.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from ..providers.base import NodeDown, ProviderUnavailable
from ..providers.local.addressing import DEFAULT_CLUSTER, DEFAULT_NODES, PlanError
from ..providers.local.provider import ClusterError, LocalProvider
from .common import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_PROVIDER_UNAVAILABLE,
    EXIT_USAGE,
    CliError,
    usage_error,
)


def progress(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def provider_for(args: argparse.Namespace) -> LocalProvider:
    return LocalProvider(args.name, getattr(args, "nodes", DEFAULT_NODES), progress=progress)


def guarded(handler):
    """Turn the harness's expected errors into `CliError`s with their exit statuses."""
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except PlanError as exc:
            raise usage_error(str(exc)) from exc
        except ProviderUnavailable as exc:
            raise CliError(str(exc), EXIT_PROVIDER_UNAVAILABLE) from exc
        except KeyError as exc:
            raise usage_error(str(exc.args[0]) if exc.args else str(exc)) from exc
        except (ClusterError, NodeDown) as exc:
            raise CliError(str(exc)) from exc
    run.__doc__ = handler.__doc__
    return run


def _check_config(path: str) -> None:
    """Validate a ModuleConfig before anything is done with it (exit 2 naming each problem)."""
    from cni_cilium.config import ConfigError, load_settings_file
    try:
        load_settings_file(path)
    except ConfigError as exc:
        raise usage_error(exc.problems) from exc


# ---------------------------------------------------------------- cluster

@guarded
def cmd_cluster_up(args: argparse.Namespace) -> int:
    if args.config:
        _check_config(args.config)
    provider = provider_for(args)
    provider.up()
    if args.source_guard is not None:
        provider.set_source_guard(args.source_guard)
    if args.config:
        from ..deploy.playbook import record_config
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
    guard = status.get("sourceGuard") or {}
    if guard.get("enabled"):
        drops = ", ".join(f"{n} {c}" for n, c in sorted(guard["drops"].items()))
        print(f"  source guard: on (packets dropped per node port: {drops})")


@guarded
def cmd_cluster_status(args: argparse.Namespace) -> int:
    status = provider_for(args).status()
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        _print_status(status)
    return EXIT_OK if status["state"] == "running" else EXIT_FAIL


# ---------------------------------------------------------------- node

@guarded
def cmd_node_exec(args: argparse.Namespace) -> int:
    argv = list(args.argv)
    if not argv:
        raise usage_error("node exec: give a command after --")
    cmd = provider_for(args).exec_command(args.node, argv)   # NodeDown: exit 1 (guarded)
    return subprocess.run(cmd, check=False).returncode


@guarded
def cmd_node_reboot(args: argparse.Namespace) -> int:
    provider = provider_for(args)
    before = provider.boot_id(args.node)
    started = time.monotonic()
    provider.reboot(args.node, hard=args.hard)
    from ..cluster.pods import restart_node_pods
    restart_node_pods(provider, args.node, progress=progress)
    print(f"{args.node} rebooted in {time.monotonic() - started:.2f} s: boot id {before} -> "
          f"{provider.boot_id(args.node)}")
    return EXIT_OK


@guarded
def cmd_node_stop(args: argparse.Namespace) -> int:
    provider = provider_for(args)
    started = time.monotonic()
    provider.stop_node(args.node)
    print(f"{args.node} stopped in {time.monotonic() - started:.2f} s")
    return EXIT_OK


@guarded
def cmd_node_start(args: argparse.Namespace) -> int:
    provider = provider_for(args)
    started = time.monotonic()
    provider.start_node(args.node)
    from ..cluster.pods import restart_node_pods
    restart_node_pods(provider, args.node, progress=progress)
    print(f"{args.node} started in {time.monotonic() - started:.2f} s: boot id "
          f"{provider.boot_id(args.node)}")
    return EXIT_OK


@guarded
def cmd_node_ssh(args: argparse.Namespace) -> int:
    provider = provider_for(args)
    provider.plan().node(args.node)
    if not os.path.exists(provider.ssh_config_path):
        raise CliError(f"cluster {args.name} is not up (no {provider.ssh_config_path})")
    argv = ["ssh", "-F", provider.ssh_config_path, args.node, *list(args.argv)]
    os.execvp("ssh", argv)
    return EXIT_FAIL  # not reached


# ---------------------------------------------------------------- pods

def _require_up(provider: LocalProvider) -> None:
    if not provider.journal.exists():
        raise ClusterError(f"cluster {provider.cluster} is not up; run `cni-harness cluster up "
                           f"--name {provider.cluster}`")


def _pod_runtime(args: argparse.Namespace):
    from ..cluster.pods import PodRuntime
    provider = provider_for(args)
    _require_up(provider)
    return PodRuntime(provider, progress=progress)


def _pod_guard(handler):
    def run(args: argparse.Namespace) -> int:
        from ..cluster.cniruntime import CniCallError
        from ..cluster.pods import PodError
        try:
            return handler(args)
        except (PodError, CniCallError) as exc:
            err = getattr(exc, "error", None)
            if err:
                print(json.dumps(err, indent=2), file=sys.stderr)
            raise CliError(str(exc)) from exc
    run.__doc__ = handler.__doc__
    return guarded(run)


@_pod_guard
def cmd_pod_run(args: argparse.Namespace) -> int:
    from ..cluster.pods import PodError, parse_labels, parse_port
    argv = list(args.argv)
    try:
        labels = parse_labels(args.label)
        ports = [parse_port(p) for p in args.port]
    except PodError as exc:
        raise usage_error(str(exc)) from exc
    if not argv:
        raise usage_error("pod run: give the pod's command after --")
    runtime = _pod_runtime(args)
    try:
        rec = runtime.run(args.node, args.pod, argv, namespace=args.namespace, labels=labels,
                          ports=ports, host_network=args.host_network)
    except PodError as exc:
        raise CliError(str(exc), EXIT_USAGE if "invalid" in str(exc) else EXIT_FAIL) from exc
    if args.json:
        from dataclasses import asdict
        print(json.dumps(asdict(rec), indent=2))
    else:
        print(f"pod {rec.namespace}/{rec.name} on {rec.node}: {rec.ip} (pid {rec.pid}, "
              f"log {rec.log_path})")
    return EXIT_OK


@_pod_guard
def cmd_pod_delete(args: argparse.Namespace) -> int:
    rec = _pod_runtime(args).delete(args.pod, args.namespace)
    print(f"pod {rec.namespace}/{rec.name} deleted (was {rec.ip} on {rec.node})")
    return EXIT_OK


@_pod_guard
def cmd_pod_list(args: argparse.Namespace) -> int:
    runtime = _pod_runtime(args)
    records = runtime.list()
    alive = runtime.running(records)
    rows = [{"namespace": r.namespace, "name": r.name, "node": r.node, "ip": r.ip,
             "labels": r.labels, "hostNetwork": r.host_network, "containerID": r.container_id,
             "running": alive.get(f"{r.namespace}/{r.name}", False)} for r in records]
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    print(f"{'NAMESPACE':10} {'NAME':20} {'NODE':8} {'IP':14} STATUS")
    for row in rows:
        print(f"{row['namespace']:10} {row['name']:20} {row['node']:8} {row['ip']:14} "
              f"{'Running' if row['running'] else 'Stopped'}")
    return EXIT_OK


@_pod_guard
def cmd_pod_exec(args: argparse.Namespace) -> int:
    argv = list(args.argv)
    if not argv:
        raise usage_error("pod exec: give a command after --")
    runtime = _pod_runtime(args)
    node, inner = runtime.exec_argv(args.pod, argv, args.namespace)
    return subprocess.run(runtime.provider.exec_command(node, inner), check=False).returncode


@_pod_guard
def cmd_pod_logs(args: argparse.Namespace) -> int:
    runtime = _pod_runtime(args)
    rec = runtime.get(args.namespace, args.pod)
    if rec is None:
        raise CliError(f"no pod {args.namespace}/{args.pod}")
    res = runtime.provider.exec(rec.node, ["cat", rec.log_path], check=False)
    sys.stdout.write(res.stdout)
    return EXIT_OK


# ---------------------------------------------------------------- desired state

def _read_docs(files: list[str]) -> tuple[list[tuple[str, list]], list[str]]:
    import yaml

    from cni_cilium.manifests import load_documents
    out, problems = [], []
    for path in files:
        try:
            if path == "-":
                text = sys.stdin.read()
            else:
                with open(path, encoding="utf-8") as fh:
                    text = fh.read()
            out.append((path, load_documents(text)))
        except OSError as exc:
            problems.append(f"{path}: cannot read: {exc.strerror}")
        except yaml.YAMLError as exc:
            problems.append(f"{path}: not valid YAML: {exc}".replace("\n", " "))
    return out, problems


def _apply_or_delete(args: argparse.Namespace, deleting: bool) -> int:
    from ..cluster.apiserver import ApiServer
    provider = provider_for(args)
    _require_up(provider)
    sources, problems = _read_docs(args.filename)
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    api = ApiServer.for_provider(provider)
    reports = [(api.delete if deleting else api.apply)(docs, source) for source, docs in sources]
    merged: dict = {"applied": [], "unchanged": [], "deleted": [], "notFound": [],
                    "problems": list(problems), "nodes": {}}
    for rep in reports:
        merged["applied"] += rep.applied
        merged["unchanged"] += rep.unchanged
        merged["deleted"] += rep.deleted
        merged["notFound"] += rep.not_found
        merged["problems"] += rep.problems
        merged["nodes"].update(rep.nodes)
    sync_errors = [f"{node}: {res['error']}" for node, res in merged["nodes"].items()
                   if "error" in res]
    if args.json:
        print(json.dumps(merged, indent=2))
    else:
        for what in merged["applied"]:
            print(f"{what} applied")
        for what in merged["unchanged"]:
            print(f"{what} unchanged")
        for what in merged["deleted"]:
            print(f"{what} deleted")
        for what in merged["notFound"]:
            print(f"{what} not found", file=sys.stderr)
        for line in merged["problems"][len(problems):]:
            print(f"error: {line}", file=sys.stderr)
        for line in sync_errors:
            print(f"warning: not distributed to {line}", file=sys.stderr)
    if merged["problems"]:
        return EXIT_USAGE
    if sync_errors or (merged["notFound"] and not getattr(args, "ignore_not_found", False)):
        return EXIT_FAIL
    return EXIT_OK


@guarded
def cmd_apply(args: argparse.Namespace) -> int:
    return _apply_or_delete(args, deleting=False)


@guarded
def cmd_delete(args: argparse.Namespace) -> int:
    return _apply_or_delete(args, deleting=True)


# ---------------------------------------------------------------- deploy

def _print_recap(result) -> None:
    hosts = sorted({h for counts in result.stats.values() for h in counts})
    for host in hosts:
        counts = {k: result.stats.get(k, {}).get(host, 0)
                  for k in ("ok", "changed", "failures", "dark", "skipped")}
        print(f"{host:10} ok={counts['ok']} changed={counts['changed']} "
              f"failed={counts['failures']} unreachable={counts['dark']} "
              f"skipped={counts['skipped']}")


@guarded
def cmd_deploy(args: argparse.Namespace) -> int:
    from ..deploy.playbook import run_playbook
    if args.config:
        _check_config(args.config)
    provider = provider_for(args)
    _require_up(provider)
    result = run_playbook(provider, config=args.config, verbose=args.verbose,
                          progress=None if args.json else progress)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        _print_recap(result)
        for line in result.failed_tasks:
            print(f"error: {line}", file=sys.stderr)
        print(f"deploy {result.status} in {result.seconds:.1f} s, changed={result.changed}")
    return EXIT_OK if result.rc == 0 else EXIT_FAIL


@guarded
def cmd_check(args: argparse.Namespace) -> int:
    """testinfra node checks (tests/infra) against the cluster's inventory."""
    from .. import PROJECT_ROOT
    provider = provider_for(args)
    _require_up(provider)
    venv_bin = os.path.dirname(sys.executable)
    env = dict(os.environ, PATH=venv_bin + os.pathsep + os.environ.get("PATH", ""))
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            os.path.join(PROJECT_ROOT, "tests", "infra"), "--hosts=ansible://all",
            f"--ansible-inventory={provider.inventory_path()}", *args.argv]
    return subprocess.run(argv, env=env, cwd=PROJECT_ROOT, check=False).returncode


@guarded
def cmd_bench(args: argparse.Namespace) -> int:
    """Time `cluster up` and `down` for each size (measured here; no assertion on time)."""
    if args.what == "datapath":
        return _bench_datapath(args)
    rows = []
    for count in args.nodes:
        provider = LocalProvider(args.name, count)
        provider.down()                           # a stale bench cluster from an earlier run
        started = time.monotonic()
        provider.up()
        up_s = time.monotonic() - started
        started = time.monotonic()
        provider.down()
        rows.append({"nodes": count, "upSeconds": round(up_s, 3),
                     "downSeconds": round(time.monotonic() - started, 3)})
    if args.json:
        print(json.dumps({"benchmark": "cluster", "cluster": args.name, "results": rows},
                         indent=2))
        return EXIT_OK
    print("local cluster (namespace nodes, sshd listening on each when `up` returns)")
    print(f"{'nodes':>5}  {'up (s)':>8}  {'down (s)':>8}  {'up per node (ms)':>16}")
    for row in rows:
        print(f"{row['nodes']:>5}  {row['upSeconds']:>8.3f}  {row['downSeconds']:>8.3f}  "
              f"{1000 * row['upSeconds'] / row['nodes']:>16.1f}")
    return EXIT_OK


def _bench_datapath(args: argparse.Namespace) -> int:
    """`cni-harness bench datapath`: print the datapath figures of this machine."""
    from .. import bench
    from ..suites.lab import LabError, deployed_lab

    try:
        counts = bench.parse_counts(args.services, "--services")
        traffic_counts = sorted(set(bench.parse_counts(args.traffic_services,
                                                       "--traffic-services")))
    except ValueError as exc:
        raise usage_error(str(exc)) from exc
    report: dict = {}
    text = []
    if not args.no_programming:
        compile_s, results = bench.program_benchmark(counts, progress=progress)
        report.update({"compileSeconds": compile_s,
                       "programming": [{**r.__dict__, "total_s": r.total_s} for r in results]})
        text.append(bench.format_program_results(compile_s, results))
        report["compileCache"] = bench.compile_cache_benchmark(progress)
        text.append(bench.format_cache_results(report["compileCache"]))
    if not args.no_packets:
        report["packets"] = bench.packet_cost_benchmark(traffic_counts, progress=progress)
        text.append(bench.format_packet_costs(report["packets"]))
    progress("building maglev tables ...")
    report["maglev"] = bench.maglev_benchmark()
    text.append(bench.format_maglev_results(report["maglev"]))
    if not args.no_traffic:
        try:
            lab, created = deployed_lab(args.name, bench.TRAFFIC_CONFIG, progress=progress)
        except LabError as exc:
            raise CliError(f"traffic benchmark: {exc}") from exc
        try:
            traffic = bench.traffic_benchmark(lab, args.seconds, args.rounds, traffic_counts,
                                              args.peer or "", progress)
            algorithms = (bench.algorithm_benchmark(lab, args.seconds, args.rounds, progress)
                          if not bench.EXTRA_LB else {})
        finally:
            if created:
                lab.provider.down()
        report["traffic"] = traffic
        text.append(bench.format_apply_results(traffic))
        text.append(bench.format_traffic_results(traffic))
        report["algorithms"] = algorithms or {"skipped": bench.EXTRA_LB}
        text.append(bench.format_algorithm_results(algorithms, args.seconds, args.rounds)
                    if algorithms else f"LB algorithms: not measured ({bench.EXTRA_LB})")
    print(json.dumps(report, indent=2) if args.json else "\n\n".join(text))
    return EXIT_OK


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
    up.add_argument("--source-guard", action=argparse.BooleanOptionalAction, default=None,
                    help="the fabric accepts from each node only that node's own addresses "
                         "(its IP and pod CIDR), like uRPF/source guard on real switches; "
                         "DSR with externalTrafficPolicy Cluster then fails, as documented. "
                         "--no-source-guard turns it off on a running cluster")
    up.add_argument("--json", action="store_true")
    up.set_defaults(func=cmd_cluster_up)
    down = csub.add_parser("down", help="remove everything a cluster made (also after a crash)")
    _cluster_args(down)
    down.set_defaults(func=cmd_cluster_down)
    st = csub.add_parser("status", help="nodes, addresses, state; exit 1 unless running")
    _cluster_args(st)
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_cluster_status)

    node = sub.add_parser("node", help="nodes of a cluster: exec, reboot, stop, start, ssh")
    nsub = node.add_subparsers(dest="node_command", metavar="SUBCOMMAND")
    nsub.required = True
    ex = nsub.add_parser("exec", help="run a command as root on a node (its namespaces)",
                         usage="%(prog)s [--name NAME] NODE -- CMD...",
                         description="Example: cni-harness node exec node1 -- ip addr. NODE "
                         "may also be client, world or router (their network namespace).")
    _cluster_args(ex)
    ex.add_argument("node")
    ex.set_defaults(argv=[])
    ex.set_defaults(func=cmd_node_exec)
    rb = nsub.add_parser("reboot", help="reboot a node: processes killed, namespaces rebuilt, "
                         "new boot id, boot sequence (sshd, then the agent if installed)")
    _cluster_args(rb)
    rb.add_argument("node")
    rb.add_argument("--hard", action="store_true", help="kill at once (no service stop)")
    rb.set_defaults(func=cmd_node_reboot)
    stop = nsub.add_parser("stop", help="shut a node down (services stopped, namespaces "
                           "removed, disk kept); `node start` boots it again")
    _cluster_args(stop)
    stop.add_argument("node")
    stop.set_defaults(func=cmd_node_stop)
    start = nsub.add_parser("start", help="boot a stopped node and start its pods again")
    _cluster_args(start)
    start.add_argument("node")
    start.set_defaults(func=cmd_node_start)
    ssh = nsub.add_parser("ssh", help="ssh to a node through its sshd",
                          usage="%(prog)s [--name NAME] NODE [-- CMD...]")
    _cluster_args(ssh)
    ssh.add_argument("node")
    ssh.set_defaults(argv=[])
    ssh.set_defaults(func=cmd_node_ssh)

    pod = sub.add_parser("pod", help="pods on nodes, created through the CNI plugin")
    psub = pod.add_subparsers(dest="pod_command", metavar="SUBCOMMAND")
    psub.required = True
    prun = psub.add_parser(
        "run", help="create a pod like a kubelet (netns, CNI ADD) and start its process",
        usage="%(prog)s [options] --node NODE NAME -- CMD...",
        description="Example: cni-harness pod run --node node2 web --label app=web "
        "--port http=8080 -- python3 -m http.server 8080")
    _cluster_args(prun)
    prun.add_argument("--node", required=True)
    prun.add_argument("pod", metavar="NAME")
    prun.add_argument("--namespace", default="default")
    prun.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    prun.add_argument("--port", action="append", default=[],
                      metavar="[NAME=]PORT[:HOSTPORT][@HOSTIP][/PROTO]",
                      help="a container port; with HOSTPORT reachable on that port of the "
                      "node (HOSTIP: on that node address only)")
    prun.add_argument("--host-network", action="store_true",
                      help="run in the node's network namespace (no CNI)")
    prun.add_argument("--json", action="store_true")
    prun.set_defaults(argv=[])
    prun.set_defaults(func=cmd_pod_run)
    for name, func, helptext in (("delete", cmd_pod_delete, "stop a pod, CNI DEL, remove it"),
                                 ("logs", cmd_pod_logs, "print a pod's output")):
        p = psub.add_parser(name, help=helptext)
        _cluster_args(p)
        p.add_argument("pod", metavar="NAME")
        p.add_argument("--namespace", default="default")
        p.set_defaults(func=func)
    plist = psub.add_parser("list", help="pods with node, IP and whether they run")
    _cluster_args(plist)
    plist.add_argument("--json", action="store_true")
    plist.set_defaults(func=cmd_pod_list)
    pexec = psub.add_parser("exec", help="run a command in a pod's network namespace",
                            usage="%(prog)s [--name NAME] [--namespace NS] NAME -- CMD...")
    _cluster_args(pexec)
    pexec.add_argument("pod", metavar="NAME")
    pexec.add_argument("--namespace", default="default")
    pexec.set_defaults(argv=[])
    pexec.set_defaults(func=cmd_pod_exec)

    dep = sub.add_parser("deploy", help="install the module on every node with Ansible "
                         "(playbooks/site.yml through ansible-runner)")
    _cluster_args(dep)
    dep.add_argument("--config", metavar="MODULECONFIG",
                     help="ModuleConfig to install (default: the one given to `cluster up`, "
                     "else all defaults)")
    dep.add_argument("--verbose", action="store_true", help="show Ansible's own output")
    dep.add_argument("--json", action="store_true", help="print the result and stats as JSON")
    dep.set_defaults(func=cmd_deploy)

    bench = sub.add_parser("bench", help="benchmarks that print measured figures",
                           description="`bench cluster`: time `cluster up`/`down` of 3 and "
                           "10 nodes (a separate cluster, removed afterwards). `bench "
                           "datapath`: map programming, throughput and request rates.")
    bench.add_argument("what", nargs="?", choices=["cluster", "datapath"], default="cluster")
    bench.add_argument("--name", default="bench", help="cluster name to use (default bench)")
    bench.add_argument("--nodes", type=int, nargs="+", default=[3, 10], metavar="N")
    bench.add_argument("--json", action="store_true")
    # `bench datapath`: the cluster for the traffic figures is --name (created and removed
    # unless it already runs).
    bench.add_argument("--services", default="1000,10000",
                       help="service counts to program (10 backends each; default %(default)s)")
    bench.add_argument("--no-programming", action="store_true",
                       help="skip the map programming figures")
    bench.add_argument("--no-traffic", action="store_true",
                       help="no cluster: only the figures measured in a private bpffs "
                       "(map programming, per-packet program time, compile cache, maglev)")
    bench.add_argument("--no-packets", action="store_true",
                       help="skip the per-packet program time (BPF_PROG_TEST_RUN at each "
                       "--traffic-services count)")
    bench.add_argument("--traffic-services", default="1,1000,10000",
                       help="service counts the traffic paths are measured at "
                            "(default %(default)s)")
    bench.add_argument("--peer", choices=["kube-proxy"],
                       help="also measure the same paths through kube-proxy's iptables rules")
    bench.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    bench.add_argument("--rounds", type=int, default=2, help="rounds per path (median)")
    bench.set_defaults(func=cmd_bench)

    chk = sub.add_parser("check", help="testinfra checks of every deployed node (tests/infra)",
                         usage="%(prog)s [--name NAME] [-- PYTEST-ARGS...]")
    _cluster_args(chk)
    chk.set_defaults(func=cmd_check, argv=[])

    for name, func, helptext in (
            ("apply", cmd_apply, "store objects (Service, EndpointSlice, ...) and distribute "
             "them to every node; invalid objects are refused, valid ones kept"),
            ("delete", cmd_delete, "remove objects named in files")):
        p = sub.add_parser(name, help=helptext)
        _cluster_args(p)
        p.add_argument("-f", "--filename", action="append", required=True,
                       metavar="FILE", help="YAML file ('-' for stdin); repeatable")
        p.add_argument("--json", action="store_true")
        if name == "delete":
            p.add_argument("--ignore-not-found", action="store_true")
        p.set_defaults(func=func)
