"""npas-host: the host side of NPAS (CLI, devices, runner client, pruning, search, reports)."""

__version__ = "0.1.0"
