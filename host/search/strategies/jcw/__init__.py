"""``jcw``: joint channel and weight pruning, NSGA-II (pymoo) with latency anchors."""

from .encoding import JcwBounds, JcwEncoding
from .strategy import JcwStrategy

__all__ = ["JcwBounds", "JcwEncoding", "JcwStrategy"]
