"""The compile cache on this kernel (root): one process compiles and stores the datapath, a
fresh process loads it from the cache without bcc, and the kernel cannot tell the two
apart: same tags, same translated instructions, same verifier work, and the same packets
treated the same way by `from_netdev` on a veth between two namespaces.

Each load runs in its own process (as an agent start does) against a private bpffs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

import cni_harness.tools
from cni_cilium import bpfabi
from cni_cilium.datapath import bpfcache, bpfsys, compilecache, loader

pytestmark = [pytest.mark.probe, pytest.mark.slow]

TOOLS = os.path.dirname(cni_harness.tools.__file__)
NODE_IP, CLIENT_IP = "198.18.0.1", "198.18.0.2"
SERVICE = bpfabi.Frontend(NODE_IP, 5000, "UDP")        # one local backend: port 8080
EMPTY = bpfabi.Frontend(NODE_IP, 5001, "UDP")          # no backend: dropped
COUNTERS = ("svc_new", "svc_established", "drop_no_backend")

# A fresh process: load the datapath (from the cache or by compiling), optionally attach
# from_netdev at a namespace's device ingress, and report what the kernel says.
LOAD = r"""
import hashlib, json, sys
from cni_cilium.datapath import bpfcache, bpfsys, compilecache, loader, tc
bpffs, cache_dir, netns, dev = sys.argv[1:5]
dp = loader.load(loader.find_bpf_dir(), pin_root=bpffs + "/cni-cilium", bpffs=bpffs,
                 cache=compilecache.CompileCache(cache_dir))
programs = {}
for name, fd in sorted(dp.prog_fds.items()):
    info = bpfsys.prog_info(fd)
    insns = dp.instructions(name)
    zeroed, _ = bpfcache.extract_map_refs(
        insns, {fd: "m" for fd in bpfcache.referenced_map_fds(insns)})
    programs[name] = {"id": info.prog_id, "tag": info.tag, "name": info.name,
                      "xlatedInsns": info.xlated_len // 8, "jitedBytes": info.jited_len,
                      "verifiedInsns": info.verified_insns, "maps": sorted(info.map_ids),
                      "xlatedSha256": hashlib.sha256(info.xlated).hexdigest(),
                      "insnsSha256": hashlib.sha256(zeroed).hexdigest()}
if netns != "-":
    from pyroute2 import NetNS
    with NetNS(netns) as ns:
        tc.attach(ns, ns.link_lookup(ifname=dev)[0], tc.INGRESS, dp.prog_fds["from_netdev"],
                  "from_netdev")
print(json.dumps({"bpf": dp.describe(), "programs": programs,
                  "bccImported": "bcc" in sys.modules}))
"""


def load_in_fresh_process(bpffs: str, cache_dir: str, netns: str = "-",
                          dev: str = "-") -> dict:
    res = subprocess.run([sys.executable, "-c", LOAD, bpffs, cache_dir, netns, dev],
                         capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def private_bpffs(parent):
    path = str(parent)
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "bpf", "bpf", path], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", path], check=True)


@pytest.fixture(scope="module")
def first_compile(tmp_path_factory):
    """bpffs, cache directory and the report of the process that compiled and stored."""
    base = tmp_path_factory.mktemp("bcache")
    cache_dir = str(base / "cache")
    with private_bpffs(base / "bpffs") as bpffs:
        report = load_in_fresh_process(bpffs, cache_dir)
        yield bpffs, cache_dir, report


def comparable(programs: dict) -> dict:
    """What must not differ between a compiled load and a cached one (ids and the jited
    image's addresses may)."""
    return {name: {k: v for k, v in p.items() if k not in ("id", "jitedBytes")}
            for name, p in programs.items()}


def test_a_fresh_process_loads_the_stored_compile_without_bcc(first_compile, record_property):
    bpffs, cache_dir, compiled = first_compile
    cached = load_in_fresh_process(bpffs, cache_dir)
    record_property("evidence", json.dumps({"compiled": compiled, "cached": cached}))
    assert compiled["bpf"]["origin"] == "compile" and compiled["bccImported"]
    assert compiled["bpf"]["cache"]["result"] == "stored"
    assert compiled["bpf"]["compileSeconds"] > 0
    assert cached["bpf"]["origin"] == "cache" and not cached["bccImported"]
    assert cached["bpf"]["cache"] == dict(compiled["bpf"]["cache"], result="hit")
    assert cached["bpf"]["compileSeconds"] == 0
    assert cached["bpf"]["pinDir"] == compiled["bpf"]["pinDir"]
    # The kernel's view: same tag (a hash of the instructions, map references zeroed),
    # same translated instructions (maps by id: the same pinned maps), same verifier work.
    assert comparable(cached["programs"]) == comparable(compiled["programs"])
    assert {p["name"] for p in cached["programs"].values()} == set(cached["programs"])


def pinned_map_shapes(bpffs: str, layout: str) -> dict:
    shapes = {}
    for name in bpfabi.MAP_CAPACITY:
        sub = "" if name in loader.ROOT_MAPS else layout
        fd = bpfsys.obj_get(os.path.join(bpffs, "cni-cilium", sub, name))
        info = bpfsys.map_info(fd)
        os.close(fd)
        shapes[name] = (info.name, info.map_type, info.key_size, info.value_size,
                        info.max_entries, info.flags)
    return shapes


def test_a_fresh_bpffs_gets_the_maps_created_from_the_entry(first_compile):
    bpffs, cache_dir, compiled = first_compile
    layout = os.path.basename(compiled["bpf"]["pinDir"])
    # A new bpffs instance mounted over the first one at the same path: a node that never
    # ran the agent (same pin paths, so the same key).
    with private_bpffs(bpffs):
        cached = load_in_fresh_process(bpffs, cache_dir)
        created = pinned_map_shapes(bpffs, layout)
    assert cached["bpf"]["origin"] == "cache"
    assert created == pinned_map_shapes(bpffs, layout)      # the ones bcc created
    # Same programs, but their map references point at the new instance's maps.
    assert {n: p["tag"] for n, p in cached["programs"].items()} == \
        {n: p["tag"] for n, p in compiled["programs"].items()}
    assert not set(cached["programs"]["from_netdev"]["maps"]) & \
        set(compiled["programs"]["from_netdev"]["maps"])


def test_a_cache_hit_keeps_the_pinned_conntrack(first_compile):
    bpffs, cache_dir, compiled = first_compile
    key = bpfabi.CtKey("10.0.0.1", "10.0.0.2", 1, 2, "UDP", bpfabi.CT_SERVICE).encode()
    ct_path = os.path.join(compiled["bpf"]["pinDir"], "ct4")
    with bpfsys.PinnedMap(ct_path) as ct:
        ct.update(key, bpfabi.CtEntry("10.0.0.3", 3, 0, 1, 1, 1, 1).encode())
    assert load_in_fresh_process(bpffs, cache_dir)["bpf"]["origin"] == "cache"
    with bpfsys.PinnedMap(ct_path) as ct:
        assert ct.lookup(key) is not None
        ct.delete(key)


def test_a_damaged_entry_is_compiled_again_and_replaced(first_compile, tmp_path):
    bpffs, source_cache, compiled = first_compile
    cache_dir = str(tmp_path / "cache")
    shutil.copytree(source_cache, cache_dir)
    path = compiled["bpf"]["cache"]["file"].replace(source_cache, cache_dir)
    with open(path, "r+b") as fh:
        fh.seek(os.path.getsize(path) // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(b"A" if byte != b"A" else b"B")
    again = load_in_fresh_process(bpffs, cache_dir)
    assert again["bpf"]["origin"] == "compile"
    assert again["bpf"]["cache"]["result"] == "stored"
    assert again["bpf"]["cache"]["reason"].startswith("invalid:")
    assert load_in_fresh_process(bpffs, cache_dir)["bpf"]["origin"] == "cache"


def test_a_program_the_verifier_refuses_fails_with_the_verifiers_words(first_compile,
                                                                       tmp_path):
    bpffs, source_cache, _compiled = first_compile
    cache = compilecache.CompileCache(str(tmp_path / "cache"))
    key, _inputs = loader.prepare_key(loader.find_bpf_dir(), cache,
                                      pin_root=os.path.join(bpffs, "cni-cilium"))
    entry, why = compilecache.CompileCache(source_cache).read(key)
    assert entry is not None, why
    # `exit` with r0 never written: every kernel's verifier refuses it.
    entry.programs["from_container"] = bpfcache.ProgramImage(
        bytes.fromhex("9500000000000000"), (), "")
    cache.write(entry)
    with pytest.raises(loader.LoadError) as refused:
        loader.load(loader.find_bpf_dir(), pin_root=os.path.join(bpffs, "cni-cilium"),
                    bpffs=bpffs, cache=cache)
    message = str(refused.value)
    assert "refused the datapath loaded from the compile cache" in message
    assert "program from_container" in message and "R0 !read_ok" in message


# ---------------------------------------------------------------- the same packets
def ns(name: str, *argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", name, *argv], capture_output=True,
                          text=True, timeout=60, check=False, **kwargs)


@pytest.fixture
def node_and_client():
    """Namespace `node` (vb0, NODE_IP, a peer server on 8080) and `client` (vb1, CLIENT_IP)
    joined by a veth pair; removed afterwards."""
    node, client = f"bc{os.getpid()}n", f"bc{os.getpid()}c"
    server = None
    try:
        for name in (node, client):
            subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(["ip", "-n", node, "link", "add", "vb0", "type", "veth", "peer", "name",
                        "vb1", "netns", client], check=True)
        for name, dev, addr in ((node, "vb0", NODE_IP), (client, "vb1", CLIENT_IP)):
            subprocess.run(["ip", "-n", name, "addr", "add", f"{addr}/30", "dev", dev],
                           check=True)
            subprocess.run(["ip", "-n", name, "link", "set", dev, "up"], check=True)
        server = subprocess.Popen(["ip", "netns", "exec", node, sys.executable,
                                   os.path.join(TOOLS, "peer_server.py"), "--name", "backend",
                                   "--port", "8080"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        yield node, client
    finally:
        if server is not None:
            server.kill()
            server.wait()
        for name in (node, client):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def program_services(pin_dir: str) -> None:
    with bpfsys.PinnedMap(os.path.join(pin_dir, "node_cfg")) as cfg:
        cfg.update(bpfabi.index_key(0),
                   bpfabi.NodeConfig(NODE_IP, "10.100.1.0/24", 61000, 65535, False).encode())
    with bpfsys.PinnedMap(os.path.join(pin_dir, "lb_frontends")) as fes:
        fes.update(SERVICE.encode(), bpfabi.FrontendValue(1, bpfabi.FE_EXTERNAL).encode())
        fes.update(EMPTY.encode(), bpfabi.FrontendValue(0, bpfabi.FE_EXTERNAL).encode())
    with bpfsys.PinnedMap(os.path.join(pin_dir, "lb_slots")) as slots:
        slots.update(bpfabi.slot_key(SERVICE, 1),
                     bpfabi.Backend(NODE_IP, 8080, local=True).encode())


def counters(pin_dir: str) -> dict:
    with bpfsys.PinnedMap(os.path.join(pin_dir, "stats")) as stats:
        return {name: stats.percpu_sum_u64(bpfabi.index_key(bpfabi.STAT_NAMES.index(name)))
                for name in COUNTERS}


def attached_program_id(node: str) -> int:
    shown = ns(node, "tc", "filter", "show", "dev", "vb0", "ingress").stdout
    match = re.search(r"\bid (\d+)", shown)
    assert match, shown
    return int(match.group(1))


def exchange(client: str, pin_dir: str) -> dict:
    """5 datagrams to the service, 3 to the frontend without backends; what came back and
    how the datapath's counters moved."""
    before = counters(pin_dir)
    probe = os.path.join(TOOLS, "probe.py")
    answered = json.loads(ns(client, sys.executable, probe, "udp", NODE_IP, str(SERVICE.port),
                             "--count", "5", "--timeout", "2").stdout)
    dropped = json.loads(ns(client, sys.executable, probe, "udp", NODE_IP, str(EMPTY.port),
                            "--count", "3", "--timeout", "0.5").stdout)
    after = counters(pin_dir)
    seen = {(a.get("name"), a.get("peer"), a.get("localPort")) if "error" not in a
            else ("error",) for a in answered}
    return {"answers": [list(answer) for answer in sorted(seen)],
            "answered": sum("error" not in a for a in answered),
            "droppedAnswered": sum("error" not in a for a in dropped),
            "counted": {name: after[name] - before[name] for name in COUNTERS}}


def test_the_cached_programs_treat_real_packets_as_the_compiled_ones(tmp_path,
                                                                     node_and_client,
                                                                     record_property):
    node, client = node_and_client
    cache_dir = str(tmp_path / "cache")
    with private_bpffs(tmp_path / "bpffs") as bpffs:
        runs = {}
        for origin in ("compile", "cache"):
            loaded = load_in_fresh_process(bpffs, cache_dir, node, "vb0")
            assert loaded["bpf"]["origin"] == origin
            pin_dir = loaded["bpf"]["pinDir"]
            program_services(pin_dir)
            attached = attached_program_id(node)
            runs[origin] = dict(exchange(client, pin_dir),
                                attachedIsTheLoadedProgram=attached ==
                                loaded["programs"]["from_netdev"]["id"],
                                tag=loaded["programs"]["from_netdev"]["tag"])
    record_property("evidence", json.dumps(runs, sort_keys=True))
    compiled = runs["compile"]
    assert compiled["attachedIsTheLoadedProgram"]
    assert runs["cache"]["attachedIsTheLoadedProgram"]
    assert compiled["answered"] == 5 and compiled["droppedAnswered"] == 0
    assert compiled["answers"] == [["backend", CLIENT_IP, 8080]]
    assert compiled["counted"] == {"svc_new": 5, "svc_established": 0, "drop_no_backend": 3}
    assert runs["cache"] == compiled
