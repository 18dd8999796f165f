"""Pinned BPF maps and programs through the bpf(2) system call (edge: ctypes).

The agent and the CLI read and write the pinned maps with bytes keyed exactly as
`bpfabi` encodes them, independent of the bcc object that created them (so the CLI works
while the agent is down, and any bcc release will do). The compile cache creates maps,
pins them and loads programs through the same calls (`create_map`, `pin`, `load_program`),
without bcc.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import resource
import struct
from dataclasses import dataclass
from typing import Iterator

_SYSCALL_NR = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361, "s390x": 351}
BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, BPF_MAP_DELETE_ELEM, BPF_MAP_GET_NEXT_KEY = 1, 2, 3, 4
BPF_PROG_LOAD, BPF_OBJ_PIN, BPF_OBJ_GET = 5, 6, 7
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_PROG_TEST_RUN = 10
BPF_MAP_LOOKUP_BATCH, BPF_MAP_UPDATE_BATCH = 24, 26
BPF_ANY, BPF_NOEXIST = 0, 1
_ATTR_SIZE = 128
BPF_FS_MAGIC = 0xCAFE4A11
ENOTSUPP = 524  # the kernel's internal "operation not supported"
LOOKUP_BATCH_SIZE = 4096  # entries per BPF_MAP_LOOKUP_BATCH call
BPF_PROG_TYPE_SCHED_CLS = 3
OBJ_NAME_LEN = 16   # map and program names, NUL included
# The verifier's log when a program is refused: the largest buffer every kernel accepts
# (5.1 and older cap it at UINT_MAX >> 8); its end holds the verdict.
VERIFIER_LOG_SIZE = (1 << 24) - 1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfError(OSError):
    """A bpf(2) call failed."""


def _bpf(cmd: int, attr: bytes | ctypes.Array) -> int:
    """bpf(2); `attr` as bytes, or a buffer of _ATTR_SIZE the kernel may write back to."""
    nr = _SYSCALL_NR.get(platform.machine())
    if nr is None:
        raise BpfError(errno.ENOSYS, f"bpf(2) number unknown for {platform.machine()}")
    buf = attr if isinstance(attr, ctypes.Array) else ctypes.create_string_buffer(
        attr.ljust(_ATTR_SIZE, b"\0"), _ATTR_SIZE)
    ret = _libc.syscall(nr, cmd, buf, _ATTR_SIZE)
    if ret < 0:
        err = ctypes.get_errno()
        raise BpfError(err, os.strerror(err))
    return ret


def _addr(buf: ctypes.Array) -> int:
    return ctypes.addressof(buf)


def possible_cpus() -> int:
    """Number of possible CPUs (the per-CPU value count of percpu maps)."""
    with open("/sys/devices/system/cpu/possible", encoding="ascii") as fh:
        text = fh.read().strip()
    total = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        total += int(hi or lo) - int(lo) + 1
    return total


def is_bpffs(path: str) -> bool:
    """Whether `path` is the root of a mounted bpffs instance."""
    class _Statfs(ctypes.Structure):
        _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 120)]

    st = _Statfs()
    if _libc.statfs(os.fsencode(path), ctypes.byref(st)) != 0:
        return False
    return (st.f_type & 0xFFFFFFFF) == BPF_FS_MAGIC


def _path_buffer(path: str) -> ctypes.Array:
    raw = os.fsencode(path) + b"\0"
    return ctypes.create_string_buffer(raw, len(raw))


def obj_get(path: str) -> int:
    """A new fd of the map or program pinned at `path`."""
    buf = _path_buffer(path)
    return _bpf(BPF_OBJ_GET, struct.pack("=QII", _addr(buf), 0, 0))


def pin(fd: int, path: str) -> None:
    """Pin a map or program at `path` (EEXIST when something is pinned there)."""
    buf = _path_buffer(path)
    _bpf(BPF_OBJ_PIN, struct.pack("=QII", _addr(buf), fd, 0))


def _name_bytes(name: str) -> bytes:
    # The kernel keeps OBJ_NAME_LEN - 1 characters (bcc truncates the same way).
    return name.encode()[:OBJ_NAME_LEN - 1]


def _obj_info(fd: int, size: int) -> ctypes.Array:
    info = ctypes.create_string_buffer(size)
    _bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("=IIQ", fd, size, _addr(info)))
    return info


@dataclass(frozen=True)
class MapInfo:
    """What the kernel says about a map (struct bpf_map_info)."""

    map_type: int
    map_id: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    name: str
    map_extra: int


_MAP_INFO = struct.Struct("=IIIIII16sIIQQIIIIQ")


def map_info(fd: int) -> MapInfo:
    """Type, id, sizes, flags and name of the map behind `fd`."""
    raw = _obj_info(fd, _MAP_INFO.size).raw
    (map_type, map_id, key_size, value_size, max_entries, flags, name, *_rest,
     map_extra) = _MAP_INFO.unpack(raw)
    return MapInfo(map_type, map_id, key_size, value_size, max_entries, flags,
                   name.rstrip(b"\0").decode("ascii", "replace"), map_extra)


def create_map(map_type: int, key_size: int, value_size: int, max_entries: int, flags: int,
               name: str) -> int:
    """A new map's fd (unpinned)."""
    attr = struct.pack("=IIIIIII16sI", map_type, key_size, value_size, max_entries, flags,
                       0, 0, _name_bytes(name), 0)
    return _bpf(BPF_MAP_CREATE, attr)


class ProgramRefused(BpfError):
    """BPF_PROG_LOAD failed; `verifier_log` holds the verifier's log (may be empty)."""

    def __init__(self, err: int, message: str, verifier_log: str):
        super().__init__(err, message)
        self.verifier_log = verifier_log


def load_program(prog_type: int, insns: bytes, license_: str, kern_version: int, name: str
                 ) -> int:
    """Load a program (the verifier runs) and return its fd. A refusal is loaded again with
    the verifier's log on, so the exception carries the verifier's words."""
    if len(insns) % 8:
        raise ValueError(f"{name}: {len(insns)} bytes of instructions, not a multiple of 8")
    ibuf = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license_.encode() + b"\0")

    def attempt(log_level: int, log_buf: ctypes.Array | None) -> int:
        attr = struct.pack("=IIQQIIQII16sII", prog_type, len(insns) // 8, _addr(ibuf),
                           _addr(lic), log_level, len(log_buf) if log_buf is not None else 0,
                           _addr(log_buf) if log_buf is not None else 0, kern_version, 0,
                           _name_bytes(name), 0, 0)
        return _bpf(BPF_PROG_LOAD, attr)

    try:
        return attempt(0, None)
    except BpfError as exc:
        first = exc
    log_buf = ctypes.create_string_buffer(VERIFIER_LOG_SIZE)
    try:
        # Refused for a passing reason (e.g. memory) the first time: take the fd.
        return attempt(1, log_buf)
    except BpfError:
        pass
    text = log_buf.value.decode("utf-8", "replace")
    raise ProgramRefused(first.errno, f"program {name}: {first.strerror}", text)


@dataclass(frozen=True)
class ProgInfo:
    """What the kernel says about a loaded program (struct bpf_prog_info)."""

    prog_type: int
    prog_id: int
    tag: str                  # hex, as `bpftool prog` shows it
    xlated_len: int           # bytes of the instructions the kernel kept (8 per insn)
    jited_len: int
    name: str
    map_ids: tuple
    btf_id: int
    verified_insns: int       # 0 before kernel 5.16
    xlated: bytes             # the instructions as the kernel dumps them (maps by id)


_PROG_INFO_SIZE = 232


def prog_info(fd: int) -> ProgInfo:
    """Tag, sizes, name, maps and the translated instructions of the program behind `fd`."""
    first = _obj_info(fd, _PROG_INFO_SIZE).raw
    xlated_len, nr_maps = struct.unpack_from("=I", first, 20)[0], struct.unpack_from(
        "=I", first, 52)[0]
    xbuf = ctypes.create_string_buffer(max(xlated_len, 1))
    mbuf = ctypes.create_string_buffer(max(nr_maps, 1) * 4)
    request = bytearray(_PROG_INFO_SIZE)
    struct.pack_into("=I", request, 20, xlated_len)
    struct.pack_into("=Q", request, 32, _addr(xbuf))
    struct.pack_into("=I", request, 52, nr_maps)
    struct.pack_into("=Q", request, 56, _addr(mbuf))
    info = ctypes.create_string_buffer(bytes(request), _PROG_INFO_SIZE)
    _bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("=IIQ", fd, _PROG_INFO_SIZE, _addr(info)))
    raw = info.raw
    prog_type, prog_id = struct.unpack_from("=II", raw, 0)
    tag = raw[8:16].hex()
    jited_len, xlated_len = struct.unpack_from("=II", raw, 16)
    name = raw[64:80].rstrip(b"\0").decode("ascii", "replace")
    btf_id = struct.unpack_from("=I", raw, 128)[0]
    verified = struct.unpack_from("=I", raw, 216)[0]
    map_ids = struct.unpack_from(f"={nr_maps}I", mbuf.raw, 0) if nr_maps else ()
    return ProgInfo(prog_type, prog_id, tag, xlated_len, jited_len, name, tuple(map_ids),
                    btf_id, verified, xbuf.raw[:xlated_len])


@dataclass(frozen=True)
class ProgRunStats:
    """A loaded program's id and what it ran: the kernel counts runs and their time only
    while kernel.bpf_stats_enabled is 1 (5.1+), so both stay 0 otherwise."""

    prog_id: int
    run_time_ns: int
    run_cnt: int


def prog_run_stats(fd: int) -> ProgRunStats:
    """The run counters of the program behind `fd` (no instruction dump: cheap enough for
    every status)."""
    raw = _obj_info(fd, _PROG_INFO_SIZE).raw
    run_time_ns, run_cnt = struct.unpack_from("=QQ", raw, 192)
    return ProgRunStats(struct.unpack_from("=I", raw, 4)[0], run_time_ns, run_cnt)


def raise_memlock_limit() -> None:
    """Kernels before 5.11 charge maps and programs to RLIMIT_MEMLOCK (bcc raises it the
    same way); later ones ignore it."""
    # Not allowed (not root): loading then says why if the limit is too small.
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_MEMLOCK,
                           (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


class PinnedMap:
    """A map opened from its bpffs pin; keys and values are raw bytes."""

    def __init__(self, path: str):
        self.path = path
        self.fd = obj_get(path)
        info = self._fdinfo()
        self.map_type = info.get("map_type", 0)
        self.key_size = info["key_size"]
        self.value_size = info["value_size"]
        self.max_entries = info["max_entries"]
        self.percpu = self.map_type in (5, 6, 10)  # percpu hash, array, lru hash
        self._value_len = (((self.value_size + 7) // 8) * 8 * possible_cpus()
                           if self.percpu else self.value_size)

    def _fdinfo(self) -> dict[str, int]:
        out: dict[str, int] = {}
        with open(f"/proc/self/fdinfo/{self.fd}", encoding="ascii") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                value = value.strip()
                if value.isdigit():
                    out[key.strip()] = int(value)
        return out

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> PinnedMap:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _elem_attr(self, key: ctypes.Array, value_or_next: ctypes.Array | None,
                   flags: int = 0) -> bytes:
        vaddr = _addr(value_or_next) if value_or_next is not None else 0
        return struct.pack("=IIQQQ", self.fd, 0, _addr(key), vaddr, flags)

    def _key_buf(self, key: bytes) -> ctypes.Array:
        if len(key) != self.key_size:
            raise ValueError(f"{self.path}: key of {len(key)} bytes, map wants {self.key_size}")
        return ctypes.create_string_buffer(key, self.key_size)

    def lookup(self, key: bytes) -> bytes | None:
        """The value (all CPUs' values concatenated for percpu maps), or None."""
        kbuf = self._key_buf(key)
        vbuf = ctypes.create_string_buffer(self._value_len)
        try:
            _bpf(BPF_MAP_LOOKUP_ELEM, self._elem_attr(kbuf, vbuf))
        except BpfError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        return vbuf.raw

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        if len(value) != self.value_size or self.percpu:
            raise ValueError(f"{self.path}: value of {len(value)} bytes, map wants "
                             f"{self.value_size}")
        kbuf = self._key_buf(key)
        vbuf = ctypes.create_string_buffer(value, self.value_size)
        _bpf(BPF_MAP_UPDATE_ELEM, self._elem_attr(kbuf, vbuf, flags))

    def update_batch(self, items: list[tuple[bytes, bytes]]) -> None:
        """Write many entries in one call (kernel >= 5.6); falls back to single updates."""
        if not items:
            return
        keys = b"".join(k for k, _ in items)
        values = b"".join(v for _, v in items)
        if len(keys) != self.key_size * len(items) or len(values) != self.value_size * len(items):
            raise ValueError(f"{self.path}: batch entries of the wrong size")
        kbuf = ctypes.create_string_buffer(keys, len(keys))
        vbuf = ctypes.create_string_buffer(values, len(values))
        attr = struct.pack("=QQQQIIQQ", 0, 0, _addr(kbuf), _addr(vbuf), len(items), self.fd,
                           0, 0)
        try:
            _bpf(BPF_MAP_UPDATE_BATCH, attr)
        except BpfError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, ENOTSUPP):
                raise
            for key, value in items:
                self.update(key, value)

    def delete(self, key: bytes) -> bool:
        """Remove an entry; False when it was not there."""
        kbuf = self._key_buf(key)  # keep the buffer alive across the call
        try:
            _bpf(BPF_MAP_DELETE_ELEM, self._elem_attr(kbuf, None))
        except BpfError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    def keys(self) -> Iterator[bytes]:
        """Every key (a snapshot walk; entries changing meanwhile may be skipped)."""
        nbuf = ctypes.create_string_buffer(self.key_size)
        kbuf: ctypes.Array | None = None
        while True:
            attr = struct.pack("=IIQQQ", self.fd, 0, _addr(kbuf) if kbuf is not None else 0,
                               _addr(nbuf), 0)
            try:
                _bpf(BPF_MAP_GET_NEXT_KEY, attr)
            except BpfError as exc:
                if exc.errno == errno.ENOENT:
                    return
                raise
            yield nbuf.raw
            kbuf = ctypes.create_string_buffer(nbuf.raw, self.key_size)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value): read in batches where the kernel can (>= 5.6), else one
        key at a time."""
        chunks = self._lookup_batches()
        if chunks is None:
            for key in self.keys():
                value = self.lookup(key)
                if value is not None:
                    yield key, value
            return
        for count, keys, values in chunks:
            for i in range(count):
                yield (keys[i * self.key_size:(i + 1) * self.key_size],
                       values[i * self._value_len:(i + 1) * self._value_len])

    def count(self) -> int:
        """Number of entries (arrays: their size). In batches where the kernel can: a
        walk of one syscall per key cost the agent ~1 s of CPU per 100,000 conntrack
        entries, and its status counts them every few seconds."""
        if self.map_type in (2, 6):  # array, percpu array
            return self.max_entries
        chunks = self._lookup_batches()
        if chunks is None:
            return sum(1 for _ in self.keys())
        return sum(count for count, _keys, _values in chunks)

    def _lookup_batches(self, size: int = LOOKUP_BATCH_SIZE
                        ) -> Iterator[tuple[int, bytes, bytes]] | None:
        """(count, keys, values) chunks of BPF_MAP_LOOKUP_BATCH, or None when this map
        or kernel has no batch lookup (decided by a first call, so nothing is lost)."""
        keys = ctypes.create_string_buffer(self.key_size * size)
        values = ctypes.create_string_buffer(self._value_len * size)
        # The hash maps' batch token is a bucket index (u32); other maps use a key.
        tokens = [ctypes.create_string_buffer(max(self.key_size, 8)) for _ in range(2)]

        def call(first: bool) -> tuple[int, bool]:
            attr = ctypes.create_string_buffer(struct.pack(
                "=QQQQIIQQ", 0 if first else _addr(tokens[0]), _addr(tokens[1]),
                _addr(keys), _addr(values), size, self.fd, 0, 0).ljust(_ATTR_SIZE, b"\0"),
                _ATTR_SIZE)
            done = False
            try:
                _bpf(BPF_MAP_LOOKUP_BATCH, attr)
            except BpfError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                done = True          # the last chunk (maybe empty)
            return struct.unpack_from("=I", attr.raw, 32)[0], done

        try:
            first = call(True)
        except BpfError as exc:
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, ENOTSUPP, errno.ENOSPC):
                return None
            raise

        def chunks() -> Iterator[tuple[int, bytes, bytes]]:
            count, done = first
            while True:
                yield count, keys.raw[:count * self.key_size], values.raw[
                    :count * self._value_len]
                if done:
                    return
                ctypes.memmove(tokens[0], tokens[1], len(tokens[1]))
                count, done = call(False)
        return chunks()

    def percpu_sum_u64(self, key: bytes) -> int:
        """Sum over CPUs of a u64 per-CPU value."""
        raw = self.lookup(key)
        if raw is None:
            return 0
        return sum(struct.unpack_from("=Q", raw, off)[0] for off in range(0, len(raw), 8))


def prog_test_run(prog_fd: int, packet: bytes, out_size: int = 2048) -> tuple[int, bytes]:
    """Run a loaded program once on `packet` (BPF_PROG_TEST_RUN; for tc programs an
    Ethernet frame): (its return value, the packet as it left). Nothing is sent: a
    redirect is only a return value here."""
    retval, out, _ns = prog_test_run_timed(prog_fd, packet, out_size)
    return retval, out


def prog_test_run_timed(prog_fd: int, packet: bytes,
                        out_size: int = 2048) -> tuple[int, bytes, int]:
    """As `prog_test_run`, with the kernel's measure of the run's duration in ns (one run:
    repeats would run on the packet the previous run rewrote)."""
    run = prog_test_run_skb(prog_fd, packet, out_size=out_size)
    return run.retval, run.packet, run.duration_ns


@dataclass(frozen=True)
class SkbTestRun:
    """One BPF_PROG_TEST_RUN of a tc program: its verdict, the packet as it left, the
    kernel's measure of the run in ns and the skb's mark afterwards."""

    retval: int
    packet: bytes
    duration_ns: int
    mark: int


# struct __sk_buff up to and including `mark` (len, pkt_type, mark): the fields a test run
# may set before the first one it refuses must be zero. The kernel writes the whole
# struct back (ENOSPC into less room), so the output has room for any kernel's.
_SKB_CTX = struct.Struct("=III")
_SKB_CTX_OUT_SIZE = 512


def prog_test_run_skb(prog_fd: int, packet: bytes, mark: int = 0,
                      out_size: int = 2048) -> SkbTestRun:
    """Run a tc program once on `packet` with skb->mark = `mark` (BPF_PROG_TEST_RUN with a
    context, kernel >= 5.10), reading back what the program left in the mark."""
    data_in = ctypes.create_string_buffer(packet, len(packet))
    data_out = ctypes.create_string_buffer(out_size)
    ctx_in = ctypes.create_string_buffer(_SKB_CTX.pack(0, 0, mark), _SKB_CTX.size)
    ctx_out = ctypes.create_string_buffer(_SKB_CTX_OUT_SIZE)
    attr = ctypes.create_string_buffer(struct.pack(
        "=IIIIQQIIIIQQII", prog_fd, 0, len(packet), out_size, _addr(data_in),
        _addr(data_out), 1, 0, _SKB_CTX.size, _SKB_CTX_OUT_SIZE, _addr(ctx_in), _addr(ctx_out),
        0, 0).ljust(_ATTR_SIZE, b"\0"), _ATTR_SIZE)
    _bpf(BPF_PROG_TEST_RUN, attr)
    _fd, retval, _size_in, size_out = struct.unpack_from("=IIII", attr.raw)
    duration = struct.unpack_from("=I", attr.raw, 36)[0]    # after the buffers and `repeat`
    return SkbTestRun(retval, data_out.raw[:size_out], duration,
                      _SKB_CTX.unpack_from(ctx_out.raw)[2])
