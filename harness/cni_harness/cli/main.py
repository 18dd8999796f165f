"""`cni-harness`: clusters on providers, deploy, suites, matrix runs and reports."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from .. import PROJECT_ROOT, __version__
from ..matrix.matrix import DEFAULT_MATRIX, MatrixError, load_matrix
from ..suites.runner import known_suites, run_suites
from . import kind as kind_cli
from . import vagrant as vagrant_cli
from .run import add_matrix_run_parser, add_repro_parser, add_run_parser, default_out

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _venv_bin(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


def cmd_matrix_validate(args: argparse.Namespace) -> int:
    try:
        matrix = load_matrix(args.file)
    except MatrixError as exc:
        for line in exc.problems:
            print(f"error: {line}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"error: {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
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


# The suites `make demo` runs, in order, when the project has them.
DEMO_SUITES = ("traffic", "dsr", "reboot")


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
            print(f"==> {title} failed (exit {rc})", file=sys.stderr)
            return EXIT_FAIL
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cni-harness",
        description="Integration harness for cni-cilium: clusters, deploy, suites, matrix,"
        " reports.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    matrix = sub.add_parser("matrix", help="the OS/kernel matrix")
    matrix_sub = matrix.add_subparsers(dest="matrix_command", metavar="SUBCOMMAND")
    matrix_sub.required = True
    validate = matrix_sub.add_parser("validate", help="check matrix.yaml against its schema")
    validate.add_argument("file", nargs="?", default=DEFAULT_MATRIX)
    validate.add_argument("--json", action="store_true")
    validate.set_defaults(func=cmd_matrix_validate)
    add_matrix_run_parser(matrix_sub)
    add_run_parser(sub)
    add_repro_parser(sub)

    from .cluster import register as register_cluster_commands
    register_cluster_commands(sub)
    vagrant_cli.register(sub)
    kind_cli.register(sub)

    demo = sub.add_parser("demo", help="the main job: cluster, deploy, suites, report")
    demo.add_argument("--out", help="output directory (default results/demo-TIMESTAMP)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `cni-harness` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command: list[str] = []
    if "--" in argv:        # `... -- CMD ARGS`: the command is not for argparse
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    if command:
        if not hasattr(args, "argv"):
            parser.error("this command takes no `-- CMD`")
        args.argv = command
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
