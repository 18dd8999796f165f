"""The real programs pass the verifier and the pinned maps match the Python ABI (root)."""

from __future__ import annotations

import ctypes
import os
import subprocess

import pytest

from cni_cilium import bpfabi
from cni_cilium.datapath import loader
from cni_cilium.datapath.bpfsys import BPF_NOEXIST, BpfError, is_bpffs

pytestmark = [pytest.mark.probe, pytest.mark.slow]


@pytest.fixture(scope="module")
def bpffs(tmp_path_factory):
    """A private bpffs instance, unmounted afterwards."""
    path = str(tmp_path_factory.mktemp("bpffs"))
    subprocess.run(["mount", "-t", "bpf", "bpf", path], check=True)
    yield path
    subprocess.run(["umount", path], check=True)


@pytest.fixture(scope="module")
def loaded(bpffs):
    pin_root = os.path.join(bpffs, "cni-cilium")
    return loader.load(loader.find_bpf_dir(), pin_root=pin_root, bpffs=bpffs)


def test_every_program_is_accepted_by_the_verifier(loaded, bpffs):
    assert is_bpffs(bpffs)
    assert set(loaded.prog_fds) == {"from_container", "to_container", "from_netdev",
                                    "to_netdev", "from_host", "from_overlay"}
    assert all(fd > 0 for fd in loaded.prog_fds.values())
    assert sorted(os.listdir(loaded.pin_dir)) == sorted(
        n for n in bpfabi.MAP_CAPACITY if n not in loader.ROOT_MAPS)


@pytest.mark.parametrize("name,key,value", [
    ("lb_frontends", "lb_key", "lb_frontend"), ("lb_slots", "lb_slot_key", "lb_backend"),
    ("ct4", "ct_key", "ct_entry"), ("node_cfg", None, "node_config"),
    ("no_masq", "lpm_v4_key", None), ("tunnel_map", "lpm_v4_key", "tunnel_endpoint"),
    ("tunnel_cfg", None, "tunnel_config"), ("lb_maglev", "lb_maglev_key", "lb_maglev_chunk"),
    ("lb_conns", "lb_backend_key", "lb_conn_count"),
    ("lb_affinity", "lb_affinity_key", "lb_affinity"),
    ("lb_src_ranges", "lb_src_range_key", None),
    ("egress_policy", "egress_key", "egress_gw")])
def test_compiled_layouts_match_the_python_abi(loaded, name, key, value):
    table = loaded.bpf[name.encode()]
    if key:
        assert ctypes.sizeof(table.Key) == bpfabi.SIZES[key]
    if value:
        assert ctypes.sizeof(table.Leaf) == bpfabi.SIZES[value]
    with loaded.open_map(name) as pinned:
        assert pinned.max_entries == bpfabi.MAP_CAPACITY[name]


def test_pinned_maps_read_and_write_through_bpf_syscalls(loaded):
    fe = bpfabi.Frontend("10.96.0.10", 80, "TCP")
    with loaded.open_map("lb_frontends") as fes:
        fes.update(fe.encode(), bpfabi.FrontendValue(2, 0).encode())
        assert fes.lookup(fe.encode()) == bpfabi.FrontendValue(2, 0).encode()
        with pytest.raises(BpfError):
            fes.update(fe.encode(), bpfabi.FrontendValue(3, 0).encode(), BPF_NOEXIST)
        assert list(fes.keys()) == [fe.encode()]
        assert fes.delete(fe.encode()) and not fes.delete(fe.encode())
        assert fes.lookup(fe.encode()) is None
    with loaded.open_map("lb_slots") as slots:
        items = [(bpfabi.slot_key(fe, i),
                  bpfabi.Backend(f"10.100.{i // 250}.{i % 250}", 80).encode())
                 for i in range(1, 2001)]
        slots.update_batch(items)
        assert dict(slots.items()) == dict(items)
        assert slots.count() == 2000
    with loaded.open_map("stats") as stats:
        assert stats.percpu and stats.percpu_sum_u64(bpfabi.index_key(0)) == 0


def test_batched_reads_see_every_entry_once_in_any_chunk_size(loaded):
    """count() and items() read hash maps with BPF_MAP_LOOKUP_BATCH: chunks smaller than
    the map, an LRU map (conntrack) and an empty map all give exactly what was written."""
    entries = {bpfabi.CtKey(f"10.0.{i // 250}.{i % 250}", "10.96.0.1", 1000 + i, 80, "TCP",
                            bpfabi.CT_SERVICE).encode():
               bpfabi.CtEntry("10.100.1.5", 8080, 0, 1, 1, 1, 1).encode()
               for i in range(1500)}
    with loaded.open_map("ct4") as ct:
        assert ct.map_type == 9                         # BPF_MAP_TYPE_LRU_HASH
        before = ct.count()
        for key, value in entries.items():
            ct.update(key, value)
        try:
            chunks = ct._lookup_batches(size=97)
            assert chunks is not None, "this kernel has batch lookups (>= 5.6)"
            seen: dict[bytes, bytes] = {}
            sizes = []
            for count, keys, values in chunks:
                sizes.append(count)
                for i in range(count):
                    key = keys[i * ct.key_size:(i + 1) * ct.key_size]
                    assert key not in seen
                    seen[key] = values[i * ct.value_size:(i + 1) * ct.value_size]
            assert len(sizes) > 1 and max(sizes) <= 97
            assert {k: v for k, v in seen.items() if k in entries} == entries
            assert ct.count() == len(seen) == before + len(entries)
            assert dict(ct.items()) == seen
        finally:
            for key in entries:
                ct.delete(key)
    with loaded.open_map("lb_affinity") as empty:
        assert empty.count() == 0 and list(empty.items()) == []


def test_a_second_load_reuses_the_pinned_maps(loaded, bpffs):
    with loaded.open_map("ct4") as ct:
        key = bpfabi.CtKey("1.1.1.1", "2.2.2.2", 1, 2, "UDP", bpfabi.CT_SERVICE).encode()
        ct.update(key, bpfabi.CtEntry("3.3.3.3", 3, 0, 1, 1, 1, 1).encode())
    again = loader.load(loader.find_bpf_dir(), pin_root=os.path.dirname(loaded.pin_dir),
                        bpffs=bpffs)
    assert again.pin_dir == loaded.pin_dir
    with again.open_map("ct4") as ct:
        assert ct.lookup(key) is not None


def test_atomics_are_plain_adds_that_kernels_before_5_12_accept(loaded):
    # 5.10's verifier refuses any atomic but a result-less add ("BPF_STX uses reserved
    # fields"); clang turns an atomic add of a constant 0 into an atomic OR. Found by the
    # qemu matrix: the agents never started in 5.10 guests.
    import struct

    bpf_stx, bpf_atomic = 0x03, 0xc0
    for name in loaded.prog_fds:
        insns = loaded.instructions(name)
        for index in range(len(insns) // 8):
            code, _regs, _off, imm = struct.unpack_from("<BBhi", insns, index * 8)
            if code & 0x07 == bpf_stx and code & 0xe0 == bpf_atomic:
                assert imm == 0, f"{name} insn {index}: atomic op {imm:#x} needs kernel 5.12+"
