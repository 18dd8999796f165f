"""Maglev tables against the paper's properties: balance, minimal disruption, determinism."""

from __future__ import annotations

import collections
import os
import subprocess
import sys

import pytest

from cni_cilium import maglev
from cni_cilium.bpfabi import LB_MAGLEV_CHUNK, Backend, Frontend, decode_maglev_chunk
from cni_cilium.maglev import (
    DEFAULT_TABLE_SIZE,
    TABLE_SIZES,
    TableSizeError,
    backend_for_flow,
    build_table,
    chunk_count,
    table_chunks,
    table_for,
)

pytestmark = pytest.mark.unit


def backends(n: int, port: int = 8080) -> list[Backend]:
    return [Backend(f"10.100.{1 + i // 250}.{2 + i % 250}", port) for i in range(n)]


def moved(before: tuple, after: tuple) -> int:
    return sum(1 for a, b in zip(before, after) if a != b)


@pytest.mark.parametrize("n", [1, 3, 5, 10, 100, 1000])
def test_every_backend_gets_m_over_n_entries_give_or_take_one(n):
    counts = collections.Counter(table_for(backends(n)))
    assert len(counts) == n
    assert sum(counts.values()) == DEFAULT_TABLE_SIZE
    assert min(counts.values()) == DEFAULT_TABLE_SIZE // n
    assert max(counts.values()) - min(counts.values()) <= 1


def test_weights_share_the_table_in_proportion():
    names = tuple(f"10.100.1.{i}:80" for i in (2, 3, 4))
    counts = collections.Counter(build_table(names, 4093, weights=(1, 2, 3)))
    for index, weight in enumerate((1, 2, 3)):
        assert abs(counts[index] - 4093 * weight / 6) <= 3, counts
    with pytest.raises(ValueError, match="weights"):
        build_table(names, 4093, weights=(1, 0, 1))


@pytest.mark.parametrize("n,extra_bound", [(3, 0.005), (5, 0.005), (10, 0.01), (100, 0.02)])
def test_removing_one_backend_moves_its_entries_and_few_others(n, extra_bound):
    """The removed backend's ~M/N entries must move; the paper's bound on the rest is
    small when M >> N (here at most `extra_bound` of the table, measured 0.2-1.3 %)."""
    pool = backends(n)
    for gone in (pool[0], pool[n // 2], pool[-1]):
        before = table_for(pool)
        after = table_for([b for b in pool if b != gone])
        own = sum(1 for b in before if b == gone)
        changed = moved(before, after)
        assert gone not in after
        assert changed >= own
        assert changed - own <= extra_bound * DEFAULT_TABLE_SIZE, (n, gone, changed, own)


def test_adding_one_backend_moves_about_one_share():
    pool = backends(10)
    before = table_for(pool)
    after = table_for([*pool, Backend("10.100.9.9", 8080)])
    gained = sum(1 for b in after if b.addr == "10.100.9.9")
    assert moved(before, after) - gained <= 0.01 * DEFAULT_TABLE_SIZE


def test_order_of_the_backends_does_not_matter():
    pool = backends(7)
    assert table_for(pool) == table_for(list(reversed(pool))) == table_for(
        pool[3:] + pool[:3])


def test_tables_are_the_same_in_every_process():
    """Nodes build their tables in separate processes: no per-process hash seed may leak
    in (Python's str hash is randomized per process)."""
    code = ("from cni_cilium import maglev; from cni_cilium.bpfabi import Backend; "
            "import hashlib; t = maglev.table_for([Backend(f'10.100.1.{i}', 80) "
            "for i in range(2, 12)]); print(hashlib.sha256(repr(t).encode()).hexdigest())")
    digests = set()
    for seed in ("1", "2", "random"):
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, env={**os.environ, "PYTHONHASHSEED": seed})
        digests.add(res.stdout.strip())
    assert len(digests) == 1


@pytest.mark.parametrize("size", [4, 16380, 16383, 0])
def test_table_sizes_must_be_the_allowed_primes(size):
    with pytest.raises(TableSizeError, match="251, 509"):
        build_table(("10.0.0.1:80",), size)


@pytest.mark.parametrize("size", TABLE_SIZES[:4])
def test_every_allowed_size_fills_the_whole_table(size):
    table = build_table(tuple(f"10.0.0.{i}:80" for i in range(1, 6)), size)
    assert len(table) == size and min(table) == 0 and max(table) == 4


def test_chunks_cover_the_table_in_order():
    table_key = Frontend("10.96.0.9", 80, "TCP")
    pool = tuple(backends(3))
    chunks = table_chunks(table_key, pool, 251)
    assert len(chunks) == chunk_count(251) == 16
    flat = [b for _key, value in chunks for b in decode_maglev_chunk(value)]
    assert flat[:251] == list(table_for(pool, 251))
    assert flat[251:] == [None] * (16 * LB_MAGLEV_CHUNK - 251)


def test_flow_hash_leaves_out_the_destination_and_spreads_flows():
    pool = backends(5)
    picks = collections.Counter(backend_for_flow(pool, "10.99.0.100", sport, 30080, "TCP")
                                for sport in range(40000, 41000))
    assert len(picks) == 5 and min(picks.values()) > 150
    assert maglev.flow_hash("10.99.0.100", 40000, 30080, "TCP") != maglev.flow_hash(
        "10.99.0.100", 40000, 30080, "UDP")


def test_jhash_depends_on_every_word():
    """(The datapath's own hash is compared with this one in test_maglev_datapath.py.)"""
    base = maglev.jhash_3words(1, 2, 3, 4)
    assert len({base, maglev.jhash_3words(2, 2, 3, 4), maglev.jhash_3words(1, 3, 3, 4),
                maglev.jhash_3words(1, 2, 4, 4), maglev.jhash_3words(1, 2, 3, 5)}) == 5

