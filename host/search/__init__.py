"""The search (`npas-host search`), in the order a run goes through it:

- command.py: the command line; config.py: the settings (``SearchConfig``), written once;
- prepare.py: the checks that need no device; engine.py: the run (checks on the device, the
  phases, the export, the journal, resume); phases.py: phase 1 operator replacement (ops.py),
  phase 2 the search loop, phase 3 pruning (host/pruning/algorithms.py);
- space.py: per layer a filter type (filters.py: the re-typing itself), a scheme and a rate;
  strategies/: npas, random, uniform behind one ask/tell interface, and the reward;
- oracle.py: latency measured on the device; journal.py, live.py, report.py: what the run
  records, shows and writes.
"""

from .config import DEFAULT_MODEL, SearchConfig, SearchError
from .engine import Search
from .prepare import prepare
from .space import Candidate, LayerChoice, SearchSpace

__all__ = ["DEFAULT_MODEL", "Candidate", "LayerChoice", "Search", "SearchConfig", "SearchError",
           "SearchSpace", "prepare"]
