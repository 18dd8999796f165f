"""nodeinit's pure parts: which host paths a node must carry into its private /tmp and /run."""

from __future__ import annotations

import pytest

from cni_harness.providers.local.nodeinit import carried_paths, overlay_order

pytestmark = pytest.mark.unit


def test_a_checkout_in_tmp_is_carried_once_with_its_venv():
    assert carried_paths(("/tmp/ci", "/tmp/ci/.venv")) == ["/tmp/ci"]


def test_paths_outside_the_private_dirs_stay_as_they_are():
    assert carried_paths(("/work/main", "/work/main/.venv", "/tmpfoo/x")) == []


def test_run_and_tmp_are_both_private():
    assert carried_paths(("/run/user/0/src", "/tmp/a")) == ["/run/user/0/src", "/tmp/a"]


def test_the_overlay_holding_the_disk_is_mounted_last():
    assert overlay_order(("/etc", "/var", "/usr"), "/var/lib/cni-harness/c/node1") == \
        ["/etc", "/usr", "/var"]
