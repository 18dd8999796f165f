"""testinfra checks run only against hosts given on the command line (any provider):

    pytest tests/infra --hosts='ansible://all' --ansible-inventory=INVENTORY
    cni-harness check [--name CLUSTER]           # the same, for a local cluster

Without `--hosts`/`--ansible-inventory` testinfra would check this machine, so they skip.
"""

from __future__ import annotations

import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def pytest_collection_modifyitems(config, items):
    if config.getoption("hosts", None) or config.getoption("ansible_inventory", None):
        return
    skip = pytest.mark.skip(reason="testinfra node checks: give --hosts/--ansible-inventory "
                            "(or run `cni-harness check`)")
    for item in items:
        if str(item.fspath).startswith(HERE + os.sep):
            item.add_marker(skip)
