"""Which channels must be pruned together: the dependency graph of a model, built with torch.fx.

Every Conv2d (groups=1) and Linear creates a *channel space* (its outputs). Walking the traced
graph, a tensor's channel dimension is described as the concatenation of the spaces it carries:
BatchNorm, depthwise convs, activations and pools pass it through, ``cat`` on dim 1
concatenates (the offsets follow), ``flatten`` keeps it and a following Linear sees each
channel as ``in_features / channels`` consecutive features (index c·H·W + ...), and an
element-wise add/mul of two tensors ties their spaces together (a residual add group). Tied
spaces form a ``Group``: removing channel c of a group removes it from every member — the
producers' filters, the BNs and depthwise convs it flows through, and the consumers' inputs.

PixelShuffle(r) (depth-to-space) makes output channel c of input channels c·r² … c·r² + r² − 1:
the input's space *expands* the output's, so the producing conv's filters are pruned in aligned
blocks of r² (its member carries ``inner`` = r²) when a channel after the shuffle is removed.

Anything the walk does not understand (a grouped conv, a reshape, the model's output, the
input) *freezes* the groups it touches, with the reason, so that pruning them is refused with a
message instead of producing a wrong model.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from codegen import ACTIVATIONS

from .config import PruningError, describe

# Layers that pass channels through unchanged: every activation the code generator knows (its
# modules, functions and methods, one row each in codegen's ACTIVATIONS table), plus those it
# does not compile but a model may still be pruned around, dropout, identity and pools. A mean
# over H and W and upsampling keep the channels; PixelShuffle regroups them (``_shuffle``);
# channel shuffle (view/transpose), chunk/split and ConvTranspose2d freeze the groups they touch
# (the walk does not follow a permutation of channels).
_PASS_MODULES = (*dict.fromkeys(t for a in ACTIVATIONS.values() for t in a.modules), nn.Tanh,
                 nn.SiLU, nn.GELU, nn.LeakyReLU, nn.Dropout, nn.Identity, nn.MaxPool2d,
                 nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample)
_PASS_FUNCTIONS = {*(f for a in ACTIVATIONS.values() for f in a.functions), torch.tanh, F.silu,
                   F.gelu, F.leaky_relu, F.dropout, F.max_pool2d, F.avg_pool2d,
                   F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.interpolate, torch.clamp,
                   torch.clip}
_PASS_METHODS = {*(m for a in ACTIVATIONS.values() for m in a.methods), "tanh", "contiguous",
                 "clone", "clamp", "clamp_", "clip"}
_BINARY = {operator.add, operator.mul, torch.add, torch.mul, operator.sub, torch.sub,
           operator.iadd, operator.imul, "add", "mul", "sub", "add_", "mul_"}


@dataclass
class _Space:
    size: int | None
    origin: str
    frozen: str | None = None
    parent: int = -1  # union-find
    # PixelShuffle: (space T, r²): channel c·r² + j of this space is channel c of T's
    expands: tuple[int, int] | None = None


@dataclass(frozen=True)
class _Desc:
    spaces: tuple[int, ...]
    rank: int
    flat: bool = False


@dataclass(frozen=True)
class Member:
    """One place a group's channels appear: ``role`` is "out" (a producer's filters), "in" (a
    consumer's input channels; ``inner`` features per channel after flatten) or "through"
    (BatchNorm, depthwise conv); ``offset`` is where the group starts in that dimension."""

    layer: str
    role: str
    offset: int
    inner: int = 1

    def __repr__(self) -> str:
        at = f"@{self.offset}" if self.offset else ""
        inner = f"×{self.inner}" if self.inner != 1 else ""
        return f"{self.layer}.{self.role}{at}{inner}"


@dataclass
class Group:
    """Channels that must be pruned together."""

    id: int
    size: int
    members: list[Member] = field(default_factory=list)
    frozen: str | None = None

    @property
    def producers(self) -> list[Member]:
        return [m for m in self.members if m.role == "out"]

    @property
    def consumers(self) -> list[Member]:
        return [m for m in self.members if m.role == "in"]

    def __repr__(self) -> str:
        state = f", frozen: {self.frozen}" if self.frozen else ""
        return f"Group#{self.id}({self.size} ch: {', '.join(map(repr, self.members))}{state})"


@dataclass(frozen=True)
class _Slot:
    layer: str
    role: str
    spaces: tuple[int, ...]
    inner: int = 1


class DependencyGraph:
    """The channel groups of ``model`` (traced with torch.fx; leaf modules keep their paths)."""

    def __init__(self, model: nn.Module):
        self.model = model
        try:
            self.gm = fx.symbolic_trace(model)
        except Exception as e:  # fx raises many kinds; the message is what the user needs
            raise PruningError(f"{type(model).__name__}: torch.fx cannot trace the model, so "
                               f"filter/channel pruning cannot find its dependencies ({e})") \
                from e
        self.modules = dict(self.gm.named_modules())
        self._spaces: list[_Space] = []
        self._slots: list[_Slot] = []
        self._walk()
        self.groups, self._space_group = self._build_groups()

    # --- the walk ---------------------------------------------------------------------------
    def _new(self, size: int | None, origin: str, frozen: str | None = None) -> int:
        self._spaces.append(_Space(size, origin, frozen))
        return len(self._spaces) - 1

    def _find(self, s: int) -> int:
        while self._spaces[s].parent >= 0:
            s = self._spaces[s].parent
        return s

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            lo, hi = min(ra, rb), max(ra, rb)
            self._spaces[hi].parent = lo
            self._spaces[lo].frozen = self._spaces[lo].frozen or self._spaces[hi].frozen

    def _freeze(self, d: _Desc | None, why: str) -> None:
        if d is None:
            return
        for s in d.spaces:
            r = self._find(s)
            self._spaces[r].frozen = self._spaces[r].frozen or why

    def _size(self, s: int) -> int | None:
        return self._spaces[s].size

    def _fit(self, d: _Desc, channels: int) -> bool:
        """Check (and fill in an unknown input size) that ``d`` carries ``channels``."""
        sizes = [self._size(s) for s in d.spaces]
        unknown = [i for i, z in enumerate(sizes) if z is None]
        if len(unknown) == 1:
            rest = channels - sum(z for z in sizes if z is not None)
            if rest <= 0:
                return False
            self._spaces[d.spaces[unknown[0]]].size = rest
            return True
        return not unknown and sum(sizes) == channels

    def _walk(self) -> None:
        env: dict[fx.Node, _Desc | None] = {}
        calls: dict[str, int] = {}
        for n in self.gm.graph.nodes:
            if n.op == "call_module":
                calls[n.target] = calls.get(n.target, 0) + 1
        for n in self.gm.graph.nodes:
            ins = [env.get(a) for a in n.all_input_nodes]
            if n.op == "placeholder":
                env[n] = _Desc((self._new(None, "input", f"the model input {n.name}"),), 4)
            elif n.op == "output":
                for d in ins:
                    self._freeze(d, "the model output")
            elif n.op == "call_module":
                env[n] = self._module(n, str(n.target), ins, calls[n.target])
            elif n.op in ("call_function", "call_method"):
                env[n] = self._function(n, ins, env)
            else:  # get_attr: a constant tensor of unknown channel meaning
                env[n] = None

    def _unknown(self, ins, why: str) -> None:
        for d in ins:
            self._freeze(d, why)

    def _module(self, n: fx.Node, name: str, ins, calls: int) -> _Desc | None:
        m = self.modules[name]
        d = ins[0] if ins else None
        if isinstance(m, _PASS_MODULES):
            return d
        if isinstance(m, nn.PixelShuffle):
            return self._shuffle(d, m.upscale_factor, f"{name} (PixelShuffle)", ins)
        if isinstance(m, nn.Flatten):
            if d is not None and d.rank == 4 and m.start_dim == 1 and m.end_dim == -1:
                return _Desc(d.spaces, 2, True)
            self._unknown(ins, f"{name} (Flatten)")
            return None
        known = isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d))
        if not known or calls > 1 or d is None or len(ins) != 1:
            why = f"{name} ({type(m).__name__}{', called more than once' if calls > 1 else ''})"
            self._unknown(ins, why)
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                out = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
                return _Desc((self._new(out, name, why),), 4 if isinstance(m, nn.Conv2d) else 2)
            return None
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if not self._fit(d, m.num_features):
                self._unknown(ins, f"{name} (BatchNorm, unexpected channel count)")
                return None
            self._slots.append(_Slot(name, "through", d.spaces))
            return d
        if isinstance(m, nn.Conv2d):
            dw = m.groups > 1 and m.groups == m.in_channels == m.out_channels
            if not self._fit(d, m.in_channels) or d.rank != 4 or (m.groups > 1 and not dw):
                why = f"{describe(name, m)}: grouped conv" if m.groups > 1 else \
                    f"{describe(name, m)}: unexpected input"
                self._unknown(ins, why)
                return _Desc((self._new(m.out_channels, name, why),), 4)
            if dw:
                self._slots.append(_Slot(name, "through", d.spaces))
                return d
            self._slots.append(_Slot(name, "in", d.spaces))
            out = self._new(m.out_channels, name)
            self._slots.append(_Slot(name, "out", (out,)))
            return _Desc((out,), 4)
        # Linear: on a 2-D input; after flatten each channel is in_features/C features
        sizes = [self._size(s) for s in d.spaces]
        total = sum(z for z in sizes if z is not None)
        inner = m.in_features // total if d.flat and total and None not in sizes else 1
        ok = d.rank == 2 and None not in sizes and total * inner == m.in_features
        if ok:
            self._slots.append(_Slot(name, "in", d.spaces, inner))
        else:
            self._unknown(ins, f"{describe(name, m)}: input is not [N, features]")
        out = self._new(m.out_features, name)
        self._slots.append(_Slot(name, "out", (out,)))
        return _Desc((out,), 2)

    def _function(self, n: fx.Node, ins, env) -> _Desc | None:
        t = n.target
        what = t if isinstance(t, str) else getattr(t, "__name__", str(t))
        d = ins[0] if ins else None
        if t in _PASS_FUNCTIONS or (n.op == "call_method" and t in _PASS_METHODS):
            if len(ins) == 1:
                return d
        elif t in (torch.flatten, "flatten"):
            start = n.args[1] if len(n.args) > 1 else n.kwargs.get("start_dim", 0)
            end = n.args[2] if len(n.args) > 2 else n.kwargs.get("end_dim", -1)
            if d is not None and d.rank == 4 and start == 1 and end == -1:
                return _Desc(d.spaces, 2, True)
            if d is not None and d.rank == 2 and start == 1:
                return d
        elif t in (torch.mean, "mean", torch.sum, "sum") and d is not None and d.rank == 4 \
                and not d.flat:
            # over the spatial dims (MNASNet, ShuffleNet heads): the channels stay
            dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
            dims = [dims] if isinstance(dims, int) else list(dims or ())
            keep = n.args[2] if len(n.args) > 2 else n.kwargs.get("keepdim", False)
            if sorted(x % 4 for x in dims) == [2, 3]:
                return _Desc(d.spaces, 4 if keep else 2)
        elif t in (F.pixel_shuffle, torch.pixel_shuffle, "pixel_shuffle"):
            r = n.args[1] if len(n.args) > 1 else n.kwargs.get("upscale_factor")
            if isinstance(r, int) and len(ins) == 1:
                return self._shuffle(d, r, f"{n.name} (pixel_shuffle)", ins)
        elif t is torch.cat:
            dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
            seq = n.args[0] if isinstance(n.args[0], (list, tuple)) else ()
            parts = [env.get(a) if isinstance(a, fx.Node) else None for a in seq]
            if dim == 1 and parts and all(p is not None and p.rank == parts[0].rank
                                          and not p.flat for p in parts):
                return _Desc(tuple(s for p in parts for s in p.spaces), parts[0].rank)
        elif t in _BINARY:
            tensors = [a for a in n.args if isinstance(a, fx.Node)]
            if len(tensors) == 1 and d is not None:
                return d  # with a scalar
            pair = [env.get(a) for a in tensors]
            if len(tensors) == 2 and None not in pair:
                a, b = pair
                sa = [self._size(s) for s in a.spaces]
                sb = [self._size(s) for s in b.spaces]
                if a.rank == b.rank and a.flat == b.flat and sa == sb and None not in sa:
                    for x, y in zip(a.spaces, b.spaces, strict=True):
                        self._union_expands(x, y)
                        self._union(x, y)
                    return a
        self._unknown(ins, f"{n.name} ({what})")
        return None

    def _shuffle(self, d: _Desc | None, r: int, why: str, ins) -> _Desc | None:
        """PixelShuffle(r): a new space of C / r² channels that the input's space (with every
        space tied to it) expands by r²; anything else (several spaces, an unknown size, a
        second shuffle of the same channels) freezes."""
        s = d.spaces[0] if d is not None and len(d.spaces) == 1 else None
        size = self._size(s) if s is not None else None
        root = self._find(s) if s is not None else None
        if (s is None or d.rank != 4 or d.flat or size is None or size % (r * r)
                or self._spaces[root].expands is not None):
            self._unknown(ins, why)
            return None
        out = self._new(size // (r * r), why)
        self._spaces[root].expands = (out, r * r)
        return _Desc((out,), 4)

    def _union_expands(self, a: int, b: int) -> None:
        """A union after a shuffle would merge an expanded space with another: freeze both."""
        ra, rb = self._find(a), self._find(b)
        if ra != rb and (self._spaces[ra].expands or self._spaces[rb].expands):
            why = "channels tied to a PixelShuffle's input after the shuffle"
            for x in (ra, rb):
                self._spaces[x].frozen = self._spaces[x].frozen or why
                if self._spaces[x].expands:
                    t = self._find(self._spaces[x].expands[0])
                    self._spaces[t].frozen = self._spaces[t].frozen or why

    def _resolve(self, s: int) -> tuple[int, int, str | None]:
        """(the root whose group holds space ``s``'s channels, channels of ``s`` per channel
        of that group, a freeze reason met on the way)."""
        r, k, frozen = self._find(s), 1, None
        while self._spaces[r].expands is not None:
            frozen = frozen or self._spaces[r].frozen
            t, f = self._spaces[r].expands
            r, k = self._find(t), k * f
        return r, k, frozen

    # --- groups -----------------------------------------------------------------------------
    def _build_groups(self) -> tuple[list[Group], dict[int, Group]]:
        by_root: dict[int, Group] = {}
        space_group: dict[int, Group] = {}
        factor: dict[int, int] = {}
        for s in range(len(self._spaces)):
            r, factor[s], frozen = self._resolve(s)
            if r not in by_root:
                root = self._spaces[r]
                by_root[r] = Group(len(by_root), root.size or 0, frozen=root.frozen)
            g = space_group[s] = by_root[r]
            g.frozen = g.frozen or frozen
        for slot in self._slots:
            off = 0
            for s in slot.spaces:
                g, k = space_group[s], factor[s]
                if off % k:  # an expanded space at an offset its blocks do not align with
                    g.frozen = g.frozen or (f"{slot.layer}, whose input holds them at "
                                            f"offset {off} (not a multiple of a PixelShuffle's "
                                            f"{k}),")
                g.members.append(Member(slot.layer, slot.role, off // k, slot.inner * k))
                off += self._size(s)
        return list(by_root.values()), space_group

    def out_group(self, layer: str) -> Group:
        """The group of ``layer``'s output channels (filter pruning)."""
        m = self._layer(layer)
        for slot in self._slots:
            if slot.layer == layer and slot.role == "out":
                g = self._space_group[slot.spaces[0]]
                if g.frozen:
                    raise PruningError(f"{describe(layer, m)}: filter pruning would change "
                                       f"channels that {g.frozen} needs unchanged; prune "
                                       f"another layer, or use a mask scheme here")
                return g
        if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels:
            raise PruningError(f"{describe(layer, m)}: a depthwise conv's filters follow its "
                               f"input channels; filter-prune the layer that produces them")
        raise PruningError(f"{describe(layer, m)}: filter pruning needs a Conv2d (groups=1) "
                           f"or Linear called once by the model")

    def in_groups(self, layer: str) -> list[Group]:
        """The groups feeding ``layer``'s input channels (channel pruning), in order."""
        m = self._layer(layer)
        for slot in self._slots:
            if slot.layer == layer and slot.role == "in":
                groups: list[Group] = []
                for s in slot.spaces:
                    g = self._space_group[s]
                    if g.frozen:
                        raise PruningError(f"{describe(layer, m)}: channel pruning would change "
                                           f"channels that {g.frozen} needs unchanged")
                    if g not in groups:
                        groups.append(g)
                return groups
        frozen = [sp.frozen for sp in self._spaces if sp.frozen and layer in sp.frozen]
        why = f" ({frozen[0]})" if frozen else ""
        raise PruningError(f"{describe(layer, m)}: channel pruning needs a Conv2d (groups=1) "
                           f"or Linear whose input channels the graph can follow{why}")

    def _layer(self, layer: str) -> nn.Module:
        if layer not in self.modules:
            raise PruningError(f"layer {layer}: no such module in {type(self.model).__name__}")
        return self.modules[layer]

    # --- decisions → per-layer indices ------------------------------------------------------
    def removed_positions(self, pruned: dict[int, list[int]]) -> dict[tuple[str, str], list[int]]:
        """{group id: removed channel indices} → {(layer, role): removed indices in that
        layer's dimension} (an input after flatten removes ``inner`` features per channel)."""
        out: dict[tuple[str, str], list[int]] = {}
        for g in self.groups:
            rm = pruned.get(g.id)
            if not rm:
                continue
            for mem in g.members:
                pos = out.setdefault((mem.layer, mem.role), [])
                for c in rm:
                    start = (mem.offset + c) * mem.inner
                    pos.extend(range(start, start + mem.inner))
        return {k: sorted(v) for k, v in out.items()}

    def __repr__(self) -> str:
        free = [g for g in self.groups if not g.frozen and g.members]
        return (f"DependencyGraph({type(self.model).__name__}: {len(free)} prunable groups, "
                f"{sum(1 for g in self.groups if g.frozen)} frozen)")
