"""The one registration style and the one error path of `cni-harness` (pure: no cluster)."""

from __future__ import annotations

import pytest

import cni_harness.cli as main_module
from cni_harness.cli.common import EXIT_PROVIDER_UNAVAILABLE, EXIT_USAGE, CliError

pytestmark = pytest.mark.unit


def test_every_command_module_registers_its_commands():
    parser = main_module.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert {"matrix", "run", "repro", "demo", "cluster", "node", "pod", "deploy", "bench",
            "check", "apply", "delete", "vagrant", "kind"} <= set(commands)
    for module in main_module.COMMAND_MODULES:
        assert callable(module.register)


def test_a_cli_error_becomes_its_lines_on_stderr_and_its_exit_status(monkeypatch, capsys):
    def fails(_args):
        raise CliError(["first problem", "second problem"], EXIT_USAGE)

    monkeypatch.setattr(main_module.run, "cmd_matrix_validate", fails)
    monkeypatch.setattr(main_module, "COMMAND_MODULES", (main_module.run,))
    assert main_module.main(["matrix", "validate"]) == EXIT_USAGE
    assert capsys.readouterr().err == "error: first problem\nerror: second problem\n"


def test_a_bad_matrix_file_is_a_usage_error_naming_the_file(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert main_module.main(["matrix", "validate", str(missing)]) == EXIT_USAGE
    assert capsys.readouterr().err.startswith(f"error: {missing}: ")


def test_an_unavailable_provider_exits_3():
    from cni_harness.cli.common import unavailable
    from cni_harness.providers.base import Availability

    error = unavailable("kind", Availability(False, ("docker",)))
    assert error.exit_code == EXIT_PROVIDER_UNAVAILABLE
    assert error.lines == ["kind cannot run here; missing: docker"]
