"""Maglev consistent hashing (Eisenbud et al., NSDI 2016): lookup tables and the flow hash
(pure).

Every node builds the same table for the same backends: backends are ordered by a stable
name (`addr:port`), each one's permutation of the M table positions comes from a keyed
hash of that name with a seed fixed here (offset = h1 % M, skip = h2 % (M - 1) + 1), and
the table is filled by taking turns (a backend of weight w takes w turns per round) until
every position has a backend. So each backend gets M/N entries give or take its weight,
and removing one of N backends moves its own entries plus a small share of the others'.

The datapath (`bpf/lib/maglev.h`) indexes the table with `flow_hash(...) % M`; `flow_hash`
here is the same function, so tests can predict which backend a flow gets.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from typing import Sequence

from .bpfabi import (
    LB_MAGLEV_CHUNK,
    PROTO_NUMBERS,
    Backend,
    Frontend,
    ip_bytes,
    maglev_chunk,
    maglev_key,
    port_bytes,
)

# Cilium's allowed sizes: primes, each about twice the one before.
TABLE_SIZES = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)
DEFAULT_TABLE_SIZE = 16381
# The permutation seed: the same on every node, so every node builds the same table.
PERMUTATION_SEED = b"cni-cilium maglev permutation v1"
# The datapath's flow hash seed (MAGLEV_HASH_SEED in bpf/lib/maglev.h).
FLOW_HASH_SEED = 0x6D61676C
_JHASH_INITVAL = 0xDEADBEEF
_MASK = 0xFFFFFFFF


class TableSizeError(ValueError):
    """A table size that is not one of TABLE_SIZES."""


def check_table_size(size: int) -> int:
    """`size` when it is an allowed table size; raises TableSizeError naming the choices."""
    if size not in TABLE_SIZES:
        raise TableSizeError(f"maglev table size {size!r}: must be one of the primes "
                             f"{', '.join(str(s) for s in TABLE_SIZES)}")
    return size


def backend_name(backend: Backend) -> str:
    """The stable name a backend is ordered and hashed by."""
    return f"{backend.addr}:{backend.port}"


def permutation(name: str, size: int) -> tuple[int, int]:
    """(offset, skip) of a backend's walk over the table positions."""
    digest = hashlib.blake2b(name.encode(), key=PERMUTATION_SEED, digest_size=16).digest()
    h1, h2 = struct.unpack("<QQ", digest)
    return h1 % size, h2 % (size - 1) + 1


@functools.lru_cache(maxsize=256)
def build_table(names: tuple[str, ...], size: int = DEFAULT_TABLE_SIZE,
                weights: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """The lookup table: for each of the `size` positions, the index in `names` of its
    backend. `names` must be sorted (see `table_for`); `weights` are positive integers
    (default 1 each). Cached: the agent recomputes its desired state on every change."""
    check_table_size(size)
    if not names:
        return ()
    if weights is None:
        weights = (1,) * len(names)
    if len(weights) != len(names) or any(w < 1 for w in weights):
        raise ValueError(f"weights {weights!r}: one positive integer per backend")
    walks = [permutation(name, size) for name in names]
    position = [offset for offset, _skip in walks]   # each backend's next candidate
    entry = [-1] * size
    filled = 0
    while True:
        for index, (_offset, skip) in enumerate(walks):
            for _turn in range(weights[index]):
                c = position[index]
                while entry[c] >= 0:
                    c += skip
                    if c >= size:
                        c -= size
                entry[c] = index
                c += skip
                position[index] = c - size if c >= size else c
                filled += 1
                if filled == size:
                    return tuple(entry)


def table_for(backends: Sequence[Backend], size: int = DEFAULT_TABLE_SIZE
              ) -> tuple[Backend, ...]:
    """The table as backends, for backends given in any order."""
    ordered = sorted(backends, key=backend_name)
    table = build_table(tuple(backend_name(b) for b in ordered), size)
    return tuple(ordered[i] for i in table)


@functools.lru_cache(maxsize=256)
def table_chunks(table_key: Frontend, backends: tuple[Backend, ...],
                 size: int = DEFAULT_TABLE_SIZE) -> tuple[tuple[bytes, bytes], ...]:
    """The lb_maglev entries of one table: (key, value) per chunk of LB_MAGLEV_CHUNK
    positions. Cached like `build_table`: an unchanged table costs nothing to recompute."""
    table = table_for(backends, size)
    return tuple((maglev_key(table_key, start // LB_MAGLEV_CHUNK),
                  maglev_chunk(table[start:start + LB_MAGLEV_CHUNK]))
                 for start in range(0, len(table), LB_MAGLEV_CHUNK))


def chunk_count(size: int) -> int:
    """lb_maglev entries one table of `size` positions takes."""
    return -(-size // LB_MAGLEV_CHUNK)


def shares(backends: Sequence[Backend], size: int = DEFAULT_TABLE_SIZE) -> dict[str, int]:
    """Table positions per backend name (what `service list` shows)."""
    counts: dict[str, int] = {backend_name(b): 0 for b in backends}
    for backend in table_for(backends, size):
        counts[backend_name(backend)] += 1
    return counts


def _rol32(word: int, shift: int) -> int:
    return ((word << shift) | (word >> (32 - shift))) & _MASK


# lookup3's final mix: (target, source, rotation) per step, on the words (a, b, c).
_FINAL_MIX = ((2, 1, 14), (0, 2, 11), (1, 0, 25), (2, 1, 16), (0, 2, 4), (1, 0, 14),
              (2, 1, 24))


def jhash_3words(a: int, b: int, c: int, initval: int) -> int:
    """Bob Jenkins' lookup3 final mix of three 32-bit words, as the datapath computes it."""
    initval = (initval + _JHASH_INITVAL + (3 << 2)) & _MASK
    words = [(a + initval) & _MASK, (b + initval) & _MASK, (c + initval) & _MASK]
    for target, source, shift in _FINAL_MIX:
        words[target] ^= words[source]
        words[target] = (words[target] - _rol32(words[source], shift)) & _MASK
    return words[2]


def flow_hash(client: str, sport: int, dport: int, proto: str) -> int:
    """The datapath's hash of a new connection (client address, both ports, protocol; no
    destination address, so every node hashes a flow to its node port alike). Words are
    read as the datapath reads them: network-order bytes in this machine's byte order."""
    (saddr,) = struct.unpack("=I", ip_bytes(client))
    (sport_raw,) = struct.unpack("=H", port_bytes(sport))
    (dport_raw,) = struct.unpack("=H", port_bytes(dport))
    return jhash_3words(saddr, (dport_raw << 16) | sport_raw, PROTO_NUMBERS[proto],
                        FLOW_HASH_SEED)


def backend_for_flow(backends: Sequence[Backend], client: str, sport: int, dport: int,
                     proto: str, size: int = DEFAULT_TABLE_SIZE) -> Backend:
    """The backend the datapath picks for a new connection through a maglev frontend."""
    table = table_for(backends, size)
    return table[flow_hash(client, sport, dport, proto) % size]
