"""``python -m host.bench.sparse``: the sparse benchmark's command line (see ``cli.py``)."""

import sys

from .cli import main

sys.exit(main())
