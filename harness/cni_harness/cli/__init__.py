"""`cni-harness`: one `main` parses, dispatches and turns `CliError` into stderr + exit status;
each command module here registers its commands with `register(subparsers)`."""

from .main import main

__all__ = ["main"]
