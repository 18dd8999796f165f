"""Compile and load the BPF programs with bcc against maps pinned in the node's bpffs (edge).

With a compile cache (`compilecache`), a node whose sources, bcc and kernel build match an
entry loads the programs from it without clang; otherwise it compiles and stores an entry.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field

from .. import paths
from . import compilecache
from .bpfcache import Uncacheable, origin_line
from .bpfsys import BPF_PROG_TYPE_SCHED_CLS, PinnedMap, ProgramRefused, is_bpffs, prog_run_stats
from .compilecache import CacheMismatch, CacheOutcome, CompileCache
from .source import MAIN, PROGRAMS, abi_digest, bundle

log = logging.getLogger("cni-cilium.bpf")

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

    bpf: object                 # what owns the program fds: bcc's module, or CachedPrograms
    prog_fds: dict[str, int]
    pin_dir: str
    digest: str
    compile_seconds: float      # clang (0 when the programs came from the compile cache)
    bpf_dir: str
    load_seconds: float = 0.0   # into the kernel (verifier), with the entry's maps on a hit
    origin: str = "compile"     # or "cache"
    cache: CacheOutcome = field(default_factory=lambda: CacheOutcome("off"))

    def open_map(self, name: str) -> PinnedMap:
        if name in ROOT_MAPS:
            return PinnedMap(os.path.join(os.path.dirname(self.pin_dir), name))
        return PinnedMap(os.path.join(self.pin_dir, name))

    def instructions(self, program: str) -> bytes:
        """The program's instructions as loaded (map references hold this process's fds)."""
        if isinstance(self.bpf, compilecache.CachedPrograms):
            return self.bpf.instructions(program)
        return self.bpf.dump_func(program.encode())  # type: ignore[attr-defined]

    def describe(self) -> dict:
        """The `bpf` section of the agent's status."""
        return {"origin": self.origin, "compileSeconds": round(self.compile_seconds, 3),
                "loadSeconds": round(self.load_seconds, 3), "cache": self.cache.to_dict(),
                "abi": self.digest, "pinDir": self.pin_dir, "sources": self.bpf_dir,
                "programs": self.program_runs()}

    def program_runs(self) -> dict[str, dict[str, int]]:
        """Per program: its kernel id, runs and run time (ns, summed over every device it
        is attached to; counted while kernel.bpf_stats_enabled is 1)."""
        out = {}
        for name, fd in sorted(self.prog_fds.items()):
            run = prog_run_stats(fd)
            out[name] = {"id": run.prog_id, "runCount": run.run_cnt,
                         "runTimeNs": run.run_time_ns}
        return out

    def summary(self) -> str:
        """The agent's log line: where the programs came from and how long it took."""
        return f"{origin_line(self.describe())}, maps in {self.pin_dir}"


def _compile_inputs(bpf_dir: str, pin_root: str) -> tuple[str, str, str, list[str]]:
    """(translation unit, map layout digest, pin directory, compiler flags): what a compile
    of `bpf_dir` is made of, and so what the compile cache's key covers."""
    sources = read_sources(bpf_dir)
    digest = abi_digest(sources)
    pin_dir = pin_dir_for(digest, pin_root)
    return bundle(sources), digest, pin_dir, [f'-DPIN_DIR="{pin_dir}"',
                                              f'-DPIN_ROOT="{pin_root}"']


def load(bpf_dir: str, pin_root: str = paths.PIN_DIR, bpffs: str = paths.BPFFS,
         cache: CompileCache | None = None) -> LoadedDatapath:
    """Load the programs against the pinned maps (created if new): from `cache` when it
    holds this compile, else compiled once with bcc (and then stored in `cache`)."""
    text, digest, pin_dir, cflags = _compile_inputs(bpf_dir, pin_root)
    ensure_bpffs(bpffs)
    os.makedirs(pin_dir, exist_ok=True)
    if cache is None:
        return _compile(text, cflags, bpf_dir, pin_dir, digest, CacheOutcome("off"))
    key, inputs = cache.key_for(text, cflags, PROGRAMS, BPF_PROG_TYPE_SCHED_CLS)
    outcome = CacheOutcome("not-stored", key, cache.path_for(key))
    started = time.monotonic()
    entry, why = cache.read(key)
    if entry is not None:
        try:
            programs = compilecache.load_entry(entry, PROGRAMS)
        except ProgramRefused as exc:
            raise LoadError(_refusal(exc, outcome.file)) from exc
        except (CacheMismatch, OSError) as exc:
            why = f"unusable here: {exc}"
        else:
            outcome.result = "hit"
            return LoadedDatapath(programs, dict(programs.fds), pin_dir, digest, 0.0, bpf_dir,
                                  time.monotonic() - started, "cache", outcome)
    if why != "absent":
        log.warning("bpf: compile cache entry %s %s; compiling instead", outcome.file, why)
        outcome.reason = why
    datapath = _compile(text, cflags, bpf_dir, pin_dir, digest, outcome)
    try:
        stored = compilecache.record_compile(
            datapath.bpf, PROGRAMS, datapath.prog_fds, [pin_dir, pin_root], key, inputs,
            datapath.compile_seconds, os.uname().nodename)
        cache.write(stored)
        outcome.result = "stored"
    except (Uncacheable, OSError) as exc:
        outcome.reason = "; ".join(filter(None, (outcome.reason, f"not stored: {exc}")))
        log.warning("bpf: compile not stored in the cache: %s", exc)
    return datapath


def _refusal(exc: ProgramRefused, file: str) -> str:
    # The verdict is at the end of the verifier's log; the instruction trace before it.
    lines = [ln.strip() for ln in exc.verifier_log.splitlines() if ln.strip()]
    verdict = [ln for ln in lines if not ln.startswith("processed ")][-3:]
    return (f"the kernel refused the datapath loaded from the compile cache ({file}): "
            f"{exc.strerror}" + (f"; verifier: {' / '.join(verdict)}" if verdict else ""))


def _compile(text: str, cflags: list[str], bpf_dir: str, pin_dir: str, digest: str,
             outcome: CacheOutcome) -> LoadedDatapath:
    try:
        from bcc import BPF  # type: ignore[import-not-found]
    except ImportError as exc:
        raise LoadError("bcc (python3-bpfcc) is not importable") from exc
    started = time.monotonic()
    try:
        module = BPF(text=text.encode(), cflags=cflags)
        compiled = time.monotonic()
        fds = {name: module.load_func(name.encode(), BPF.SCHED_CLS).fd for name in PROGRAMS}
    except Exception as exc:
        raise LoadError(f"bcc could not compile/load {bpf_dir}/{MAIN}: {exc}") from exc
    return LoadedDatapath(module, fds, pin_dir, digest, compiled - started, bpf_dir,
                          time.monotonic() - compiled, "compile", outcome)


def prepare_key(bpf_dir: str, cache: CompileCache, pin_root: str = paths.PIN_DIR
                ) -> tuple[str, dict]:
    """The cache key `load` would use for these sources on this node (nothing loaded)."""
    text, _digest, _pin_dir, cflags = _compile_inputs(bpf_dir, pin_root)
    return cache.key_for(text, cflags, PROGRAMS, BPF_PROG_TYPE_SCHED_CLS)


_CLONE_NEWNS = 0x00020000
_MS_REC, _MS_PRIVATE = 0x4000, 0x40000


def enter_private_bpffs(bpffs: str = paths.BPFFS) -> None:
    """Move this process into its own mount namespace with a fresh bpffs at `bpffs`, so a
    compile for the cache creates its maps there and never touches a running agent's."""
    libc = ctypes.CDLL(None, use_errno=True)

    def check(ret: int, what: str) -> None:
        if ret != 0:
            raise LoadError(f"cannot {what}: {os.strerror(ctypes.get_errno())}")

    check(libc.unshare(_CLONE_NEWNS), "unshare the mount namespace")
    check(libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "make mounts private")
    check(libc.mount(b"bpf", os.fsencode(bpffs), b"bpf", 0, None), f"mount a bpffs at {bpffs}")


def build_cache(bpf_dir: str, cache: CompileCache) -> CacheOutcome:
    """Make sure `cache` holds this node's compile of `bpf_dir`: `present` when it does,
    else compile in a private bpffs (this process's own mount namespace) and store it."""
    key, _inputs = prepare_key(bpf_dir, cache)
    entry, _why = cache.read(key)
    if entry is not None:
        return CacheOutcome("present", key, cache.path_for(key))
    enter_private_bpffs()
    datapath = load(bpf_dir, cache=cache)
    if datapath.cache.key != key:
        raise LoadError(f"the compile's key {datapath.cache.key} is not the expected {key}")
    return datapath.cache


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
