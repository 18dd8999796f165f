"""cni-harness: builds clusters on providers, deploys with Ansible, runs suites, reports."""

import os

__version__ = "0.1.0"

# The source tree this package runs from: suites, playbooks, bpf/ and matrix.yaml live there.
PROJECT_ROOT = os.environ.get(
    "CNI_PROJECT_ROOT",
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
)
