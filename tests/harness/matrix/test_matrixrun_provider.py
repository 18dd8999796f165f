"""The matrix runner over a cluster `Provider` (the path vagrant takes), with the real local
provider standing in for VMs: nodes up, playbooks/site.yml deployed, node facts read through
`Provider.exec`, preflight rules per profile, a suite run against the entry, everything torn
down."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from cni_harness.matrix.matrix import load_matrix
from cni_harness.matrix.run import LocalTarget, ProviderTarget, RunPlan, run_matrix
from cni_harness.providers.local.provider import LocalProvider
from cni_harness.testing import run_cluster_name

pytestmark = pytest.mark.e2e

CLUSTER = run_cluster_name("qmprov")


def test_provider_target_runs_an_entry_end_to_end(tmp_path):
    matrix = load_matrix()
    target = ProviderTarget(
        "local-cluster", lambda: (LocalProvider, lambda _entry: LocalProvider(CLUSTER, 2)),
        LocalTarget().entries)
    assert target.availability().ok, target.availability().reason()
    entries = target.entries(matrix)
    plan = RunPlan(suites=["kernel"], k="tc_program",
                   profiles={p: matrix.profiles[p] for p in ("default", "extra-lb")},
                   out=str(tmp_path))
    lines: list[str] = []
    report = run_matrix(target, entries, plan, progress=lines.append)
    row = report.rows[0]
    assert not report.unexpected, report.to_dict()
    assert row.facts["kernelRelease"] == os.uname().release          # read from node1
    assert {c: v.status for c, v in row.cells.items()} == {
        "preflight:default": "pass", "preflight:extra-lb": "pass", "kernel": "pass"}
    with open(tmp_path / "host" / "preflight" / "extra-lb.json", encoding="utf-8") as fh:
        judged = json.load(fh)
    assert judged["liveProbes"] is False and judged["kernelRelease"] == os.uname().release
    assert any("bringing up host" in line for line in lines)
    with open(tmp_path / "host" / "deploy.json", encoding="utf-8") as fh:
        deployed = json.load(fh)
    assert deployed["rc"] == 0 and deployed["stats"]["ok"].keys() == {"node1", "node2"}
    assert any("[site.yml] Wait until the agent runs" in line for line in lines)
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                          check=True).stdout
    assert f"{CLUSTER}-" not in left                                   # torn down
