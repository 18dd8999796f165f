"""Shared fixtures and skip rules for every suite."""

from __future__ import annotations

import os
import sys

import pytest

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.dirname(sys.executable)


def pytest_collection_modifyitems(config, items):
    """Tests that need root say so when run without it, instead of failing obscurely."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces, bpffs, tc)")
    for item in items:
        if any(m in item.keywords for m in ("probe", "cluster", "e2e")):
            item.add_marker(skip)


@pytest.fixture
def venv_bin():
    """Path of an executable installed in the project's virtualenv."""
    return lambda name: os.path.join(VENV_BIN, name)


# ---------------------------------------------------------------- clusters (root only)
# Session-scoped so suites share one cluster: `local_cluster` has nothing deployed (the CNI
# plugin runs from the harness), `deployed_cluster` runs playbooks/site.yml once.

@pytest.fixture(scope="session")
def local_cluster():
    """A 3-node local namespace cluster named `lct<run suffix>`, removed at the end of the
    session (its name: `local_cluster.cluster`)."""
    from cni_harness.testing import fresh_local_cluster as make
    from cni_harness.testing import run_cluster_name

    with make(run_cluster_name("lct")) as provider:
        yield provider


@pytest.fixture(scope="session")
def deployed_cluster():
    """A 3-node local cluster named `lcd<run suffix>` with the module deployed (agent
    running). `deployed_cluster.first_deploy` is the result of that first deploy."""
    from cni_harness.deploy.playbook import run_playbook
    from cni_harness.testing import fresh_local_cluster as make
    from cni_harness.testing import run_cluster_name

    with make(run_cluster_name("lcd")) as provider:
        result = run_playbook(provider)
        assert result.rc == 0, result.failed_tasks
        provider.first_deploy = result
        yield provider
