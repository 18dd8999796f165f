"""What the VM runs in this directory share (the unit tests here use none of it)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def vm_available() -> None:
    """Skip the module, giving the provider's reason, when the vm provider cannot run on
    this machine (tools missing, not root); in CI that is a failure (`require_available`).
    Never a fallback to namespace nodes."""
    from cni_harness.providers.vm.provider import VmProvider
    from cni_harness.testing import require_available

    require_available(VmProvider.availability(), "vm provider")
