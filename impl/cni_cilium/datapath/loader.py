"""Compile and load the BPF programs with bcc against maps pinned in the node's bpffs (edge)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time
from dataclasses import dataclass

from .. import paths
from .bpfsys import PinnedMap, is_bpffs
from .source import MAIN, PROGRAMS, abi_digest, bundle

# Maps pinned at the root, outside the per-layout directory: they outlive layout changes.
ROOT_MAPS = ("agent_state",)
REPO_BPF_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "..", "bpf")


class LoadError(RuntimeError):
    """The programs could not be compiled or loaded; the message says why."""


def find_bpf_dir(explicit: str | None = None) -> str:
    """The BPF sources: --bpf-dir, else $CNI_CILIUM_BPF_DIR, else the installed copy, else
    the source checkout's."""
    for candidate in (explicit, os.environ.get("CNI_CILIUM_BPF_DIR"), paths.BPF_DIR,
                      REPO_BPF_DIR):
        if candidate and os.path.isfile(os.path.join(candidate, MAIN)):
            return os.path.realpath(candidate)
    raise LoadError(f"no BPF sources found (looked for {MAIN} in "
                    f"{explicit or paths.BPF_DIR} and {os.path.realpath(REPO_BPF_DIR)})")


def read_sources(bpf_dir: str) -> dict[str, str]:
    """`cni_cilium.c` and `lib/*.h` keyed by their path relative to bpf_dir."""
    sources: dict[str, str] = {}
    headers = sorted(glob.glob(os.path.join(bpf_dir, "lib", "*.h")))
    for path in [os.path.join(bpf_dir, MAIN), *headers]:
        with open(path, encoding="utf-8") as fh:
            sources[os.path.relpath(path, bpf_dir)] = fh.read()
    return sources


def ensure_bpffs(mountpoint: str = paths.BPFFS) -> None:
    """Mount a bpffs instance at mountpoint unless one is there."""
    if is_bpffs(mountpoint):
        return
    os.makedirs(mountpoint, exist_ok=True)
    res = subprocess.run(["mount", "-t", "bpf", "bpf", mountpoint], capture_output=True,
                         text=True, check=False)
    if res.returncode != 0 or not is_bpffs(mountpoint):
        raise LoadError(f"cannot mount bpffs at {mountpoint}: {res.stderr.strip()}")


def pin_dir_for(digest: str, root: str = paths.PIN_DIR) -> str:
    return os.path.join(root, digest)


def current_pin_dir(bpf_dir: str | None = None) -> str:
    """Where the maps of the installed sources are pinned (used by the CLI)."""
    return pin_dir_for(abi_digest(read_sources(find_bpf_dir(bpf_dir))))


@dataclass
class LoadedDatapath:
    """Programs loaded and ready to attach; keep the object alive while they are in use."""

    bpf: object                 # the bcc.BPF module (owns the program fds)
    prog_fds: dict[str, int]
    pin_dir: str
    digest: str
    compile_seconds: float
    bpf_dir: str

    def open_map(self, name: str) -> PinnedMap:
        if name in ROOT_MAPS:
            return PinnedMap(os.path.join(os.path.dirname(self.pin_dir), name))
        return PinnedMap(os.path.join(self.pin_dir, name))


def load(bpf_dir: str, pin_root: str = paths.PIN_DIR, bpffs: str = paths.BPFFS
         ) -> LoadedDatapath:
    """Compile the programs once and load them against the pinned maps (created if new)."""
    try:
        from bcc import BPF  # type: ignore[import-not-found]
    except ImportError as exc:
        raise LoadError("bcc (python3-bpfcc) is not importable") from exc
    sources = read_sources(bpf_dir)
    digest = abi_digest(sources)
    text = bundle(sources)
    ensure_bpffs(bpffs)
    pin_dir = pin_dir_for(digest, pin_root)
    os.makedirs(pin_dir, exist_ok=True)
    started = time.monotonic()
    try:
        module = BPF(text=text.encode(),
                     cflags=[f'-DPIN_DIR="{pin_dir}"', f'-DPIN_ROOT="{pin_root}"'])
        fds = {name: module.load_func(name.encode(), BPF.SCHED_CLS).fd for name in PROGRAMS}
    except Exception as exc:
        raise LoadError(f"bcc could not compile/load {bpf_dir}/{MAIN}: {exc}") from exc
    return LoadedDatapath(module, fds, pin_dir, digest, time.monotonic() - started, bpf_dir)


def remove_stale_pins(keep: str, root: str = paths.PIN_DIR) -> list[str]:
    """Delete pinned map sets of other layouts (after the current one is in use)."""
    removed = []
    if not os.path.isdir(root):
        return removed
    for entry in sorted(os.listdir(root)):
        path = os.path.join(root, entry)
        if entry != keep and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
