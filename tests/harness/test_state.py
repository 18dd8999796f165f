"""The crash-safe journal and the cluster lock."""

from __future__ import annotations

import pytest

from cni_harness.state import Journal, cluster_lock, read_json, write_atomic

pytestmark = pytest.mark.unit


def test_journal_keeps_complete_entries_and_ignores_a_torn_last_line(tmp_path):
    journal = Journal(str(tmp_path / "j" / "journal.jsonl"))
    assert journal.entries() == [] and not journal.exists()
    journal.record("netns", name="lc1-fabric")
    journal.record("supervisor", node="node1")
    with open(journal.path, "a", encoding="utf-8") as fh:
        fh.write('{"op": "netns", "na')          # kill -9 in the middle of a write
    assert journal.entries() == [{"op": "netns", "name": "lc1-fabric"},
                                 {"node": "node1", "op": "supervisor"}]


def test_cluster_lock_is_reentrant_in_one_process(tmp_path, monkeypatch):
    monkeypatch.setenv("CNI_HARNESS_STATE_DIR", str(tmp_path))
    with cluster_lock("lc1"), cluster_lock("lc1"):
        pass
    assert (tmp_path / ".lc1.lock").exists()


def test_write_atomic_and_read_json(tmp_path):
    path = str(tmp_path / "a" / "b.json")
    write_atomic(path, '{"x": 1}')
    assert read_json(path) == {"x": 1}
    assert read_json(str(tmp_path / "missing.json"), "default") == "default"
