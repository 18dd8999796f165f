"""The agent's manifest directory reader: valid objects, named problems, oldest first."""

from __future__ import annotations

import os

import pytest

from cni_cilium.agent.inputs import ManifestReader

pytestmark = pytest.mark.unit

SVC = """apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  clusterIP: {ip}
  ports: [{{port: {port}}}]
"""


def write(path, text, mtime):
    path.write_text(text)
    os.utime(path, (mtime, mtime))


def test_objects_come_oldest_file_first_and_problems_name_file_object_and_field(tmp_path):
    write(tmp_path / "b.yaml", SVC.format(name="old", ip="10.96.0.1", port=80), 1000)
    write(tmp_path / "a.yaml", SVC.format(name="new", ip="10.96.0.2", port=80) + "---\n"
          + SVC.format(name="bad", ip="10.96.0.3", port=70000), 2000)
    write(tmp_path / "notes.txt", "not a manifest", 500)
    objects, problems = ManifestReader(str(tmp_path)).read()
    assert [o.name for o in objects] == ["old", "new"]
    assert problems == ["a.yaml: Service default/bad: spec.ports[0].port: invalid port 70000; "
                        "must be 1-65535"]


def test_a_changed_file_is_read_again_and_unchanged_ones_come_from_the_cache(tmp_path):
    reader = ManifestReader(str(tmp_path))
    write(tmp_path / "s.yaml", SVC.format(name="web", ip="10.96.0.1", port=80), 1000)
    write(tmp_path / "t.yaml", SVC.format(name="api", ip="10.96.0.2", port=80), 1001)
    first, _ = reader.read()
    write(tmp_path / "s.yaml", SVC.format(name="web", ip="10.96.0.1", port=8080), 1002)
    second, _ = reader.read()
    assert [o.ports[0].port for o in second] == [80, 8080]       # t.yaml is older now
    assert second[0] is first[1]                                # t.yaml not parsed again
    (tmp_path / "t.yaml").unlink()
    third, _ = reader.read()
    assert [o.name for o in third] == ["web"]


def test_unreadable_yaml_is_a_problem_not_a_crash(tmp_path):
    (tmp_path / "x.yaml").write_text("kind: [unclosed\n")
    objects, problems = ManifestReader(str(tmp_path)).read()
    assert objects == [] and problems[0].startswith("x.yaml: cannot read:")
    assert ManifestReader(str(tmp_path / "missing")).read() == ([], [])


def test_a_batch_writer_holding_the_write_lock_is_seen_until_it_lets_go(tmp_path):
    import fcntl
    import os

    from cni_cilium import paths

    reader = ManifestReader(str(tmp_path))
    assert reader.writer_active() is False              # no lock file: nobody writes batches
    fd = os.open(str(tmp_path / paths.MANIFEST_WRITE_LOCK), os.O_RDWR | os.O_CREAT)
    try:
        assert reader.writer_active() is False          # the file alone is not a writer
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert reader.writer_active() is True
        fcntl.flock(fd, fcntl.LOCK_UN)
        assert reader.writer_active() is False
    finally:
        os.close(fd)


def test_the_harness_sync_writes_its_batch_under_the_agents_write_lock(tmp_path):
    """The sync script run on nodes takes the very lock the agent checks: while someone
    else holds it the sync writes nothing; it writes once the lock is free, and frees it."""
    import fcntl
    import json
    import subprocess
    import sys

    from cni_cilium import paths
    from cni_harness.cluster.apiserver import SYNC_SCRIPT

    fd = os.open(str(tmp_path / paths.MANIFEST_WRITE_LOCK), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    sync = subprocess.Popen([sys.executable, "-c", SYNC_SCRIPT, str(tmp_path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        sync.stdin.write(json.dumps({"svc-a.yaml": "{}\n"}))
        sync.stdin.close()
        with pytest.raises(subprocess.TimeoutExpired):
            sync.wait(timeout=1.0)                      # blocked on the lock
        assert not (tmp_path / "svc-a.yaml").exists()
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    sync.wait(timeout=30)
    assert json.loads(sync.stdout.read()) == ["svc-a.yaml"]
    assert ManifestReader(str(tmp_path)).writer_active() is False
