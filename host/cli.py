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
from .commands.args import add_device_args
from .console import err
from .errors import UserError

# name -> the module that registers and runs it, in the order `--help` lists them
COMMANDS = {
    "devices": "host.commands.devices",
    "compile": "host.commands.compile",
    "profile": "host.commands.profile",
    "plan": "host.pruning.command",
    "tune": "host.tune.command",
    "search": "host.search.command",
    "install": "host.commands.install",
    "bench": "host.bench.command",
}


class _SearchEntry:
    """host/search/command.py's entry points under their old names, until it has
    register/run."""

    @staticmethod
    def register(sub: argparse._SubParsersAction) -> None:
        from .search.command import add_search_parser

        add_search_parser(sub, add_device_args)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from .search.command import cmd_search

        return cmd_search(args)


def _command(name: str) -> ModuleType | type[_SearchEntry]:
    module = importlib.import_module(COMMANDS[name])
    if name == "search" and "register" not in vars(module):
        return _SearchEntry
    return module


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


# The old private names, for host/search until it imports host/commands/args.py,
# host/devices and host/targets.py instead; removed once nothing imports host.cli.
CliError = UserError


def _device(args, stack):
    from .commands.args import device_spec
    from .devices import open_device

    return open_device(device_spec(args), stack)


def _toolchain(args, device_info=None):
    from .targets import toolchain_for_device

    return toolchain_for_device(device_info, args.backend or "cpu", args.precision)


if __name__ == "__main__":
    sys.exit(main())
