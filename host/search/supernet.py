"""Weight-sharing accuracy for phase 2 (``--evaluator supernet``), after JCW (arXiv 2110.08013).

One copy of the phase-1 model, the supernet, is trained with a sampled sub-network per step:
the candidate's channel cuts and weight masks applied on the fly as zeros (``subnet_masks``:
the channels ``space.realize`` would cut, ranked the same way on the current weights, and the
masks it would build on what is left), the forward pass run with the masked weights
(``torch.func.functional_call``), so every step trains the weights its sub-network keeps.
First ``--supernet-epochs`` by the sandwich rule (the whole model, the genes' floor, random
jcw sub-networks in turn), then each round (each generation for jcw, else each batch) a few
``--supernet-steps`` on sub-networks drawn from that round's candidates, as JCW does.

A candidate is scored without fine-tuning: realized from the supernet's weights (the same
pruning path as every candidate), BatchNorm statistics recomputed on training images, validated.
``--evaluator finetune`` (one-shot pruning + a short fine-tune per candidate, finetune.py)
stays the default. Every training leaves a checkpoint and a journal record (``supernet`` and
``supernet-roundN`` phases), so ``--resume`` loads the state a round left instead of training
it again.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import replace

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from ..models.data import Dataset, TensorData, batches
from ..models.train import evaluate, make_optimizer, recalibrate_bn, steps_for, task_loss
from ..pruning import SCHEMES, PruningPlan
from .space import Candidate, SearchSpace
from .strategies.jcw import JcwBounds, JcwEncoding

RECAL_SAMPLES = 512  # training images BatchNorm statistics are recomputed on, per candidate
ROUND_LR = 0.2  # a round's learning rate, of --finetune-lr (the first training's)


def subnet_masks(space: SearchSpace, model: nn.Module, cand: Candidate) -> dict[str, torch.Tensor]:
    """Parameter path → bool mask (True: kept), in ``model``'s own shapes, such that ``model``
    with these zeros computes what ``space.realize(model, cand).model`` does: the structural
    rules zero the channels realize would cut (the producers' filters and biases, the
    consumers' input slices: ``PruningPlan.zero_masks``), and each mask rule is built on the
    weights those cuts leave, exactly as realize builds it on the narrowed layer. Filter types
    other than keep change the layers themselves: not a sub-network (PruningError-free
    ValueError)."""
    if any(c.ftype != "keep" for c in cand.choices):
        raise ValueError(f"{cand.key()}: filter types other than keep are not sub-networks of "
                         f"the supernet")
    plan, first = space.plan(cand), space.structure(cand)
    if first is None:  # one plan: its structural rules cut, its mask rules mask
        struct = {n: r for n, r in plan.layers.items() if SCHEMES[r.scheme].structural}
        mask_rules = {n: r for n, r in plan.layers.items() if not SCHEMES[r.scheme].structural}
    else:
        struct, mask_rules = first.layers, plan.layers
    masks = (PruningPlan(struct, copy.deepcopy(space.config)).zero_masks(model)
             if struct else {})
    mods = dict(model.named_modules())
    for name, rule in mask_rules.items():
        m = mods[name]
        path = f"{name}.weight"
        w = m.weight.detach()
        scheme = SCHEMES[rule.scheme]
        p = scheme.params(name, m, rule.params, space.config)
        cut = masks.get(path)
        if cut is None:
            masks[path] = scheme.mask(w, rule.rate, p)
            continue
        # the narrowed layer realize masks: the rows and columns the cuts keep
        rows = cut.reshape(cut.shape[0], -1).any(1).nonzero().flatten()
        cols = cut.transpose(0, 1).reshape(cut.shape[1], -1).any(1).nonzero().flatten()
        narrow = w.index_select(0, rows).index_select(1, cols)
        small = _narrowed_module(m, narrow)
        scheme.check(name, small, rule.rate, p)
        keep = scheme.mask(narrow, rule.rate, p)
        full = torch.zeros_like(cut)
        full[rows.unsqueeze(1), cols.unsqueeze(0)] = keep
        masks[path] = full
    return masks


def _narrowed_module(m: nn.Module, w: torch.Tensor) -> nn.Module:
    """A stand-in of ``m`` with weight ``w`` (for a scheme's shape check)."""
    if isinstance(m, nn.Conv2d):
        groups = m.groups if m.groups == 1 else w.shape[0]
        out = nn.Conv2d(w.shape[1] * groups, w.shape[0], m.kernel_size, m.stride, m.padding,
                        m.dilation, groups, bias=False, device="meta")
    else:
        out = nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
    return out


def _subset(data: Dataset, n: int) -> Dataset:
    """``data`` with its first ``n`` training images (BatchNorm recalibration)."""
    tr = data.train
    if len(tr) <= n:
        return data
    if isinstance(tr, TensorData):
        return replace(data, train=TensorData(tr.x[:n], tr.y[:n], tr.prepare))
    return replace(data, train=torch.utils.data.Subset(tr, range(n)))


class Supernet:
    """The shared weights (a copy of ``base``) and how they are trained and scored; ``cost``
    keeps the seconds spent (training, rounds, scoring) for the report."""

    def __init__(self, space: SearchSpace, base: nn.Module, data: Dataset, cfg, train_cfg,
                 gate=None, bounds: JcwBounds | None = None):
        self.space, self.data, self.cfg, self.train_cfg = space, data, cfg, train_cfg
        self.gate = gate if gate is not None else contextlib.nullcontext()
        self.model = copy.deepcopy(base).cpu()
        self.enc = JcwEncoding(space, bounds)
        self.recal = _subset(data, RECAL_SAMPLES)
        self.cost = {"train_s": 0.0, "train_steps": 0, "rounds": 0, "round_s": 0.0,
                     "round_steps": 0, "scored": 0, "score_s": 0.0}

    # --- sub-networks -----------------------------------------------------------------------
    def sample(self, rng: np.random.Generator, step: int) -> Candidate:
        """The sandwich rule: the whole model, the genes' floor, then random gene vectors."""
        if step % 4 == 0:
            return self.space.dense()
        if step % 4 == 1:
            return self.enc.decode(self.enc.xl)
        return self.enc.decode(rng.integers(self.enc.xl, self.enc.xu + 1))

    def forward(self, x: torch.Tensor, cand: Candidate) -> torch.Tensor:
        """``cand``'s sub-network on ``x``, the masks applied on the fly (gradients reach the
        weights it keeps only)."""
        masks = subnet_masks(self.space, self.model, cand)
        params = dict(self.model.named_parameters())
        over = {k: params[k] * m.to(params[k].dtype) for k, m in masks.items()}
        return functional_call(self.model, over, (x,))

    def _train(self, steps: int, pick, seed: int, lr: float) -> None:
        dev = torch.device(self.cfg.train_device)
        self.model.to(dev).train()
        opt = make_optimizer(self.model.parameters(), self.train_cfg, lr)
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        step = 0
        while step < steps:
            for x, y in batches(self.data.train, self.train_cfg.batch_size, g):
                for group in opt.param_groups:
                    group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / steps))
                cand = pick(step)
                with self.gate:
                    x, y = x.to(dev), y.to(dev)
                    loss = task_loss(self.data, self.forward(x, cand), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                step += 1
                if step >= steps:
                    break
        self.model.cpu().eval()

    def train_first(self, epochs: float, seed: int) -> None:
        """The first training: ``epochs`` of sandwich-sampled sub-networks."""
        t0 = time.perf_counter()
        steps = steps_for(self.data, epochs, self.train_cfg.batch_size)
        rng = np.random.default_rng([seed, 7])
        if steps:
            self._train(steps, lambda i: self.sample(rng, i), seed, self.cfg.finetune_lr)
        self.cost["train_s"] += time.perf_counter() - t0
        self.cost["train_steps"] += steps

    def train_round(self, r: int, pool: list[Candidate], steps: int, seed: int) -> None:
        """A round's retraining: ``steps`` steps, each on a sub-network drawn from ``pool``
        (the round's candidates that are sub-networks), else sandwich-sampled."""
        t0 = time.perf_counter()
        pool = [c for c in pool if all(ch.ftype == "keep" for ch in c.choices)]
        rng = np.random.default_rng([seed, 11, r])
        if pool:
            def pick(i: int) -> Candidate:
                return pool[int(rng.integers(len(pool)))]
        else:
            def pick(i: int) -> Candidate:
                return self.sample(rng, i)
        if steps:
            self._train(steps, pick, seed * 1009 + r, self.cfg.finetune_lr * ROUND_LR)
        self.cost["rounds"] += 1
        self.cost["round_s"] += time.perf_counter() - t0
        self.cost["round_steps"] += steps

    # --- scoring ----------------------------------------------------------------------------
    def score(self, cand: Candidate) -> tuple[float | None, str | None]:
        """``cand`` realized from the shared weights, BatchNorm recalibrated, validated; no
        fine-tuning. (accuracy, None) or (None, the error)."""
        t0 = time.perf_counter()
        try:
            pruned = self.space.realize(self.model, cand)
            recalibrate_bn(pruned.model, self.recal, self.cfg.train_device, gate=self.gate)
            return evaluate(pruned.model, self.data, self.cfg.train_device, gate=self.gate), None
        except (RuntimeError, ValueError) as e:
            return None, f"supernet: {e}"
        finally:
            self.cost["scored"] += 1
            self.cost["score_s"] += time.perf_counter() - t0

    def per_candidate_s(self) -> float:
        """Seconds of this process's training and scoring per scored candidate."""
        c = self.cost
        return (c["train_s"] + c["round_s"] + c["score_s"]) / max(1, c["scored"])


class SearchSupernet:
    """The supernet of a running search (phases.py's RunState): its first training and each
    round checkpointed and journaled, loaded back instead of trained again on ``--resume``.
    A round's checkpoint alternates between two files, so the previous round's stays whole
    until the new one is journaled."""

    def __init__(self, search):
        self.search = search
        cfg = search.cfg
        self.net = Supernet(search.space, search.base, search.prep.data, cfg, search.train_cfg,
                            search.gate(), cfg.bounds())
        self.pending: str | None = None  # a checkpoint to load before the weights are used
        self.round = 0
        done = search.journal.phase("supernet")
        if done is not None:
            self.pending = done["checkpoint"]
            self.net.cost["train_s"] = float(done.get("seconds", 0.0))
        else:
            search.ui.phase("phase 2", f"training the supernet: {cfg.supernet_epochs:g} "
                                       f"epoch(s) of sampled sub-networks")
            self.net.train_first(cfg.supernet_epochs, cfg.seed + 5)
            ck = search.save(self.net.model.state_dict(), "supernet.pt")
            search.journal.append({"type": "phase", "phase": "supernet", "checkpoint": ck,
                                   "seconds": self.net.cost["train_s"],
                                   "steps": self.net.cost["train_steps"]})
        self.rounds = {r["phase"]: r for r in search.journal.records()
                       if r.get("type") == "phase"
                       and str(r.get("phase", "")).startswith("supernet-round")}
        for r in self.rounds.values():
            self.net.cost["rounds"] += 1
            self.net.cost["round_s"] += float(r.get("seconds", 0.0))
            self.net.cost["round_steps"] += int(r.get("steps", 0))

    def _load(self) -> None:
        if self.pending is not None:
            state = torch.load(self.search.run_dir / self.pending, weights_only=True)
            self.net.model.load_state_dict(state)
            self.pending = None

    def next_round(self, pool: list[Candidate]) -> None:
        """A new round (a generation, or a batch): retrain on ``pool``'s sub-networks, or load
        what this round left before a stop."""
        self.round += 1
        name = f"supernet-round{self.round}"
        done = self.rounds.get(name)
        if done is not None:
            self.pending = done["checkpoint"]
            return
        self._load()
        cfg, search = self.search.cfg, self.search
        s0 = self.net.cost["round_s"]
        self.net.train_round(self.round, pool, cfg.supernet_steps, cfg.seed)
        ck = search.save(self.net.model.state_dict(), f"supernet-round-{self.round % 2}.pt")
        search.journal.append({"type": "phase", "phase": name, "checkpoint": ck,
                               "seconds": self.net.cost["round_s"] - s0,
                               "steps": cfg.supernet_steps, "pool": len(pool)})

    def score(self, cand: Candidate) -> tuple[float | None, str | None]:
        self._load()
        return self.net.score(cand)

    def cost(self, scored_s: float, scored: int) -> dict:
        """What the estimator cost: the first training, the rounds, and per candidate
        (``scored_s`` over ``scored``: the journal's scoring times, resumed runs included)."""
        c = self.net.cost
        per = (c["train_s"] + c["round_s"] + scored_s) / max(1, scored)
        return {"train_s": c["train_s"], "train_steps": c["train_steps"],
                "rounds": c["rounds"], "round_s": c["round_s"],
                "round_steps": c["round_steps"], "scored": scored, "score_s": scored_s,
                "per_candidate_s": per}
