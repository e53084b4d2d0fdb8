"""npas-host: the command line. Builds the parser from the command registry and dispatches.

Every subcommand is a module with ``register(sub)`` (adds its parser) and ``run(args) -> int``:
devices, compile, profile and install in host/commands/, plan in host/pruning/command.py, tune
in host/tune/command.py, search in host/search/command.py, bench in host/bench/command.py.
Human output is a rich table on stdout (progress on stderr); ``--json`` prints
machine-readable records instead. A UserError (and the other errors meant for the user) is
printed without a traceback, exit code 2. Nothing imports this module.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

from rich.markup import escape

from . import __version__
from .console import err
from .errors import UserError

# name -> the module that registers and runs it, in the order `--help` lists them
COMMANDS = {
    "devices": "host.commands.devices",
    "compile": "host.commands.compile",
    "profile": "host.commands.profile",
    "plan": "host.pruning.command",
    "map": "host.pruning.map_command",
    "pas": "host.pruning.pas_command",
    "tune": "host.tune.command",
    "search": "host.search.command",
    "install": "host.commands.install",
    "bench": "host.bench.command",
}


def _command(name: str) -> ModuleType:
    return importlib.import_module(COMMANDS[name])


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="npas-host", description=(
        "Compiler-aware pruning and architecture search for phones: compile PyTorch CNNs "
        "into native kernels and measure them on a device's runner."))
    ap.add_argument("--version", action="version", version=f"npas-host {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        _command(name).register(sub)
        assert name in sub.choices, f"{COMMANDS[name]}.register did not add {name!r}"
    return ap


def _user_errors() -> tuple[type[Exception], ...]:
    """The errors whose message is for the user (no traceback)."""
    from codegen import BundleError, CodegenError, CompileError

    from .devices.phone import PhoneError
    from .models import ModelSpecError
    from .pruning import PruningError
    from .rpc.client import RunnerError

    return (UserError, ModelSpecError, BundleError, CodegenError, CompileError, RunnerError,
            PhoneError, PruningError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _command(args.command).run(args)
    except _user_errors() as e:
        err.print(f"[red]error:[/red] {escape(str(e))}")
        return 2
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
