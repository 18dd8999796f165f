"""The datapath compile cache's pure parts: its key, the map relocations of recorded bcc
instructions, the entry file format; and its directory handling (plain files)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct

import pytest

from cni_cilium.datapath import bpfcache, compilecache
from cni_cilium.datapath.bpfcache import (
    CacheEntry,
    CacheFileError,
    MapDef,
    ProgramImage,
    Uncacheable,
    decode_entry,
    derive_key,
    encode_entry,
    extract_map_refs,
    key_inputs,
    patch_map_refs,
    referenced_map_fds,
)

pytestmark = pytest.mark.unit

FIXTURE = os.path.join(os.path.dirname(__file__), os.pardir, "fixtures", "bpfcache",
                       "programs.json")
with open(FIXTURE, encoding="utf-8") as _fh:
    RECORDED = {name: (base64.b64decode(p["insns"]), {int(fd): n for fd, n in p["mapFds"].items()})
                for name, p in json.load(_fh)["programs"].items()}

TOOLCHAIN = {"bcc": "0.26.0", "libbcc": "libbcc.so.0.26.0 123", "kernelRelease": "6.1.0-50-amd64",
             "kernelVersion": "#1 SMP Debian 6.1.153-1", "machine": "x86_64",
             "headersBuild": "/usr/src/linux-headers-6.1.0-50-amd64 0011",
             "headersSource": "/usr/src/linux-headers-6.1.0-50-common 2233"}
CFLAGS = ['-DPIN_DIR="/sys/fs/bpf/cni-cilium/abc"', '-DPIN_ROOT="/sys/fs/bpf/cni-cilium"']
PROGRAMS = ("from_container", "to_container")


def insn(code: int, src: int = 0, dst: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("=BBhi", code, (src << 4) | dst, off, imm)


def load_map(fd: int, src: int = bpfcache.PSEUDO_MAP_FD) -> bytes:
    return insn(0x18, src=src, dst=1, imm=fd) + insn(0)


EXIT = insn(0x95)
MOV_R0_0 = insn(0xb7)


def imm_at(insns: bytes, index: int) -> int:
    return struct.unpack_from("=i", insns, index * 8 + 4)[0]


# ---------------------------------------------------------------- key
def test_the_key_is_stable_and_changes_with_every_input():
    base = key_inputs("int x;", CFLAGS, PROGRAMS, 3, TOOLCHAIN)
    key = derive_key(base)
    assert bpfcache.is_key(key)
    assert derive_key(key_inputs("int x;", list(CFLAGS), list(PROGRAMS), 3,
                                 dict(reversed(list(TOOLCHAIN.items()))))) == key
    variants = {
        "one source byte": key_inputs("int y;", CFLAGS, PROGRAMS, 3, TOOLCHAIN),
        "pin path": key_inputs("int x;", [CFLAGS[0].replace("abc", "abd"), CFLAGS[1]],
                               PROGRAMS, 3, TOOLCHAIN),
        "programs": key_inputs("int x;", CFLAGS, PROGRAMS[:1], 3, TOOLCHAIN),
        "program type": key_inputs("int x;", CFLAGS, PROGRAMS, 4, TOOLCHAIN),
    }
    for fact in TOOLCHAIN:
        variants[fact] = key_inputs("int x;", CFLAGS, PROGRAMS, 3,
                                    dict(TOOLCHAIN, **{fact: TOOLCHAIN[fact] + "+1"}))
    keys = {what: derive_key(inputs) for what, inputs in variants.items()}
    assert key not in keys.values()
    assert len(set(keys.values())) == len(keys)        # no two inputs collide either


def test_the_key_inputs_name_the_format_and_hash_the_unit():
    inputs = key_inputs("int x;", CFLAGS, PROGRAMS, 3, TOOLCHAIN)
    assert inputs["format"] == bpfcache.FORMAT
    assert inputs["unitSha256"] == hashlib.sha256(b"int x;").hexdigest()
    assert inputs["toolchain"]["kernelRelease"] == "6.1.0-50-amd64"


# ---------------------------------------------------------------- relocations
@pytest.mark.parametrize("program", sorted(RECORDED))
def test_recorded_map_loads_are_zeroed_and_patched_back(program):
    insns, fd_names = RECORDED[program]
    assert referenced_map_fds(insns) == set(fd_names)
    zeroed, relocations = extract_map_refs(insns, fd_names)
    assert len(zeroed) == len(insns) and relocations
    for index, name in relocations:
        code, regs = zeroed[index * 8], zeroed[index * 8 + 1]
        assert code == 0x18 and regs >> 4 == bpfcache.PSEUDO_MAP_FD
        assert imm_at(zeroed, index) == 0 and imm_at(insns, index) in fd_names
        assert fd_names[imm_at(insns, index)] == name
    assert referenced_map_fds(zeroed) == {0}
    # Only map immediates changed: everything else is byte-for-byte the compile.
    changed = {i for i in range(len(insns) // 8)
               if insns[i * 8:i * 8 + 8] != zeroed[i * 8:i * 8 + 8]}
    assert changed == {index for index, _ in relocations}
    back = patch_map_refs(zeroed, relocations, {name: fd for fd, name in fd_names.items()})
    assert back == insns
    other = {name: 100 + i for i, name in enumerate(sorted(set(fd_names.values())))}
    patched = patch_map_refs(zeroed, relocations, other)
    assert [imm_at(patched, i) for i, _ in relocations] == [other[n] for _, n in relocations]


def test_a_map_value_load_keeps_its_offset_slot():
    prog = load_map(7, bpfcache.PSEUDO_MAP_VALUE)[:12] + struct.pack("=i", 16) + MOV_R0_0 + EXIT
    zeroed, relocations = extract_map_refs(prog, {7: "cfg"})
    assert relocations == ((0, "cfg"),) and imm_at(zeroed, 1) == 16
    assert imm_at(patch_map_refs(zeroed, relocations, {"cfg": 42}), 0) == 42


def test_plain_64_bit_constants_are_not_relocated():
    prog = insn(0x18, imm=7) + insn(0, imm=1) + EXIT
    assert extract_map_refs(prog, {}) == (prog, ())


@pytest.mark.parametrize("prog,why", [
    (insn(0x85, src=1, imm=2) + EXIT + MOV_R0_0 + EXIT, "BPF-to-BPF call"),
    (insn(0x85, src=2, imm=77) + EXIT, "kernel function call"),
    (insn(0x18, src=4, imm=3) + insn(0) + EXIT, "function address"),
    (insn(0x18, src=5, imm=0) + insn(0) + EXIT, "map index"),
    (load_map(9) + EXIT, "fd 9, which is none of the module's maps"),
    (EXIT + insn(0x18, src=1, imm=3), "without its second slot"),
])
def test_what_the_cache_cannot_reproduce_is_refused(prog, why):
    with pytest.raises(Uncacheable, match=why):
        extract_map_refs(prog, {3: "m"})


@pytest.mark.parametrize("relocations,fds,why", [
    (((5, "m"),), {"m": 1}, "outside the program"),
    (((2, "m"),), {"m": 1}, "not a zeroed map load"),
    (((0, "x"),), {"m": 1}, "unknown map 'x'"),
])
def test_inconsistent_relocations_are_refused(relocations, fds, why):
    prog, _ = extract_map_refs(load_map(3) + MOV_R0_0 + EXIT, {3: "m"})
    with pytest.raises(CacheFileError, match=why):
        patch_map_refs(prog, relocations, fds)
    with pytest.raises(CacheFileError, match="not a zeroed map load"):
        patch_map_refs(load_map(3) + EXIT, ((0, "m"),), {"m": 1})   # fd never zeroed


# ---------------------------------------------------------------- file format
def make_entry(key: str | None = None) -> CacheEntry:
    inputs = key_inputs("int x;", CFLAGS, ("to_container",), 3, TOOLCHAIN)
    insns, fd_names = RECORDED["to_container"]
    zeroed, relocations = extract_map_refs(insns, fd_names)
    maps = {name: MapDef(name, 1, 16, 32, 1024, 0, f"/sys/fs/bpf/cni-cilium/abc/{name}")
            for name in fd_names.values()}
    return CacheEntry(key=key or derive_key(inputs), inputs=inputs, license="GPL",
                      kern_version=393664, prog_type=3, maps=maps,
                      programs={"to_container": ProgramImage(zeroed, relocations, "4eb6e5e3")},
                      node="node1", created=1.5, compile_seconds=2.25)


def test_an_entry_survives_its_file_format():
    entry = make_entry()
    data = encode_entry(entry)
    assert decode_entry(data, entry.key) == entry
    doc = json.loads(data)
    assert doc["format"] == bpfcache.FORMAT and len(doc["digest"]) == 64
    assert entry.summary()["programs"]["to_container"]["insns"] == \
        len(RECORDED["to_container"][0]) // 8


def _rewritten(data: bytes, change) -> bytes:
    doc = json.loads(data)
    change(doc)
    return json.dumps(doc).encode()


@pytest.mark.parametrize("damage,why", [
    (lambda d: d[: len(d) // 2], "not JSON"),
    (lambda d: b"", "not JSON"),
    (lambda d: b"[1, 2]", "not a JSON object"),
    (lambda d: d.replace(b'"license": "GPL"', b'"license": "BSD"'), "digest mismatch"),
    (lambda d: _rewritten(d, lambda doc: doc["programs"]["to_container"].update(
        insns=base64.b64encode(b"\0" * 8).decode())), "digest mismatch"),
    (lambda d: _rewritten(d, lambda doc: doc.pop("digest")), "digest mismatch"),
    (lambda d: _rewritten(d, lambda doc: doc.update(format="cni-cilium-bpf-cache/0")),
     "format"),
])
def test_damaged_files_are_refused_with_the_reason(damage, why):
    entry = make_entry()
    with pytest.raises(CacheFileError, match=why):
        decode_entry(damage(encode_entry(entry)), entry.key)


def test_a_file_under_another_key_or_with_bad_relocations_is_refused():
    entry = make_entry()
    with pytest.raises(CacheFileError, match="holds key"):
        decode_entry(encode_entry(entry), "0" * 64)
    broken = make_entry()
    image = broken.programs["to_container"]
    broken.programs["to_container"] = ProgramImage(image.insns, ((1, "ct4"),), image.tag)
    with pytest.raises(CacheFileError, match="program to_container: relocation at insn 1"):
        encode_entry(broken)


# ---------------------------------------------------------------- the directory
def test_writes_are_whole_files_and_damage_reads_as_a_reason(tmp_path):
    cache = compilecache.CompileCache(str(tmp_path / "bpf"))
    entry = make_entry()
    assert cache.read(entry.key) == (None, "absent")
    path = cache.write(entry)
    assert os.listdir(tmp_path / "bpf") == [os.path.basename(path)]   # no temporary left
    assert cache.read(entry.key) == (entry, "")
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) - 10)
    got, why = cache.read(entry.key)
    assert got is None and why.startswith("invalid: not JSON")
    rows = cache.entries()
    assert rows[0]["invalid"].startswith("invalid: not JSON")


def test_only_the_most_recently_used_entries_are_kept(tmp_path):
    cache = compilecache.CompileCache(str(tmp_path))
    keys = [f"{i:064x}" for i in range(compilecache.KEEP_ENTRIES)]
    for i, key in enumerate(keys):
        cache.write(make_entry(key=key))
        os.utime(cache.path_for(key), (1000 + i, 1000 + i))
    cache.read(keys[0])                         # used now: kept
    newer = [f"{i:064x}" for i in range(100, 103)]
    for key in newer:
        cache.write(make_entry(key=key))
    left = {name[:-5] for name in os.listdir(tmp_path)}
    assert left == {keys[0], *keys[4:], *newer}
    assert bpfcache.files_to_prune([("a", 1.0), ("b", 3.0), ("c", 2.0)], 2) == ["a"]


def test_the_environment_chooses_the_directory_or_turns_the_cache_off(monkeypatch):
    monkeypatch.setenv(compilecache.CACHE_ENV, "off")
    assert compilecache.cache_from_env() is None
    monkeypatch.setenv(compilecache.CACHE_ENV, "/tmp/elsewhere")
    assert compilecache.cache_from_env().directory == "/tmp/elsewhere"
    monkeypatch.delenv(compilecache.CACHE_ENV)
    assert compilecache.cache_from_env("/var/cache/x").directory == "/var/cache/x"


def test_this_nodes_toolchain_facts_name_kernel_bcc_and_headers():
    facts = compilecache.toolchain_facts()
    assert facts["kernelRelease"] == os.uname().release
    assert facts["kernelVersion"] == os.uname().version
    assert set(facts) == {"bcc", "libbcc", "kernelRelease", "kernelVersion", "machine",
                          "headersBuild", "headersSource"}
    assert all(isinstance(v, str) and v for v in facts.values())
