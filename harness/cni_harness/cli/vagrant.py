"""`cni-harness vagrant ...`: plan, generate, validate and drive the Vagrant VMs of the matrix."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from typing import Callable

from ..matrix.matrix import DEFAULT_MATRIX, VAGRANT_PROVIDERS, MatrixError, load_matrix
from ..matrix.run import run_lines
from ..providers.base import ProviderUnavailable
from ..providers.vagrant import (
    DEFAULT_WORKDIR,
    EntryPlan,
    PlanError,
    VagrantProvider,
    check_host,
    format_plan,
    plan_matrix,
    validate_definitions,
    write_definition,
)
from .common import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_PROVIDER_UNAVAILABLE,
    EXIT_USAGE,
    CliError,
    print_check,
    unavailable,
    usage_error,
)


def plans_from_args(args: argparse.Namespace) -> list[EntryPlan]:
    """The plans the arguments select; raises PlanError/MatrixError on bad input."""
    matrix = load_matrix(args.matrix)
    if args.profile not in matrix.profiles:
        raise PlanError(f"unknown profile {args.profile!r}; defined: "
                        f"{', '.join(sorted(matrix.profiles))}")
    return plan_matrix(matrix.os_entries, args.entries, provider=args.provider,
                       nodes=args.nodes, profile=args.profile,
                       profile_settings=matrix.profiles[args.profile],
                       memory_mib=args.memory, cpus=args.cpus,
                       libvirt_driver=args.libvirt_driver)


def _with_plans(handler):
    """Run a handler on the selected plans; bad input exits 2 with one line per problem."""
    def wrapped(args: argparse.Namespace) -> int:
        try:
            plans = plans_from_args(args)
        except MatrixError as exc:
            raise usage_error(exc.problems) from exc
        except (PlanError, OSError) as exc:
            raise usage_error(str(exc)) from exc
        return handler(args, plans)
    return wrapped


def dry_run(plans: list[EntryPlan], as_json: bool,
            runs: Callable[[str], dict] | None = None) -> str:
    """The `--dry-run` output: per OS entry, the box, the nodes and the playbook steps;
    with `runs` (entry name -> `ProviderTarget.describe`), also the suites and the
    inventory they would run against."""
    if as_json:
        return json.dumps({"provider": "vagrant", "entries": [
            {**p.to_dict(), **({"run": runs(p.entry)} if runs else {})} for p in plans]},
            indent=2)
    return "\n\n".join("\n".join([format_plan(p), *(run_lines(runs(p.entry)) if runs else [])])
                       for p in plans)


def matrix_dry_run(entries: list[str] | None = None, *, matrix: str = DEFAULT_MATRIX,
                   vagrant_provider: str = "libvirt", profile: str = "default",
                   nodes: int | None = None, as_json: bool = False,
                   runs: Callable[[str], dict] | None = None) -> tuple[int, str]:
    """For `cni-harness matrix run --provider vagrant --dry-run`: (exit status, output);
    `runs` as for `dry_run`.

    Bad input gives status 2 and one line per problem as the output."""
    parser = argparse.ArgumentParser()
    add_plan_options(parser)
    args = parser.parse_args([*(entries or []), "--matrix", matrix, "--provider",
                              vagrant_provider, "--profile", profile,
                              *(["--nodes", str(nodes)] if nodes else [])])
    try:
        plans = plans_from_args(args)
    except MatrixError as exc:
        return EXIT_USAGE, "\n".join(f"error: {line}" for line in exc.problems)
    except (PlanError, OSError) as exc:
        return EXIT_USAGE, f"error: {exc}"
    return EXIT_OK, dry_run(plans, as_json, runs)


def cmd_plan(args: argparse.Namespace, plans: list[EntryPlan]) -> int:
    print(dry_run(plans, args.json))
    return EXIT_OK


def cmd_generate(args: argparse.Namespace, plans: list[EntryPlan]) -> int:
    for p in plans:
        out = write_definition(p, os.path.join(args.out, p.entry))
        if not args.json:
            print(f"{p.entry}: {out}/Vagrantfile + cluster.json")
    if args.json:
        print(json.dumps({p.entry: os.path.join(args.out, p.entry) for p in plans}, indent=2))
    return EXIT_OK


def cmd_validate(args: argparse.Namespace, plans: list[EntryPlan]) -> int:
    if shutil.which("vagrant") is None:
        raise CliError("cannot validate: vagrant is not installed (apt-get install vagrant "
                       "vagrant-libvirt)", EXIT_PROVIDER_UNAVAILABLE)
    out_dir = args.out or tempfile.mkdtemp(prefix="cni-vagrant-validate.")
    results = validate_definitions(plans, out_dir)
    ok = all(r["validate"] and r["status_ok"] is not False for r in results)
    if args.json:
        print(json.dumps({"ok": ok, "results": results}, indent=2))
    else:
        for r in results:
            verdict = "valid" if r["validate"] and r["status_ok"] is not False else "INVALID"
            scope = ("with its provider block" if r["provider_block_checked"]
                     else f"core settings only: the {r['provider']} provider is not loadable "
                     "here, so neither its block nor status() is checked")
            states = ", ".join(f"{k}={v}" for k, v in sorted(r["status"].items()))
            print(f"{r['entry']}: {verdict} ({scope})" + (f"; status {states}" if states else ""))
            if not r["validate"]:
                print("  " + r["output"].replace("\n", "\n  "))
    if not args.out:
        shutil.rmtree(out_dir, ignore_errors=True)
    return EXIT_OK if ok else EXIT_FAIL


def cmd_check(args: argparse.Namespace, plans: list[EntryPlan]) -> int:
    boxes = sorted({p.box for p in plans})
    return print_check(f"vagrant ({args.provider})",
                       check_host(args.provider, boxes, args.libvirt_driver), args.json,
                       {"boxes": boxes}, f"vagrant ({args.provider}): this host can run "
                       + ", ".join(boxes))


def _one_provider(args: argparse.Namespace, plans: list[EntryPlan]) -> VagrantProvider:
    if len(plans) != 1:
        raise PlanError(f"name exactly one OS entry (got {len(plans)})")
    return VagrantProvider(plans[0], workdir=args.workdir)


def _drive(action: str):
    def handler(args: argparse.Namespace, plans: list[EntryPlan]) -> int:
        try:
            provider = _one_provider(args, plans)
        except PlanError as exc:
            raise usage_error(str(exc)) from exc
        if action != "status":
            available = provider.check() if action == "up" else check_host(
                provider.entry_plan.provider)
            if not available.ok:
                raise unavailable(f"vagrant ({provider.entry_plan.provider})", available)
        try:
            if action == "up":
                provider.up()
                print(provider.inventory_path())
            elif action == "inventory":
                print(provider.inventory_path())
            elif action == "deploy":
                from ..deploy.playbook import run_playbook

                result = run_playbook(provider, config=args.config,
                                      progress=lambda line: print(line, file=sys.stderr))
                print(json.dumps(result.to_dict(), indent=2) if args.json else
                      f"deploy {result.status}: {result.changed} changed in "
                      f"{result.seconds:.0f} s")
                if result.rc != 0:
                    raise CliError(result.failed_tasks or [f"deploy {result.status}"])
                return EXIT_OK
            elif action == "status":
                print(json.dumps(provider.status(), indent=2))
            else:
                {"halt": provider.halt, "reload": provider.reload,
                 "destroy": provider.down}[action]()
        except ProviderUnavailable as exc:
            raise CliError(str(exc), EXIT_PROVIDER_UNAVAILABLE) from exc
        return EXIT_OK
    return handler


def add_plan_options(parser: argparse.ArgumentParser) -> None:
    """Options that select entries and shape their plans (shared with `matrix run`)."""
    parser.add_argument("entries", nargs="*", metavar="ENTRY",
                        help="OS entries of matrix.yaml (default: all)")
    parser.add_argument("--matrix", default=DEFAULT_MATRIX, help="matrix file")
    parser.add_argument("--provider", "--vagrant-provider", dest="provider",
                        choices=VAGRANT_PROVIDERS, default="libvirt",
                        help="Vagrant backend (default: libvirt)")
    parser.add_argument("--nodes", type=int, default=None,
                        help="nodes per entry (default: the entry's, 3)")
    parser.add_argument("--profile", default="default", help="matrix profile to judge with")
    parser.add_argument("--memory", type=int, default=2048, help="MiB per node")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs per node")
    parser.add_argument("--libvirt-driver", choices=("kvm", "qemu"), default="kvm",
                        help="qemu = TCG, for hosts without /dev/kvm (slow)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `vagrant` and its subcommands to the cni-harness parser."""
    parser = sub.add_parser("vagrant", help="Vagrant VMs for the OS entries of matrix.yaml")
    vsub = parser.add_subparsers(dest="vagrant_command", metavar="SUBCOMMAND")
    vsub.required = True
    commands = [
        ("plan", "dry run: per entry the box, the nodes and the playbook steps", cmd_plan),
        ("generate", "write each entry's Vagrantfile + cluster.json", cmd_generate),
        ("validate", "generate, then `vagrant validate` and status() every definition",
         cmd_validate),
        ("check", "what this host lacks to bring the VMs up (exit 3 when anything)",
         cmd_check),
        ("up", "bring one entry's VMs up and print its Ansible inventory", _drive("up")),
        ("inventory", "write the Ansible inventory of running VMs", _drive("inventory")),
        ("deploy", "run playbooks/site.yml on one entry's running VMs", _drive("deploy")),
        ("status", "machine states of one entry", _drive("status")),
        ("halt", "stop one entry's VMs", _drive("halt")),
        ("reload", "restart one entry's VMs through Vagrant", _drive("reload")),
        ("destroy", "delete one entry's VMs", _drive("destroy")),
    ]
    for name, help_text, handler in commands:
        cmd = vsub.add_parser(name, help=help_text, description=help_text)
        add_plan_options(cmd)
        cmd.add_argument("--json", action="store_true")
        if name == "generate":
            cmd.add_argument("--out", required=True, help="directory for the definitions")
        if name == "validate":
            cmd.add_argument("--out", help="keep the definitions here (default: a temp dir)")
        if name == "deploy":
            cmd.add_argument("--config", help="ModuleConfig to install (default: defaults)")
        cmd.add_argument("--workdir", default=DEFAULT_WORKDIR,
                         help="where the running definitions and Vagrant state live")
        cmd.set_defaults(func=_with_plans(handler))
