"""The two consoles every command prints to: results on stdout, progress and errors on stderr
(unwrapped, so messages stay whole for logs and grep)."""

from rich.console import Console

out = Console()
err = Console(stderr=True, soft_wrap=True)
