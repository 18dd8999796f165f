"""The datapath's compile cache (pure): its key, its file format, and the map references
inside the programs' instructions.

bcc compiles `bpf/` with clang and writes the fd (in the compiling process) of each map a
program uses into the ld_imm64 instruction that loads it. A cache entry keeps every
program's instructions with those immediates zeroed and, per such instruction, which map it
names. Another process with the same key (same sources, flags, bcc, kernel build and
headers) opens or creates those maps, patches its own fds in and loads the programs
without clang; the kernel's verifier still checks them there.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
import sys
from dataclasses import dataclass
from typing import Mapping, Sequence

FORMAT = "cni-cilium-bpf-cache/1"
FILE_SUFFIX = ".json"
_KEY = re.compile(r"^[0-9a-f]{64}$")

# eBPF instruction encoding (include/uapi/linux/bpf.h).
INSN_SIZE = 8
LD_IMM64 = 0x18          # BPF_LD | BPF_IMM | BPF_DW: the only two-slot instruction
CALL = 0x85              # BPF_JMP | BPF_CALL
PSEUDO_MAP_FD = 1        # ld_imm64 src_reg: imm is a map fd
PSEUDO_MAP_VALUE = 2     # imm is a map fd, the next slot's imm an offset into its value
_MAP_SOURCES = (PSEUDO_MAP_FD, PSEUDO_MAP_VALUE)
_OTHER_LD_SOURCES = {3: "a BTF id", 4: "a function address", 5: "a map index",
                     6: "a map value by index"}
# bcc loads BPF-to-BPF calls with BTF function info, which a cache entry does not keep
# (the verifier may judge such subprograms differently without it).
_CALL_SOURCES = {1: "a BPF-to-BPF call", 2: "a kernel function call"}
# Map types that need more than sizes and flags to be created (inner maps, BTF).
_MAP_TYPES_NEEDING_MORE = {12: "array of maps", 13: "hash of maps", 21: "socket storage",
                           26: "struct_ops", 28: "inode storage", 29: "task storage",
                           32: "cgroup storage"}
_INSN = struct.Struct("=BBhi")
_SRC_SHIFT, _DST_MASK = (4, 0x0F) if sys.byteorder == "little" else (0, 0xF0)


class CacheFileError(ValueError):
    """A cache file that cannot be used (truncated, corrupt, another key or format)."""


class Uncacheable(ValueError):
    """A compile whose result an entry could not reproduce without bcc."""


def is_key(text: str) -> bool:
    return bool(_KEY.match(text))


def file_name(key: str) -> str:
    """The entry's file name in the cache directory."""
    if not is_key(key):
        raise ValueError(f"not a cache key: {key!r}")
    return key + FILE_SUFFIX


# ---------------------------------------------------------------- the key
def key_inputs(unit: str, cflags: Sequence[str], programs: Sequence[str], prog_type: int,
               toolchain: Mapping[str, str]) -> dict:
    """Everything that decides the bytecode: the translation unit clang compiles (bpf/
    bundled), the flags (pin paths included), which programs are loaded and as what, and
    the toolchain facts of the node (bcc, kernel build, headers; see compilecache)."""
    return {"format": FORMAT,
            "unitSha256": hashlib.sha256(unit.encode()).hexdigest(),
            "cflags": list(cflags), "programs": list(programs), "progType": prog_type,
            "toolchain": dict(sorted(toolchain.items()))}


def derive_key(inputs: Mapping) -> str:
    """64 hex digits: the sha256 of the inputs in canonical JSON."""
    return hashlib.sha256(_canonical(inputs)).hexdigest()


def _canonical(doc: Mapping) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


# ---------------------------------------------------------------- instructions
def _decode(insn: bytes, index: int) -> tuple[int, int, int]:
    code, regs, _off, imm = _INSN.unpack_from(insn, index * INSN_SIZE)
    return code, (regs >> _SRC_SHIFT) & 0x0F, imm


def _count(insns: bytes) -> int:
    if len(insns) % INSN_SIZE:
        raise CacheFileError(f"{len(insns)} bytes of instructions, not a multiple of "
                             f"{INSN_SIZE}")
    return len(insns) // INSN_SIZE


def _map_loads(insns: bytes) -> list[tuple[int, int]]:
    """(index, imm) of every ld_imm64 that names a map; refuses other relocations."""
    loads = []
    count = _count(insns)
    index = 0
    while index < count:
        code, src, imm = _decode(insns, index)
        if code == LD_IMM64:
            if index + 1 >= count:
                raise Uncacheable(f"insn {index}: ld_imm64 without its second slot")
            if src in _MAP_SOURCES:
                loads.append((index, imm))
            elif src in _OTHER_LD_SOURCES:
                raise Uncacheable(f"insn {index} loads {_OTHER_LD_SOURCES[src]}")
            index += 2
            continue
        if code == CALL and src in _CALL_SOURCES:
            raise Uncacheable(f"insn {index} is {_CALL_SOURCES[src]}")
        index += 1
    return loads


def referenced_map_fds(insns: bytes) -> set[int]:
    """The map fds a compiled program's instructions load."""
    return {imm for _index, imm in _map_loads(insns)}


def _with_imm(insns: bytearray, index: int, imm: int) -> None:
    struct.pack_into("=i", insns, index * INSN_SIZE + 4, imm)


def extract_map_refs(insns: bytes, fd_names: Mapping[int, str]
                     ) -> tuple[bytes, tuple[tuple[int, str], ...]]:
    """The instructions with every map fd zeroed, and (instruction index, map name) for
    each: what an entry stores of a compiled program."""
    out = bytearray(insns)
    refs = []
    for index, fd in _map_loads(insns):
        if fd not in fd_names:
            raise Uncacheable(f"insn {index} loads fd {fd}, which is none of the module's maps")
        _with_imm(out, index, 0)
        refs.append((index, fd_names[fd]))
    return bytes(out), tuple(refs)


def patch_map_refs(insns: bytes, relocations: Sequence[tuple[int, str]],
                   fds: Mapping[str, int]) -> bytes:
    """The instructions with this process's map fds written where the entry says."""
    count = _count(insns)
    out = bytearray(insns)
    for index, name in relocations:
        if not 0 <= index < count - 1:
            raise CacheFileError(f"relocation at insn {index} outside the program "
                                 f"({count} insns)")
        code, src, imm = _decode(insns, index)
        if code != LD_IMM64 or src not in _MAP_SOURCES or imm != 0:
            raise CacheFileError(f"relocation at insn {index} is not a zeroed map load "
                                 f"(code {code:#x}, src {src}, imm {imm})")
        if name not in fds:
            raise CacheFileError(f"relocation at insn {index} names unknown map {name!r}")
        _with_imm(out, index, fds[name])
    return bytes(out)


# ---------------------------------------------------------------- entries
@dataclass(frozen=True)
class MapDef:
    """A map the programs use: how to create it, and where it is pinned (None: private to
    the programs, created afresh like bcc does)."""

    name: str
    map_type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    pin: str | None = None

    def shape(self) -> tuple[int, int, int, int, int]:
        return (self.map_type, self.key_size, self.value_size, self.max_entries, self.flags)

    def describe(self) -> str:
        return (f"type {self.map_type}, key {self.key_size} B, value {self.value_size} B, "
                f"{self.max_entries} entries, flags {self.flags:#x}")

    def check_creatable(self) -> None:
        if self.map_type in _MAP_TYPES_NEEDING_MORE:
            raise Uncacheable(f"map {self.name}: a {_MAP_TYPES_NEEDING_MORE[self.map_type]} "
                              "needs more than its sizes to be created")

    def to_dict(self) -> dict:
        return {"name": self.name, "type": self.map_type, "keySize": self.key_size,
                "valueSize": self.value_size, "maxEntries": self.max_entries,
                "flags": self.flags, "pin": self.pin}

    @classmethod
    def from_dict(cls, doc: Mapping) -> MapDef:
        pin = doc["pin"]
        return cls(str(doc["name"]), int(doc["type"]), int(doc["keySize"]),
                   int(doc["valueSize"]), int(doc["maxEntries"]), int(doc["flags"]),
                   None if pin is None else str(pin))


@dataclass(frozen=True)
class ProgramImage:
    """One program as stored: instructions with map fds zeroed, where maps go, and the tag
    the kernel gave the compiled program (it hashes the instructions with map references
    zeroed, so a load from the entry must get the same one)."""

    insns: bytes
    relocations: tuple[tuple[int, str], ...]
    tag: str = ""

    def to_dict(self) -> dict:
        return {"insns": base64.b64encode(self.insns).decode("ascii"),
                "relocations": [[index, name] for index, name in self.relocations],
                "tag": self.tag}

    @classmethod
    def from_dict(cls, doc: Mapping) -> ProgramImage:
        insns = base64.b64decode(doc["insns"].encode("ascii"), validate=True)
        return cls(insns, tuple((int(i), str(n)) for i, n in doc["relocations"]),
                   str(doc.get("tag", "")))


@dataclass(frozen=True)
class CacheEntry:
    """What one compile leaves for every later load with the same key."""

    key: str
    inputs: dict
    license: str
    kern_version: int
    prog_type: int
    maps: dict[str, MapDef]
    programs: dict[str, ProgramImage]
    node: str = ""
    created: float = 0.0
    compile_seconds: float = 0.0

    def check(self) -> None:
        """Every relocation names a known map and lands on a zeroed map load."""
        fds = {name: 0 for name in self.maps}
        for name, image in self.programs.items():
            try:
                patch_map_refs(image.insns, image.relocations, fds)
            except CacheFileError as exc:
                raise CacheFileError(f"program {name}: {exc}") from None

    def payload(self) -> dict:
        return {"format": FORMAT, "key": self.key, "inputs": self.inputs,
                "license": self.license, "kernVersion": self.kern_version,
                "progType": self.prog_type,
                "maps": {name: m.to_dict() for name, m in sorted(self.maps.items())},
                "programs": {name: p.to_dict() for name, p in sorted(self.programs.items())},
                "node": self.node, "created": self.created,
                "compileSeconds": self.compile_seconds}

    def summary(self) -> dict:
        """What `bpf cache list` shows of an entry."""
        toolchain = self.inputs.get("toolchain", {})
        return {"key": self.key, "node": self.node, "created": self.created,
                "compileSeconds": self.compile_seconds,
                "kernelRelease": toolchain.get("kernelRelease"), "bcc": toolchain.get("bcc"),
                "programs": {name: {"insns": len(p.insns) // INSN_SIZE, "tag": p.tag}
                             for name, p in sorted(self.programs.items())},
                "maps": sorted(self.maps)}


def encode_entry(entry: CacheEntry) -> bytes:
    """The file's bytes: the entry as JSON with a sha256 of its canonical form inside."""
    entry.check()
    payload = entry.payload()
    doc = dict(payload, digest=hashlib.sha256(_canonical(payload)).hexdigest())
    return json.dumps(doc, sort_keys=True, indent=1).encode() + b"\n"


def decode_entry(data: bytes, key: str) -> CacheEntry:
    """The entry of a file read back, or CacheFileError saying why it cannot be used."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CacheFileError(f"not JSON (truncated or corrupt?): {exc}") from None
    if not isinstance(doc, dict):
        raise CacheFileError("not a JSON object")
    digest = doc.pop("digest", None)
    if doc.get("format") != FORMAT:
        raise CacheFileError(f"format {doc.get('format')!r}, this agent reads {FORMAT!r}")
    if digest != hashlib.sha256(_canonical(doc)).hexdigest():
        raise CacheFileError("digest mismatch (the file was changed or cut short)")
    if doc.get("key") != key:
        raise CacheFileError(f"holds key {doc.get('key')!r}, not {key!r}")
    try:
        entry = CacheEntry(
            key=key, inputs=dict(doc["inputs"]), license=str(doc["license"]),
            kern_version=int(doc["kernVersion"]), prog_type=int(doc["progType"]),
            maps={str(n): MapDef.from_dict(m) for n, m in doc["maps"].items()},
            programs={str(n): ProgramImage.from_dict(p) for n, p in doc["programs"].items()},
            node=str(doc.get("node", "")), created=float(doc.get("created", 0.0)),
            compile_seconds=float(doc.get("compileSeconds", 0.0)))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CacheFileError(f"malformed entry: {type(exc).__name__}: {exc}") from None
    entry.check()
    return entry


def files_to_prune(files: Sequence[tuple[str, float]], keep: int) -> list[str]:
    """Of (name, last use time) pairs, the names beyond the `keep` most recently used."""
    ordered = sorted(files, key=lambda item: (-item[1], item[0]))
    return [name for name, _used in ordered[keep:]]


def origin_line(bpf: Mapping) -> str:
    """Where a datapath came from and how long it took, from the status's `bpf` section
    (the agent's log line and `cni-cilium status`)."""
    cache = bpf.get("cache") or {}
    if bpf.get("origin") == "cache":
        return (f"loaded from the compile cache in {bpf.get('loadSeconds')} s (no compile; "
                f"{cache.get('file')})")
    line = (f"compiled in {bpf.get('compileSeconds')} s, loaded in {bpf.get('loadSeconds')} s"
            f" (compile cache: {cache.get('result', 'off')}")
    return line + (f": {cache['reason']})" if cache.get("reason") else ")")
