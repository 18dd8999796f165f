"""The Ansible execution environment run_playbook builds (pure parts)."""

from __future__ import annotations

import os

import pytest

from cni_harness.deploy import playbook as deploy

pytestmark = pytest.mark.unit


def test_mitogen_is_the_default_strategy_and_its_plugin_dir_exists(monkeypatch):
    monkeypatch.delenv(deploy.STRATEGY_ENV, raising=False)
    env = deploy.strategy_env()
    assert env["ANSIBLE_STRATEGY"] == "mitogen_linear"
    assert os.path.isfile(os.path.join(env["ANSIBLE_STRATEGY_PLUGINS"], "mitogen_linear.py"))


def test_linear_can_be_chosen_by_environment(monkeypatch):
    monkeypatch.setenv(deploy.STRATEGY_ENV, "linear")
    assert deploy.strategy_env() == {"ANSIBLE_STRATEGY": "linear"}


def test_unknown_strategy_is_refused_by_name(monkeypatch):
    monkeypatch.setenv(deploy.STRATEGY_ENV, "free")
    with pytest.raises(ValueError, match="CNI_HARNESS_ANSIBLE_STRATEGY='free'"):
        deploy.strategy_env()
