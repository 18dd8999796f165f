"""`cni-harness`: clusters on providers, deploy, suites, matrix runs and reports.

One parser: each command module here registers its commands (`register(subparsers)`); one
error path: a handler raises `common.CliError`, and `main` prints it on stderr and exits
with its code.
"""

from __future__ import annotations

import argparse
import signal
import sys

from .. import __version__
from ..signals import exit_on_sigterm
from . import cluster, kind, run, vagrant
from .common import CliError

COMMAND_MODULES = (run, cluster, vagrant, kind)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cni-harness",
        description="Integration harness for cni-cilium: clusters, deploy, suites, matrix,"
        " reports.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMAND_MODULES:
        module.register(sub)
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
    # SIGTERM unwinds like Ctrl-C does: `finally` blocks stop what the command started
    # (guests, VMs, clusters in creation) instead of leaving them running.
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        for line in exc.lines:
            print(f"error: {line}", file=sys.stderr)
        return exc.exit_code

