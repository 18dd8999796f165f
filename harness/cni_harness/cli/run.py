"""`cni-harness run`, `matrix validate|run`, `repro` and `demo`: suites, matrix runs, reports.

Exit statuses (docs/architecture.md): 0 all as expected, 1 a suite failed or a matrix cell
is unexpected, 2 bad arguments, 3 the provider cannot run on this host.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from .. import PROJECT_ROOT
from ..matrix.matrix import DEFAULT_MATRIX, MatrixError, load_matrix
from ..matrix.run import (
    CLUSTER_PROVIDERS,
    PROVIDERS,
    Entry,
    MatrixUsageError,
    RunPlan,
    custom_kernel_entry,
    exit_status,
    format_description,
    run_matrix,
    select,
    target_for,
)
from ..suites.runner import SuiteUsageError, known_suites, parse_suite_list, run_suites
from .common import EXIT_FAIL, EXIT_OK, EXIT_PROVIDER_UNAVAILABLE, CliError, usage_error


def default_out(kind: str) -> str:
    """results/KIND-TIMESTAMP below the current directory, as an absolute path."""
    return os.path.abspath(os.path.join("results", f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"))


def _progress_to(stream):
    def emit(message: str) -> None:
        print(message, file=stream, flush=True)
    return emit


def _split(values: list[str] | None) -> list[str]:
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def cmd_run(args: argparse.Namespace) -> int:
    known = known_suites()
    try:
        names = parse_suite_list(args.suite, known)
    except SuiteUsageError as exc:
        raise usage_error(str(exc)) from exc
    out = os.path.abspath(args.out or default_out("run"))
    progress = _progress_to(sys.stderr if args.json else sys.stdout)
    results, summary = run_suites(names, out, k=args.k, progress=progress,
                                  facts={"kernel": os.uname().release})
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for result in results:
            print(f"{result.name}: {result.outcome().label()}")
        print(f"report: {out}/report.md, {out}/report.html; JUnit: {out}/junit.xml")
    return EXIT_OK if summary["ok"] else EXIT_FAIL


def _profiles(matrix, wanted: list[str]) -> dict[str, dict]:
    if not wanted:
        return dict(matrix.profiles)
    unknown = [p for p in wanted if p not in matrix.profiles]
    if unknown:
        raise MatrixUsageError(f"unknown profile(s) {', '.join(unknown)}; known: "
                               f"{', '.join(matrix.profiles)}")
    return {p: matrix.profiles[p] for p in wanted}


def _execute(args: argparse.Namespace, provider: str, entries: list[Entry], plan: RunPlan,
             title: str) -> int:
    target = target_for(provider)
    available = target.availability()
    if not available.ok:
        raise CliError(f"provider {provider} cannot run here: {available.reason()}",
                       EXIT_PROVIDER_UNAVAILABLE)
    progress = _progress_to(sys.stderr if args.json else sys.stdout)
    progress(f"{title}: provider {provider}, entries {', '.join(e.name for e in entries)}, "
             f"suites {', '.join(plan.suites) or 'none'}; output {plan.out}")
    report = run_matrix(target, entries, plan, progress=progress, title=title)
    if args.json:
        print(json.dumps({**report.to_dict(), "out": plan.out}, indent=2))
    else:
        with open(os.path.join(plan.out, "matrix.md"), encoding="utf-8") as fh:
            print(fh.read())
        print(f"reports: {plan.out}/matrix.md, {plan.out}/matrix.html; "
              f"JUnit: {plan.out}/junit.xml; logs per entry under {plan.out}/")
    return exit_status(report)


def _load(path: str):
    """The matrix file, or a usage error naming each problem."""
    try:
        return load_matrix(path)
    except MatrixError as exc:
        raise usage_error(exc.problems) from exc
    except OSError as exc:
        raise usage_error(f"{path}: {exc.strerror}") from exc


def cmd_matrix_validate(args: argparse.Namespace) -> int:
    matrix = _load(args.file)
    summary = {
        "file": args.file,
        "profiles": sorted(matrix.profiles),
        "os_entries": [e.name for e in matrix.os_entries],
        "kernel_entries": [e.name for e in matrix.kernel_entries],
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{args.file}: valid; {len(matrix.os_entries)} OS entries, "
              f"{len(matrix.kernel_entries)} kernel entries, profiles {summary['profiles']}")
    return EXIT_OK


def _check_time_scale() -> None:
    from ..timescale import time_scale

    try:
        time_scale()
    except ValueError as exc:
        raise MatrixUsageError(str(exc)) from None


def _matrix_dry_run(args: argparse.Namespace) -> int:
    """`matrix run --dry-run`: the plan without booting anything, for the providers whose
    nodes exist before the suites run (vagrant, vm): per entry, the suites and the
    inventory and nodes they would run against (vagrant: also its boxes, network and
    playbook steps). The qemu and local runs are their own plan (one entry job per
    kernel)."""
    if args.provider not in CLUSTER_PROVIDERS:
        raise usage_error(f"--dry-run plans the VMs of the OS entries: use it with "
                          f"--provider {' or --provider '.join(CLUSTER_PROVIDERS)} (the "
                          f"{args.provider} provider has no plan to show before it runs: "
                          "run it without --dry-run)")
    if args.kernel:
        raise usage_error("--kernel PATH boots an image: it needs --provider qemu")
    profiles = _split(args.profiles)
    if len(profiles) > 1:
        raise usage_error("--dry-run judges one preflight profile; give at most one in "
                          "--profiles")
    matrix = _load(args.matrix)
    try:
        suites = parse_suite_list(args.suites, known_suites()) if args.suites else \
            known_suites()
    except SuiteUsageError as exc:
        raise usage_error(str(exc)) from exc
    target = target_for(args.provider, vagrant_provider=args.vagrant_provider)
    by_name = {e.name: e for e in target.entries(matrix)}
    if args.provider == "vagrant":
        from .vagrant import matrix_dry_run

        status, text = matrix_dry_run(_split(args.entries), matrix=args.matrix,
                                      vagrant_provider=args.vagrant_provider,
                                      profile=profiles[0] if profiles else "default",
                                      as_json=args.json,
                                      runs=lambda name: target.describe(by_name[name], suites))
        print(text, file=sys.stdout if status == EXIT_OK else sys.stderr)
        return status
    try:
        entries = select(list(by_name.values()), _split(args.entries))
    except MatrixUsageError as exc:
        raise usage_error(str(exc)) from exc
    runs = [target.describe(entry, suites) for entry in entries]
    if args.json:
        print(json.dumps({"provider": args.provider, "entries": runs}, indent=2))
    else:
        print("\n\n".join(format_description(run, entry.os_entry)
                          for run, entry in zip(runs, entries)))
    return EXIT_OK


def cmd_matrix_run(args: argparse.Namespace) -> int:
    if args.dry_run:
        return _matrix_dry_run(args)
    matrix = _load(args.matrix)
    try:
        _check_time_scale()
        suites = parse_suite_list(args.suites, known_suites()) if args.suites else \
            known_suites()
        target = target_for(args.provider, vagrant_provider=args.vagrant_provider)
        if args.kernel and args.provider != "qemu":
            raise MatrixUsageError("--kernel PATH boots an image: it needs --provider qemu")
        entries = select(target.entries(matrix), _split(args.entries))
        if args.kernel:
            if not os.path.isfile(args.kernel):
                raise MatrixUsageError(f"--kernel {args.kernel}: no such file")
            entries = ([] if not args.entries else entries) + [custom_kernel_entry(args.kernel)]
        plan = RunPlan(suites=suites, profiles=_profiles(matrix, _split(args.profiles)),
                       out=os.path.abspath(args.out or default_out("matrix")), k=args.k,
                       timeout=args.timeout, refresh_kernels=args.refresh_kernels)
    except (SuiteUsageError, MatrixUsageError) as exc:
        raise usage_error(str(exc)) from exc
    return _execute(args, args.provider, entries, plan, "cni-harness matrix")


def cmd_repro(args: argparse.Namespace) -> int:
    matrix = _load(args.matrix)
    try:
        _check_time_scale()
        suites = parse_suite_list(args.suite, known_suites())
        if len(suites) != 1:
            raise SuiteUsageError("repro runs one suite; give one --suite")
        if os.path.isfile(args.kernel):
            provider, entries = "qemu", [custom_kernel_entry(args.kernel)]
        else:
            provider = "local" if args.kernel == "host" else "qemu"
            entries = select(target_for(provider).entries(matrix), [args.kernel])
        plan = RunPlan(suites=suites, profiles=_profiles(matrix, ["default"]),
                       out=os.path.abspath(args.out or default_out(f"repro-{entries[0].name}")),
                       k=args.k, timeout=args.timeout, shell=args.shell)
    except (SuiteUsageError, MatrixUsageError) as exc:
        raise usage_error(str(exc)) from exc
    if args.shell and provider != "qemu":
        raise usage_error("--shell drops into a qemu guest; the host kernel needs no guest")
    rc = _execute(args, provider, entries, plan, f"cni-harness repro {args.kernel}")
    entry_dir = os.path.join(plan.out, entries[0].name)
    suite_dir = os.path.join(entry_dir, "suites", suites[0])
    if not args.json:
        logs = [os.path.join(entry_dir, name) for name in ("job.log", "console.log",
                                                            "guest.json")]
        print(f"evidence: {suite_dir}/ (junit.xml, pytest.log, captures), " +
              ", ".join(p for p in logs if os.path.exists(p)))
    return rc


# The suites `make demo` runs, in order, when the project has them.
DEMO_SUITES = ("traffic", "dsr", "reboot")


def _venv_bin(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: preflight of this host, the unit suite, then the e2e suites (each
    brings up its local cluster and deploys it with Ansible) and one report of them all."""
    steps = [
        ("preflight", [_venv_bin("cni-cilium"), "preflight"]),
        ("unit suite", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "-m", "unit", os.path.join(PROJECT_ROOT, "tests")]),
    ]
    for title, argv in steps:
        print(f"==> {title}: {' '.join(argv)}", flush=True)
        rc = subprocess.run(argv, cwd=PROJECT_ROOT, check=False).returncode
        if rc != 0:
            raise CliError(f"{title} failed (exit {rc})")
    names = [name for name in DEMO_SUITES if name in known_suites()]
    out = os.path.abspath(args.out or default_out("demo"))
    print(f"==> suites {', '.join(names)} (output {out})", flush=True)
    _results, summary = run_suites(
        names, out, progress=lambda message: print(message, flush=True),
        title="cni-harness demo", facts={"kernel": os.uname().release})
    with open(os.path.join(out, "report.md"), encoding="utf-8") as fh:
        print(fh.read())
    print(f"report: {out}/report.md, {out}/report.html; JUnit: {out}/junit.xml")
    return EXIT_OK if summary["ok"] else EXIT_FAIL


def register(sub: argparse._SubParsersAction) -> None:
    """Add `matrix validate|run`, `run`, `repro` and `demo` to the cni-harness parser."""
    matrix = sub.add_parser("matrix", help="the OS/kernel matrix")
    matrix_sub = matrix.add_subparsers(dest="matrix_command", metavar="SUBCOMMAND")
    matrix_sub.required = True
    validate = matrix_sub.add_parser("validate", help="check matrix.yaml against its schema")
    validate.add_argument("file", nargs="?", default=DEFAULT_MATRIX)
    validate.add_argument("--json", action="store_true")
    validate.set_defaults(func=cmd_matrix_validate)
    _add_matrix_run_parser(matrix_sub)
    _add_run_parser(sub)
    _add_repro_parser(sub)
    demo = sub.add_parser("demo", help="the main job: cluster, deploy, suites, report")
    demo.add_argument("--out", help="output directory (default results/demo-TIMESTAMP)")
    demo.set_defaults(func=cmd_demo)


def _add_run_parser(sub) -> None:
    run = sub.add_parser(
        "run", help="run suites (tests/e2e/test_NAME.py) with JUnit and a report",
        description="Run suites with pytest; writes OUT/junit.xml, OUT/report.md and "
        "OUT/report.html. Exit 0 all passed, 1 a suite failed (no test collected counts as "
        "failed), 2 unknown suite.")
    run.add_argument("--suite", required=True, action="append", metavar="NAME[,NAME...]",
                     help=f"suites to run; known: {', '.join(known_suites()) or 'none'}")
    run.add_argument("-k", metavar="EXPR", help="pytest -k expression selecting cases")
    run.add_argument("--out", metavar="DIR", help="output directory (default results/run-TIME)")
    run.add_argument("--json", action="store_true", help="print the summary as JSON")
    run.set_defaults(func=cmd_run)


def _common_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-k", metavar="EXPR", help="pytest -k expression selecting cases")
    parser.add_argument("--out", metavar="DIR", help="output directory")
    parser.add_argument("--timeout", type=float, default=3600.0, metavar="SECONDS",
                        help="per entry (default 3600)")
    parser.add_argument("--matrix", default=DEFAULT_MATRIX, help="matrix file")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _add_matrix_run_parser(matrix_sub) -> None:
    run = matrix_sub.add_parser(
        "run", help="run suites on every matrix entry and judge them against matrix.yaml",
        description="Run the suites on each entry of the matrix (qemu: kernel entries, one "
        "guest at a time; local: this host's kernel; vagrant, vm: OS entries, the suites "
        "run against those nodes). Writes a "
        "directory per entry, OUT/junit.xml and the entry x suite table OUT/matrix.md and "
        "OUT/matrix.html. Exit 0 when every result is as the matrix expects, 1 otherwise, 2 "
        "bad arguments, 3 provider unavailable here.")
    run.add_argument("--provider", choices=PROVIDERS, default="qemu")
    run.add_argument("--entries", action="append", metavar="NAME[,NAME...]",
                     help="entries by name or kernel version (default: all of the provider's)")
    run.add_argument("--suites", action="append", metavar="NAME[,NAME...]",
                     help=f"suites (default: all: {', '.join(known_suites()) or 'none'})")
    run.add_argument("--profiles", action="append", metavar="NAME[,NAME...]",
                     help="preflight profiles judged per entry (default: all in the matrix)")
    run.add_argument("--kernel", metavar="PATH",
                     help="also boot this kernel image (qemu); alone unless --entries is given")
    run.add_argument("--refresh-kernels", action="store_true",
                     help="resolve and download the kernels again even if cached")
    run.add_argument("--dry-run", action="store_true",
                     help="vagrant, vm: print per OS entry the suites and the inventory and "
                     "nodes they would run against (vagrant: also box, playbook steps, "
                     "preflight verdict) and boot nothing")
    run.add_argument("--vagrant-provider", choices=("libvirt", "virtualbox"),
                     default="libvirt", help="Vagrant backend (default libvirt)")
    _common_run_options(run)
    run.set_defaults(func=cmd_matrix_run)


def _add_repro_parser(sub) -> None:
    repro = sub.add_parser(
        "repro", help="one command: boot a kernel, build the cluster, run one suite or test",
        description="Boot the matrix kernel (a version such as 5.10, an entry name, `host` "
        "for this kernel, or a path to your own kernel image), run one suite (narrowed "
        "with -k) inside, and leave its evidence in OUT.")
    repro.add_argument("--kernel", required=True, metavar="VERSION|ENTRY|PATH")
    repro.add_argument("--suite", required=True, metavar="NAME")
    repro.add_argument("--shell", action="store_true",
                       help="after the test, stay in an interactive shell in the guest")
    _common_run_options(repro)
    repro.set_defaults(func=cmd_repro)

