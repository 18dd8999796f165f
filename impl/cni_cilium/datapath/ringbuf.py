"""Reading a BPF ring buffer map from its bpffs pin (edge: mmap of the map's fd).

The kernel lays the map out as one writable page holding the consumer position, then,
read-only, a page holding the producer position and the data area mapped twice in a row
(so a record that wraps reads contiguously). Each record starts with an 8-byte header: its
length with a busy and a discard bit, and a page offset. Records are 8-byte aligned.
Independent of bcc, so the reader works whatever loaded the programs.
"""

from __future__ import annotations

import mmap
import struct
from typing import Iterator

from .bpfsys import PinnedMap

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HEADER = 8
BPF_MAP_TYPE_RINGBUF = 27
_U64 = struct.Struct("=Q")
_U32 = struct.Struct("=I")


class RingBufferError(OSError):
    """The pinned map is not a ring buffer, or cannot be mapped."""


class RingBuffer:
    """Consumer side of a pinned ring buffer. Not thread-safe: one reader."""

    def __init__(self, path: str):
        self._map = PinnedMap(path)
        if self._map.map_type != BPF_MAP_TYPE_RINGBUF:
            self._map.close()
            raise RingBufferError(f"{path}: map type {self._map.map_type} is not a ring buffer")
        self.size = self._map.max_entries
        self._mask = self.size - 1
        page = mmap.PAGESIZE
        try:
            self._consumer = mmap.mmap(self._map.fd, page, mmap.MAP_SHARED,
                                       mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
            self._producer = mmap.mmap(self._map.fd, page + 2 * self.size, mmap.MAP_SHARED,
                                       mmap.PROT_READ, offset=page)
        except OSError as exc:
            self._map.close()
            raise RingBufferError(f"{path}: cannot map the ring buffer: {exc}") from exc
        self._data = page      # the data area's offset in the producer mapping

    def pending(self) -> int:
        """Bytes written by the programs and not yet consumed."""
        return (_U64.unpack_from(self._producer, 0)[0]
                - _U64.unpack_from(self._consumer, 0)[0])

    def drain(self, limit: int = 1 << 20) -> Iterator[bytes]:
        """Every complete record (at most `limit`), consumed as it is yielded."""
        cons = _U64.unpack_from(self._consumer, 0)[0]
        prod = _U64.unpack_from(self._producer, 0)[0]
        taken = 0
        while cons < prod and taken < limit:
            at = self._data + (cons & self._mask)
            header = _U32.unpack_from(self._producer, at)[0]
            if header & BUSY_BIT:
                break                  # still being written: next time
            length = header & ~(BUSY_BIT | DISCARD_BIT)
            record = None if header & DISCARD_BIT else bytes(
                self._producer[at + HEADER:at + HEADER + length])
            cons += (length + HEADER + 7) & ~7
            _U64.pack_into(self._consumer, 0, cons)
            if record is not None:
                taken += 1
                yield record

    def close(self) -> None:
        for area in (getattr(self, "_consumer", None), getattr(self, "_producer", None)):
            if area is not None:
                area.close()
        self._map.close()

    def __enter__(self) -> RingBuffer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
