"""The npas-host subcommands: one module each with ``register(sub)`` and ``run(args)``.

host/cli.py builds the parser from the list in host/commands/registry.py and dispatches;
args.py holds the argument groups several commands share.
"""
