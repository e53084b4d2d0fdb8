"""Models and what they learn from: turn what the user names into an nn.Module and inputs.

A model is one of: a torchvision classification model name (random weights: nothing is
downloaded), ``package.module:factory`` (a callable returning an nn.Module), or a file saved
with ``torch.export.save`` (``.pt2``). The package also holds the small models of the search's
defaults and tests (zoo.py), the datasets (data.py), the training loop (train.py) and the
torchvision import guard (compat.py).

Modules that held models once and moved are listed in ``MOVED_MODULES``: a spec or a pickled
checkpoint that names the old module still loads (journals of earlier searches name both).
"""

from __future__ import annotations

import importlib
import os
import pickle
import sys
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from .compat import import_torchvision

# old module -> where its models live now; read by load_model and load_checkpoint only
MOVED_MODULES = {"host.search.zoo": "host.models.zoo"}


class ModelSpecError(ValueError):
    pass


def current_module(name: str) -> str:
    """Where a model module lives now (``MOVED_MODULES``); other names unchanged."""
    return MOVED_MODULES.get(name, name)


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        return super().find_class(current_module(module), name)


class _MovedPickle:
    """A ``pickle_module`` for torch.load whose unpickler reads moved classes from their new
    module (torch subclasses ``Unpickler`` and calls ``load``)."""

    Unpickler = _Unpickler
    load = staticmethod(lambda f, **kw: _Unpickler(f, **kw).load())


def load_checkpoint(path: str | Path):
    """``torch.load`` of a whole pickled object (a model, a PrunedModel) on the CPU, with the
    classes of moved modules found where they are now. Only for files this tool wrote or the
    user gave as a model: unpickling runs code."""
    return torch.load(path, map_location="cpu", weights_only=False,
                      pickle_module=_MovedPickle)


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(x) for x in text.replace("x", ",").split(","))
    except ValueError:
        raise ModelSpecError(f"input shape {text!r}: expected e.g. 1,3,224,224") from None
    if not shape or any(d <= 0 for d in shape):
        raise ModelSpecError(f"input shape {text!r}: every dimension must be positive")
    return shape


def torchvision_names() -> list[str]:
    tv = import_torchvision()
    return sorted(tv.models.list_models(module=tv.models))


def _import_user_module(mod_name: str) -> ModuleType:
    """Import a user's module; one that imports a broken torchvision install (see
    ``compat.py``) is imported again after the workaround."""
    try:
        return importlib.import_module(mod_name)
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
    for name in [m for m in sys.modules if m == mod_name or m.startswith(mod_name + ".")]:
        del sys.modules[name]
    import_torchvision()
    return importlib.import_module(mod_name)


def load_model(spec: str) -> nn.Module:
    """Load a model in eval mode. Raises ModelSpecError with what was tried."""
    path = Path(spec)
    if spec.endswith(".pt2"):
        if not path.is_file():
            raise ModelSpecError(f"{spec}: no such file")
        try:
            return torch.export.load(str(path)).module()
        except Exception as e:  # torch raises many kinds here; the message is what matters
            raise ModelSpecError(f"{spec}: not a torch.export program ({e})") from e
    if ":" in spec:
        mod_name, _, attr = spec.partition(":")
        mod_name = current_module(mod_name)
        if os.getcwd() not in sys.path:  # like `python -m`: modules in the current folder
            sys.path.insert(0, os.getcwd())
        try:
            factory = getattr(_import_user_module(mod_name), attr)
        except (ImportError, AttributeError) as e:
            raise ModelSpecError(f"{spec}: cannot import {attr!r} from {mod_name!r} ({e})") \
                from e
        model = factory() if callable(factory) and not isinstance(factory, nn.Module) \
            else factory
        if not isinstance(model, nn.Module):
            raise ModelSpecError(f"{spec}: returned {type(model).__name__}, not an nn.Module")
        return model.eval()
    tv = import_torchvision()
    names = torchvision_names()
    if spec not in names:
        close = [n for n in names if spec.lower() in n][:5]
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelSpecError(f"model {spec!r}: not a torchvision classification model, a "
                             f"module:factory path or a .pt2 file{hint}")
    return tv.models.get_model(spec, weights=None).eval()


def example_inputs(shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g),)


def adapt_head(model: nn.Module, classes: int) -> str | None:
    """Give the last Linear ``classes`` outputs (a new layer) when it has another count."""
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = (name, m)
    if last is None or last[1].out_features == classes:
        return None
    name, m = last
    parent_path, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, nn.Linear(m.in_features, classes, bias=m.bias is not None))
    return f"{name}: a new Linear {m.in_features}→{classes} for the dataset's classes " \
           f"(was →{m.out_features})"
