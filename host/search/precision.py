"""Precision as a per-layer search choice (``--precisions fp32,int8``): which layers are offered
int8, what a candidate's int8 layers compile to, and its accuracy on the quantized model.

Offers come from codegen's quantization pass (``codegen.int8_offers``: its ``int8_reason`` per
layer and pruning scheme, asked on the model as phase 1 leaves it, each filter type applied),
so a layer is offered int8 only under the schemes the pass runs in int8 (today dense and the
block schemes; more when sparse + int8 kernels cover them) and never where its epilogue or op
has no int8 kernel. A layer that is not searched (a negligible share of the multiply-adds)
stays float32.

A candidate with int8 layers compiles with the device's int8 toolchain, every other conv and
linear named in ``keep_fp32`` (``Int8Spec``), calibrated on ``CALIBRATION_IMAGES`` images of
the search's training data (the first ones, unshuffled: the same for every candidate).
Fine-tuning stays float32 (the masks and the optimizer are float32 ones, and the kernels'
rounding has no gradient); its accuracy is then measured on the quantized model exactly as the
int8 kernels compute it (``codegen.quantized_graph`` + ``codegen.run_quantized``: the
executor the kernels match bit for bit), calibrated on those same images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from codegen import int8_layer_names, int8_offers, quantized_graph, run_quantized

from ..models.data import batches
from .filters import apply_filter_types
from .space import MASK_SCHEMES, STRUCTURAL, Candidate, SearchSpace

PRECISIONS = ("fp32", "int8")
CALIBRATION_IMAGES = 32


@dataclass(frozen=True)
class Int8Spec:
    """How one candidate compiles in int8: the conv/linear modules that run int8 (asked), the
    others kept float32 (``compile_model(keep_fp32=...)``), the calibration batches."""

    int8: tuple[str, ...]
    keep_fp32: tuple[str, ...]
    calibration: list = field(default_factory=list, compare=False, repr=False)


def parse_precisions(text: str) -> tuple[str, ...]:
    """'fp32,int8' → ('fp32', 'int8'); fp32 is always one of them (the fallback)."""
    got = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in got if p not in PRECISIONS]
    if bad or not got:
        raise ValueError(f"--precisions {text!r}: a comma-separated list of "
                         f"{', '.join(PRECISIONS)} (e.g. fp32,int8)")
    return tuple(p for p in PRECISIONS if p in got or p == "fp32")


def _codegen_scheme(scheme: str) -> str:
    """The scheme a layer carries into codegen: narrowed and unpruned layers are dense."""
    return "dense" if scheme == "none" or scheme in STRUCTURAL else scheme


def offer_int8(space: SearchSpace, model: nn.Module, example: torch.Tensor,
               lanes: int) -> dict[str, str]:
    """Fill every searched layer's ``int8`` (filter type → schemes that run int8) from the
    quantization pass on ``model`` (as phase 1 leaves it); returns the searched layers not
    offered int8 at all and why (their dense choice's reason)."""
    schemes = ("dense", *MASK_SCHEMES)
    why: dict[str, str] = {}
    for ft in sorted({ft for ls in space.layers for ft in ls.options}):
        types = {ls.name: ft for ls in space.layers if ft in ls.options and ft != "keep"}
        offers = int8_offers(apply_filter_types(model, types).eval(), (example,), lanes,
                             schemes)
        for ls in space.layers:
            if ft not in ls.options:
                continue
            target = offers.get(ls.target(ft), {})
            first = offers.get(f"{ls.name}.0", {}) if ft == "dwpw" else {}
            ok = set()
            for s in {s for ss in ls.options[ft].values() for s in ss}:
                cs = _codegen_scheme(s)
                if target.get(cs, "no such layer") is None and (
                        ft != "dwpw" or first.get("dense", "no such layer") is None):
                    ok.add(s)
                elif ft == "keep" and s == "none":
                    why[ls.name] = target.get(cs) or "no such layer in the captured graph"
            if ok:
                ls.int8[ft] = frozenset(ok)
    space.precisions = PRECISIONS
    return {n: w for n, w in why.items() if not any(ls.int8 for ls in space.layers
                                                    if ls.name == n)}


def int8_modules(space: SearchSpace, cand: Candidate) -> tuple[str, ...]:
    """The conv/linear module paths (filter types applied) ``cand`` runs in int8."""
    out: list[str] = []
    for ls, c in zip(space.layers, cand.choices, strict=True):
        if c.precision == "int8":
            out += [f"{ls.name}.0", f"{ls.name}.1"] if c.ftype == "dwpw" else [ls.target(c.ftype)]
    return tuple(out)


def int8_spec(space: SearchSpace, cand: Candidate, model: nn.Module,
              calibration: list) -> Int8Spec | None:
    """How ``cand`` (realized as ``model``) compiles: None when it has no int8 layer (the
    float32 toolchain, exactly as without --precisions)."""
    if not cand.int8:
        return None
    want = int8_modules(space, cand)
    keep = tuple(n for n, m in model.named_modules()
                 if isinstance(m, nn.Conv2d | nn.Linear) and n not in want)
    return Int8Spec(want, keep, calibration)


def calibration_images(data, example: torch.Tensor, n: int = CALIBRATION_IMAGES) -> list:
    """The first ``n`` training images (unshuffled), each one batch shaped like ``example``:
    the calibration of every int8 candidate (compile and accuracy alike)."""
    out: list = []
    per = example.shape[0]
    for x, _y in batches(data.train, per, shuffle=False):
        if len(x) != per or len(out) * per >= n:
            break
        out.append([x.detach().cpu().numpy().astype(np.float32)])
    return out


def quantized(model: nn.Module, example: torch.Tensor, spec: Int8Spec, lanes: int,
              schemes: dict[str, str] | None = None):
    """``model``'s quantized LR graph as the int8 bundle runs it."""
    return quantized_graph(model.cpu().eval(), (example,), spec.calibration, lanes,
                           spec.keep_fp32, schemes)


def quantized_accuracy(model: nn.Module, data, example: torch.Tensor, spec: Int8Spec,
                       lanes: int, schemes: dict[str, str] | None = None,
                       gate=None) -> tuple[float, tuple[str, ...]]:
    """Top-1 accuracy on ``data.val`` of ``model`` quantized as ``spec`` says, run as the int8
    kernels compute it; and the layers that really run int8."""
    import contextlib

    graph = quantized(model, example, spec, lanes, schemes)
    per = example.shape[0]
    correct = seen = 0
    gate = gate if gate is not None else contextlib.nullcontext()
    for x, y in batches(data.val, per, shuffle=False):
        n = len(x)
        if n != per:  # the graph is shaped for ``example``'s batch: pad the tail
            x = torch.cat([x, x[-1:].expand(per - n, *x.shape[1:])])
        with gate:
            out = run_quantized(graph, [x.numpy().astype(np.float32)])[0][:n]
        correct += int((torch.from_numpy(out).argmax(1) == y).sum())
        seen += n
    return correct / max(seen, 1), int8_layer_names(graph)
