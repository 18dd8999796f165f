"""The datapath's compile cache on a node (edge): where entries live, the node's toolchain
facts that go into the key, atomic reads and writes, recording what bcc compiled, and
loading an entry's programs through bpf(2) without bcc.

Layout: one file per key, `<cache dir>/<key>.json` (`/var/cache/cni-cilium/bpf` unless
$CNI_CILIUM_BPF_CACHE names another directory, or `off`). The format, the key and the
relocation of map references are `bpfcache` (pure).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import importlib.util
import os
import re
import tempfile
import time
from dataclasses import dataclass

from .. import paths
from . import bpfsys
from .bpfcache import (
    CacheEntry,
    CacheFileError,
    MapDef,
    ProgramImage,
    Uncacheable,
    decode_entry,
    derive_key,
    encode_entry,
    extract_map_refs,
    file_name,
    files_to_prune,
    is_key,
    key_inputs,
    patch_map_refs,
    referenced_map_fds,
)

CACHE_ENV = "CNI_CILIUM_BPF_CACHE"
OFF = "off"
KEEP_ENTRIES = 8          # older entries (other sources or kernels) are removed on a write
# Files of the kernel headers bcc compiles against that identify their build: release,
# Debian package version, configuration, LINUX_VERSION_CODE.
HEADER_FILES = ("include/generated/utsrelease.h", "include/generated/package.h",
                "include/generated/autoconf.h", "include/generated/uapi/linux/version.h")
LIBBCC_PATTERNS = ("/usr/lib/*/libbcc.so.0", "/usr/lib64/libbcc.so.0", "/usr/lib/libbcc.so.0",
                   "/usr/local/lib*/libbcc.so.0", "/lib/*/libbcc.so.0", "/lib64/libbcc.so.0")


class CacheMismatch(RuntimeError):
    """An entry that this node cannot use as it is (its pinned maps differ, a program came
    out different): the agent compiles instead."""


@dataclass
class CacheOutcome:
    """What the cache did at a load: `off`, `hit` (loaded from it), `stored` (compiled and
    kept), `not-stored` (compiled, not kept: reason), `present` (build: nothing to do)."""

    result: str
    key: str = ""
    file: str = ""
    reason: str = ""

    def to_dict(self) -> dict:
        return {"result": self.result, "key": self.key, "file": self.file,
                "reason": self.reason}


def cache_from_env(default: str = paths.BPF_CACHE_DIR) -> CompileCache | None:
    """The node's cache: $CNI_CILIUM_BPF_CACHE (a directory, or `off`), else `default`."""
    value = os.environ.get(CACHE_ENV, "").strip()
    if value.lower() == OFF:
        return None
    return CompileCache(value or default)


# ---------------------------------------------------------------- toolchain facts
def _bcc_python_version() -> str:
    """The bcc bindings' version, read from their package without importing it (importing
    bcc loads libbcc, which a cache hit never needs)."""
    spec = importlib.util.find_spec("bcc")
    if spec is None or not spec.submodule_search_locations:
        return "absent"
    for location in spec.submodule_search_locations:
        with contextlib.suppress(OSError):
            with open(os.path.join(location, "version.py"), encoding="utf-8") as fh:
                match = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", fh.read())
            if match:
                return match.group(1)
    return "unknown"


def _libbcc_identity() -> str:
    """The compiler library bcc loads (it embeds clang/LLVM): its file name and size."""
    for pattern in LIBBCC_PATTERNS:
        for path in sorted(glob.glob(pattern)):
            real = os.path.realpath(path)
            with contextlib.suppress(OSError):
                return f"{os.path.basename(real)} {os.stat(real).st_size}"
    return "absent"


def _headers_identity(link: str) -> str:
    """Where a /lib/modules/<release>/{build,source} link points and a hash of the files
    naming that headers build."""
    if not os.path.exists(link):
        return "absent"
    real = os.path.realpath(link)
    digest = hashlib.sha256()
    for rel in HEADER_FILES:
        with contextlib.suppress(OSError), open(os.path.join(real, rel), "rb") as fh:
            digest.update(rel.encode() + b"\0" + fh.read() + b"\0")
    return f"{real} {digest.hexdigest()[:16]}"


def toolchain_facts() -> dict[str, str]:
    """This node's facts that change what clang makes of the same sources."""
    uname = os.uname()
    modules = os.path.join("/lib/modules", uname.release)
    return {"bcc": _bcc_python_version(), "libbcc": _libbcc_identity(),
            "kernelRelease": uname.release, "kernelVersion": uname.version,
            "machine": uname.machine,
            "headersBuild": _headers_identity(os.path.join(modules, "build")),
            "headersSource": _headers_identity(os.path.join(modules, "source"))}


# ---------------------------------------------------------------- the cache directory
class CompileCache:
    """Entries in one directory, each written whole or not at all."""

    def __init__(self, directory: str):
        self.directory = directory

    def key_for(self, unit: str, cflags: list[str], programs: tuple[str, ...],
                prog_type: int) -> tuple[str, dict]:
        inputs = key_inputs(unit, cflags, programs, prog_type, toolchain_facts())
        return derive_key(inputs), inputs

    def path_for(self, key: str) -> str:
        return os.path.join(self.directory, file_name(key))

    def read(self, key: str) -> tuple[CacheEntry | None, str]:
        """(entry, "") or (None, why there is none usable)."""
        path = self.path_for(key)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return None, "absent"
        except OSError as exc:
            return None, f"unreadable: {exc}"
        try:
            entry = decode_entry(data, key)
        except CacheFileError as exc:
            return None, f"invalid: {exc}"
        with contextlib.suppress(OSError):
            os.utime(path)           # last use, for pruning
        return entry, ""

    def write(self, entry: CacheEntry) -> str:
        """Store an entry atomically (a temporary file renamed over the final name), then
        drop the least recently used entries beyond KEEP_ENTRIES."""
        data = encode_entry(entry)
        os.makedirs(self.directory, exist_ok=True)
        path = self.path_for(entry.key)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._prune()
        return path

    def _prune(self) -> None:
        files = []
        for name in os.listdir(self.directory):
            if name.endswith(".json") and is_key(name[:-5]):
                with contextlib.suppress(OSError):
                    files.append((name, os.stat(os.path.join(self.directory, name)).st_mtime))
        for name in files_to_prune(files, KEEP_ENTRIES):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.directory, name))

    def entries(self) -> list[dict]:
        """Every entry file with its summary, or the reason it is unusable."""
        out = []
        names = sorted(os.listdir(self.directory)) if os.path.isdir(self.directory) else []
        for name in names:
            if not (name.endswith(".json") and is_key(name[:-5])):
                continue
            entry, why = self.read(name[:-5])
            row = {"file": os.path.join(self.directory, name)}
            row.update(entry.summary() if entry else {"key": name[:-5], "invalid": why})
            out.append(row)
        return out


# ---------------------------------------------------------------- recording a compile
def _pinned_map_ids(directories: list[str]) -> dict[int, str]:
    """Map id -> pin path of the maps pinned directly in `directories`."""
    found: dict[int, str] = {}
    for directory in directories:
        with contextlib.suppress(FileNotFoundError):
            for name in sorted(os.listdir(directory)):
                path = os.path.join(directory, name)
                if not os.path.isfile(path):
                    continue
                try:
                    fd = bpfsys.obj_get(path)
                except OSError:
                    continue
                try:
                    found[bpfsys.map_info(fd).map_id] = path
                except OSError:
                    pass            # a pinned program, not a map
                finally:
                    os.close(fd)
    return found


def _module_map_fds(module) -> list[int]:
    """The fds of every map bcc created (or opened) for the module."""
    import ctypes

    from bcc import lib as bcclib  # type: ignore[import-not-found]

    # Not declared by every release's Python bindings; in libbcc since long before 0.18.
    bcclib.bpf_num_tables.restype = ctypes.c_size_t
    bcclib.bpf_num_tables.argtypes = [ctypes.c_void_p]
    bcclib.bpf_table_fd_id.restype = ctypes.c_int
    bcclib.bpf_table_fd_id.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    count = bcclib.bpf_num_tables(module.module)
    return [fd for fd in (bcclib.bpf_table_fd_id(module.module, i) for i in range(count))
            if fd >= 0]


def map_def(info: bpfsys.MapInfo, pin: str | None) -> MapDef:
    return MapDef(info.name, info.map_type, info.key_size, info.value_size, info.max_entries,
                  info.flags, pin)


def record_compile(module, programs: tuple[str, ...], prog_fds: dict[str, int],
                   pin_dirs: list[str], key: str, inputs: dict, compile_seconds: float,
                   node: str) -> CacheEntry:
    """The entry for what bcc just compiled and loaded: each program's instructions with
    map fds replaced by map names, every map's definition and pin, the kernel's tags."""
    from bcc import lib as bcclib  # type: ignore[import-not-found]

    raw = {name: module.dump_func(name.encode()) for name in programs}
    pinned = _pinned_map_ids(pin_dirs)
    # The maps the programs load, and the pinned ones no program loads (bcc creates every
    # declared map; the agent opens e.g. agent_state by its pin).
    referenced = set().union(*(referenced_map_fds(insns) for insns in raw.values()))
    fds = sorted(referenced | {fd for fd in _module_map_fds(module)
                               if bpfsys.map_info(fd).map_id in pinned})
    names: dict[int, str] = {}
    maps: dict[str, MapDef] = {}
    for fd in fds:
        info = bpfsys.map_info(fd)
        if info.map_extra:
            raise Uncacheable(f"map {info.name} has map_extra {info.map_extra:#x}")
        pin = pinned.get(info.map_id)
        base = os.path.basename(pin) if pin else (info.name or f"map{fd}")
        ref = base
        while ref in maps:
            ref += "_"
        maps[ref] = map_def(info, pin)
        maps[ref].check_creatable()
        names[fd] = ref
    images = {}
    for name in programs:
        insns, relocations = extract_map_refs(raw[name], names)
        images[name] = ProgramImage(insns, relocations, bpfsys.prog_info(prog_fds[name]).tag)
    return CacheEntry(key=key, inputs=inputs,
                      license=bcclib.bpf_module_license(module.module).decode(),
                      kern_version=int(bcclib.bpf_module_kern_version(module.module)),
                      prog_type=bpfsys.BPF_PROG_TYPE_SCHED_CLS, maps=maps, programs=images,
                      node=os.uname().nodename, created=time.time(),
                      compile_seconds=round(compile_seconds, 3))


# ---------------------------------------------------------------- loading an entry
class CachedPrograms:
    """Programs loaded from an entry: owns their fds (as bcc's module does on a compile)."""

    def __init__(self, fds: dict[str, int], insns: dict[str, bytes]):
        self.fds = fds
        self._insns = insns

    def instructions(self, name: str) -> bytes:
        """The instructions loaded, with this process's map fds (like bcc's dump_func)."""
        return self._insns[name]

    def close(self) -> None:
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = {}


def _open_or_create_maps(entry: CacheEntry) -> dict[str, int]:
    """An fd per map of the entry: existing pins must have the recorded shape (checked
    before anything is created); absent ones are created and pinned, private ones created."""
    fds: dict[str, int] = {}
    try:
        for ref, want in entry.maps.items():
            if want.pin is None:
                continue
            try:
                fds[ref] = bpfsys.obj_get(want.pin)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    continue
                raise CacheMismatch(f"cannot open {want.pin}: {exc}") from exc
            _check_shape(want, fds[ref])
        for ref, want in entry.maps.items():
            if ref in fds:
                continue
            want.check_creatable()
            fds[ref] = bpfsys.create_map(want.map_type, want.key_size, want.value_size,
                                         want.max_entries, want.flags, want.name)
            if want.pin is None:
                continue
            try:
                bpfsys.pin(fds[ref], want.pin)
            except OSError as exc:
                if exc.errno != errno.EEXIST:
                    raise CacheMismatch(f"cannot pin {want.pin}: {exc}") from exc
                os.close(fds.pop(ref))       # pinned meanwhile by someone else: use theirs
                fds[ref] = bpfsys.obj_get(want.pin)
                _check_shape(want, fds[ref])
    except BaseException:
        for fd in fds.values():
            os.close(fd)
        raise
    return fds


def _check_shape(want: MapDef, fd: int) -> None:
    have = map_def(bpfsys.map_info(fd), want.pin)
    if have.shape() != want.shape():
        raise CacheMismatch(f"{want.pin} is {have.describe()}; the entry has "
                            f"{want.describe()}")


def load_entry(entry: CacheEntry, programs: tuple[str, ...]) -> CachedPrograms:
    """Open or create the entry's maps, patch their fds in and load the programs (the
    verifier runs: bpfsys.ProgramRefused when it refuses one)."""
    missing = [name for name in programs if name not in entry.programs]
    if missing:
        raise CacheMismatch(f"the entry lacks programs {', '.join(missing)}")
    bpfsys.raise_memlock_limit()
    map_fds = _open_or_create_maps(entry)
    loaded: dict[str, int] = {}
    insns: dict[str, bytes] = {}
    try:
        for name in programs:
            image = entry.programs[name]
            insns[name] = patch_map_refs(image.insns, image.relocations, map_fds)
            loaded[name] = bpfsys.load_program(entry.prog_type, insns[name], entry.license,
                                               entry.kern_version, name)
            tag = bpfsys.prog_info(loaded[name]).tag
            if image.tag and tag != image.tag:
                raise CacheMismatch(f"program {name} loaded with tag {tag}, compiled it had "
                                    f"{image.tag}")
    except BaseException:
        for fd in loaded.values():
            os.close(fd)
        raise
    finally:
        for fd in map_fds.values():   # the programs hold their maps from here on
            os.close(fd)
    return CachedPrograms(loaded, insns)
