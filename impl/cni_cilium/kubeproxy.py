"""Removing kube-proxy's iptables state when the module replaces it.

kube-proxy leaves chains named KUBE-* in the nat, filter and mangle tables, jumped to from
the built-in chains. `plan_cleanup` (pure) turns one table's `iptables-save` text into the
commands that remove them: first the rules elsewhere that jump into them, then flush, then
delete. `cleanup` runs the plan with every iptables variant present (nft and legacy keep
separate rule sets), one `iptables-restore --noflush` transaction per table (one iptables
call per command took minutes for 10,000 services: each call rereads the whole ruleset),
so a second run finds nothing and changes nothing.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from typing import Sequence

KUBE_PREFIX = "KUBE-"
TABLES = ("nat", "filter", "mangle")
VARIANTS = ("iptables-nft", "iptables-legacy")


def parse_save(text: str) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(chains declared, rules as (chain, arguments)) of one table's iptables-save output."""
    chains, rules = [], []
    for line in text.splitlines():
        if line.startswith(":"):
            chains.append(line[1:].split()[0])
        elif line.startswith("-A "):
            args = shlex.split(line)
            rules.append((args[1], args[2:]))
    return chains, rules


def _jumps_to_kube(args: Sequence[str]) -> bool:
    for flag, value in zip(args, args[1:]):
        if flag in ("-j", "--jump", "-g", "--goto") and value.startswith(KUBE_PREFIX):
            return True
    return False


def plan_cleanup(save_text: str, table: str) -> tuple[list[str], list[list[str]]]:
    """(KUBE chains found, iptables argument lists that remove them) for one table."""
    chains, rules = parse_save(save_text)
    kube = [c for c in chains if c.startswith(KUBE_PREFIX)]
    commands = [["-t", table, "-D", chain, *args] for chain, args in rules
                if not chain.startswith(KUBE_PREFIX) and _jumps_to_kube(args)]
    commands += [["-t", table, "-F", chain] for chain in kube]
    commands += [["-t", table, "-X", chain] for chain in kube]
    return kube, commands


def restore_script(table: str, commands: Sequence[Sequence[str]]) -> str:
    """The plan's commands for one table as an iptables-restore transaction (pure)."""
    lines = [f"*{table}"]
    for args in commands:
        if list(args[:2]) != ["-t", table]:
            raise ValueError(f"command {' '.join(args)} is not for table {table}")
        lines.append(" ".join(_restore_quote(a) for a in args[2:]))
    return "\n".join([*lines, "COMMIT", ""])


def _restore_quote(arg: str) -> str:
    # iptables-restore splits on blanks and honours double quotes only (as -save writes).
    if arg and not any(c.isspace() or c in "\"'\\" for c in arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def available_variants() -> list[str]:
    """iptables front ends on this host (plain `iptables` when neither variant exists)."""
    found = [v for v in VARIANTS if shutil.which(v) and shutil.which(f"{v}-save")]
    if not found and shutil.which("iptables") and shutil.which("iptables-save"):
        found = ["iptables"]
    return found


def cleanup(dry_run: bool = False, variants: Sequence[str] | None = None) -> dict:
    """Remove every KUBE-* chain; returns {"changed", "removed": {variant: {table: [..]}},
    "errors": [...]}. A table or variant the kernel does not offer is skipped."""
    report: dict = {"changed": False, "removed": {}, "errors": []}
    for variant in variants if variants is not None else available_variants():
        for table in TABLES:
            save = subprocess.run([f"{variant}-save", "-t", table], capture_output=True,
                                  text=True, check=False)
            if save.returncode != 0:
                continue                       # table/variant not available on this kernel
            kube, commands = plan_cleanup(save.stdout, table)
            if not kube and not commands:
                continue
            report["removed"].setdefault(variant, {})[table] = kube
            report["changed"] = True
            if dry_run:
                continue
            res = subprocess.run([f"{variant}-restore", "-w", "--noflush"],
                                 input=restore_script(table, commands), capture_output=True,
                                 text=True, check=False)
            if res.returncode != 0:
                report["errors"].append(f"{variant}-restore -t {table} ({len(commands)} "
                                        f"commands): {res.stderr.strip()}")
    return report
