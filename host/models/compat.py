"""The one place that papers over a broken torchvision install.

PyPI's torchvision wheels are CUDA builds. Next to a CPU-only torch their compiled ops library
cannot load, and ``import torchvision`` dies in ``torchvision._meta_registrations`` with
"operator torchvision::nms does not exist". NPAS only needs torchvision's model definitions,
which use none of those ops. So: import normally first (a working install, CUDA or CPU, is left
exactly as it is); only on that specific failure, declare the two op schemas the meta
registrations look up and import again. Detection ops (nms, roi_align...) stay unusable, as
they were.
"""

from __future__ import annotations

import sys
from types import ModuleType

_fallback_lib = None  # keeps the torch.library fragment alive for the process


def import_torchvision() -> ModuleType:
    global _fallback_lib
    try:
        import torchvision
        return torchvision
    except RuntimeError as e:
        if "torchvision::" not in str(e) or "does not exist" not in str(e):
            raise
    import torch

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    _fallback_lib = torch.library.Library("torchvision", "FRAGMENT")
    for op in ("nms", "qnms"):
        _fallback_lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision
    return torchvision
