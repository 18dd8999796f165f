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
