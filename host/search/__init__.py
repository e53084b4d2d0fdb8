"""The search (`npas-host search`): phase 1 operator replacement (ops.py), phase 2 over the
space of per-layer filter types, schemes and rates (space.py) with a strategy (strategies.py:
npas = controller.py + bo.py, random, uniform), candidates scored by a short fine-tune and by
latency measured on the device (latency.py), phase 3 pruning algorithms (algorithms.py); the
run (search.py) keeps a journal (journal.py) and writes a report (report.py)."""

from .search import DEFAULT_MODEL, Search, SearchConfig, SearchError, prepare
from .space import Candidate, LayerChoice, SearchSpace

__all__ = ["DEFAULT_MODEL", "Candidate", "LayerChoice", "Search", "SearchConfig", "SearchError",
           "SearchSpace", "prepare"]
