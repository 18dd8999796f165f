"""The ring buffer reader (datapath/ringbuf.py) against a real pinned BPF ring buffer: every
record a program writes is read once, in order, across the ring's wrap (root)."""

from __future__ import annotations

import ctypes
import os
import struct
import subprocess

import pytest

from cni_cilium.datapath import bpfsys
from cni_cilium.datapath.ringbuf import RingBuffer, RingBufferError

pytestmark = [pytest.mark.probe, pytest.mark.slow]

BPF_PROG_TEST_RUN = 10
PROGRAM = r"""
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include "lib/maps.h"
BPF_RINGBUF_PINNED(ring, 4096, PIN_DIR "/ring");
BPF_TABLE("array", u32, u64, counter, 1);

int write_record(struct __sk_buff *skb)
{
	u32 zero = 0;
	u64 *n = counter.lookup(&zero);
	u64 *rec;

	if (!n)
		return TC_ACT_OK;
	rec = ring.ringbuf_reserve(24);
	if (!rec)
		return TC_ACT_OK;
	*n += 1;
	rec[0] = *n;
	rec[1] = skb->len;
	rec[2] = 0xc0ffee;
	ring.ringbuf_submit(rec, BPF_RB_NO_WAKEUP);
	return TC_ACT_OK;
}
"""


@pytest.fixture
def bpffs(tmp_path):
    path = str(tmp_path / "bpffs")
    os.makedirs(path)
    subprocess.run(["mount", "-t", "bpf", "bpf", path], check=True)
    yield path
    subprocess.run(["umount", path], check=True)


def run_once(prog_fd: int) -> None:
    packet = ctypes.create_string_buffer(64)
    bpfsys._bpf(BPF_PROG_TEST_RUN, struct.pack("=IIIIQQII", prog_fd, 0, 64, 0,
                                               ctypes.addressof(packet), 0, 1, 0))


def test_records_are_read_once_in_order_across_the_wrap(bpffs):
    from bcc import BPF

    from cni_cilium.datapath.loader import find_bpf_dir

    bpf = BPF(text=PROGRAM.encode(), cflags=[f"-I{find_bpf_dir()}", f'-DPIN_DIR="{bpffs}"',
                                             f'-DPIN_ROOT="{bpffs}"'])
    try:
        prog = bpf.load_func(b"write_record", BPF.SCHED_CLS)
        seen = []
        with RingBuffer(os.path.join(bpffs, "ring")) as ring:
            for _ in range(6):                       # 6 x 60 records of 32 bytes: wraps 4 KiB
                for _ in range(60):
                    run_once(prog.fd)
                seen += [struct.unpack("=QQQ", r) for r in ring.drain()]
                assert ring.pending() == 0
        assert [n for n, _, _ in seen] == list(range(1, 361))
        assert {(length, tag) for _, length, tag in seen} == {(64, 0xc0ffee)}
    finally:
        bpf.cleanup()


def test_a_map_that_is_not_a_ring_buffer_is_refused(bpffs):
    from cni_cilium.datapath.loader import find_bpf_dir, load

    loaded = load(find_bpf_dir(), pin_root=os.path.join(bpffs, "cni-cilium"), bpffs=bpffs)
    with pytest.raises(RingBufferError, match="is not a ring buffer"):
        RingBuffer(os.path.join(loaded.pin_dir, "stats"))
    with RingBuffer(os.path.join(loaded.pin_dir, "flow_events")) as ring:
        assert ring.size == 262144 and ring.pending() == 0
