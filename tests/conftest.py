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
