"""NPAS's RL controller: an LSTM policy that writes a candidate decision by decision.

For each searched layer in order it takes three decisions — filter type, compression ratio,
scheme — each a categorical over that decision's vocabulary with the choices the space does not
offer (given the earlier decisions for the layer) masked out. The LSTM's input at each step is
the layer's embedding, the decision kind's, and the previous decision's, so later layers see
what earlier ones chose. Trained by policy gradient (REINFORCE) with a baseline: the advantage
(R - b)/σ, b a moving average of the rewards and σ their running standard deviation (rewards
are accuracies that differ in the second decimal; unscaled, the policy would barely move), in
PPO's clipped form so that one update cannot move a candidate's probability by more than 20%,
minus λ·entropy. The heads start at zero (uniform over the valid choices) except for one prior:
a layer keeps its filter type 3 times as often as it takes each cheaper one.

With precision in the space (``--precisions fp32,int8``) each layer takes a fourth decision,
its precision, after the scheme, masked to what the layer offers for the filter type and scheme
just chosen (int8 only where the quantization pass runs it in int8). A decision of its own
rather than folded into the scheme head: precision is orthogonal to the scheme (dense, block
or narrowed layers can each be int8), one head learns "int8 pays here" for every scheme at once
where a folded vocabulary would learn it once per scheme, and without int8 in the space the
controller is the three-decision one, unchanged (old searches replay bit for bit).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ...filters import FILTER_TYPES
from ...space import SCHEME_ORDER, Candidate, LayerChoice, SearchSpace

CLIP = 0.2
PRECISION_ORDER = ("fp32", "int8")


class Controller(nn.Module):
    def __init__(self, space: SearchSpace, seed: int = 0, hidden: int = 64, lr: float = 0.02,
                 entropy: float = 0.005, baseline_decay: float = 0.7):
        super().__init__()
        self.space = space
        nl, nf, nr, ns = len(space.layers), len(FILTER_TYPES), len(space.ratios), \
            len(SCHEME_ORDER)
        self.kinds = 4 if space.int8 else 3
        npr = len(PRECISION_ORDER)
        self.sizes = (nf, nr, ns, npr)[:self.kinds]
        ft = torch.zeros(nl, nf, dtype=torch.bool)
        ra = torch.zeros(nl, nf, nr, dtype=torch.bool)
        sc = torch.zeros(nl, nf, nr, ns, dtype=torch.bool)
        for li, ls in enumerate(space.layers):
            for f, per in ls.options.items():
                fi = FILTER_TYPES.index(f)
                ft[li, fi] = True
                for r, schemes in per.items():
                    ri = space.ratios.index(r)
                    ra[li, fi, ri] = True
                    for s in schemes:
                        sc[li, fi, ri, SCHEME_ORDER.index(s)] = True
        pr = torch.zeros(nl, nf, ns, npr, dtype=torch.bool)
        for li, ls in enumerate(space.layers):
            for f, per in ls.options.items():
                for s in {s for ss in per.values() for s in ss}:
                    for p in ls.precisions(f, s):
                        pr[li, FILTER_TYPES.index(f), SCHEME_ORDER.index(s),
                           PRECISION_ORDER.index(p)] = True
        self.register_buffer("ft_mask", ft)
        self.register_buffer("ratio_mask", ra)
        self.register_buffer("scheme_mask", sc)
        self.register_buffer("precision_mask", pr)
        extra = npr if self.kinds == 4 else 0
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.layer_emb = nn.Embedding(nl, 16)
            self.kind_emb = nn.Embedding(self.kinds, 8)
            self.act_emb = nn.Embedding(1 + nf + nr + ns + extra, 16)  # 0: start
            self.cell = nn.LSTMCell(40, hidden)
            self.heads = nn.ModuleList(nn.Linear(hidden, n) for n in self.sizes)
        for h in self.heads:
            nn.init.zeros_(h.weight)
            nn.init.zeros_(h.bias)
        with torch.no_grad():  # the prior: keep a layer's filter type 3:1:1 (0.6 of the time)
            self.heads[0].bias[FILTER_TYPES.index("keep")] = math.log(3.0)
        self.offsets = (1, 1 + nf, 1 + nf + nr, 1 + nf + nr + ns)[:self.kinds]
        self.hidden = hidden
        self.opt = torch.optim.Adam(self.parameters(), lr=lr)
        self.entropy_weight = entropy
        self.baseline_decay = baseline_decay
        self.baseline: float | None = None
        self._n = 0
        self._mean = 0.0
        self._m2 = 0.0
        self.updates = 0

    # --- candidates <-> actions -------------------------------------------------------------
    def actions(self, cands: list[Candidate]) -> torch.Tensor:
        return torch.tensor([[[FILTER_TYPES.index(c.ftype), self.space.ratios.index(c.ratio),
                               SCHEME_ORDER.index(c.scheme),
                               PRECISION_ORDER.index(c.precision)][:self.kinds]
                              for c in cand.choices]
                             for cand in cands], dtype=torch.long)

    def candidates(self, actions: torch.Tensor) -> list[Candidate]:
        r = self.space.ratios
        return [Candidate(tuple(LayerChoice(FILTER_TYPES[a[0]], SCHEME_ORDER[a[2]], r[a[1]],
                                            precision=PRECISION_ORDER[a[3]] if len(a) > 3
                                            else "fp32")
                                for a in row.tolist())) for row in actions]

    # --- the policy ---------------------------------------------------------------------------
    def _run(self, batch: int, actions: torch.Tensor | None = None,
             generator: torch.Generator | None = None):
        nl = len(self.space.layers)
        h = torch.zeros(batch, self.hidden)
        c = torch.zeros(batch, self.hidden)
        prev = torch.zeros(batch, dtype=torch.long)
        taken = torch.zeros(batch, nl, self.kinds, dtype=torch.long)
        logp = torch.zeros(batch)
        ent = torch.zeros(batch)
        rows = torch.arange(batch)
        for li in range(nl):
            lemb = self.layer_emb.weight[li].expand(batch, -1)
            for k in range(self.kinds):
                x = torch.cat([lemb, self.kind_emb.weight[k].expand(batch, -1),
                               self.act_emb(prev)], 1)
                h, c = self.cell(x, (h, c))
                logits = self.heads[k](h)
                if k == 0:
                    mask = self.ft_mask[li].expand(batch, -1)
                elif k == 1:
                    mask = self.ratio_mask[li][taken[:, li, 0]]
                elif k == 2:
                    mask = self.scheme_mask[li][taken[:, li, 0], taken[:, li, 1]]
                else:
                    mask = self.precision_mask[li][taken[:, li, 0], taken[:, li, 2]]
                logits = logits.masked_fill(~mask, -math.inf)
                lp = torch.log_softmax(logits, 1)
                if actions is None:
                    a = torch.multinomial(lp.exp().detach(), 1, generator=generator).squeeze(1)
                else:
                    a = actions[:, li, k]
                taken[:, li, k] = a
                logp = logp + lp[rows, a]
                # masked entries: p = 0 and log p = -inf; zero them before multiplying, or the
                # gradient of 0 · -inf poisons the update with NaNs
                safe = lp.masked_fill(~mask, 0.0)
                ent = ent - (safe.exp().masked_fill(~mask, 0.0) * safe).sum(1)
                prev = a + self.offsets[k]
        return taken, logp, ent

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> list[Candidate]:
        taken, _, _ = self._run(n, generator=generator)
        return self.candidates(taken)

    def log_prob(self, cands: list[Candidate]) -> torch.Tensor:
        _, logp, _ = self._run(len(cands), actions=self.actions(cands))
        return logp

    def update(self, cands: list[Candidate], rewards: list[float], steps: int = 2) -> float:
        """One REINFORCE update on evaluated candidates; returns the loss."""
        if not cands:
            return 0.0
        r = torch.tensor(rewards, dtype=torch.float32)
        for v in rewards:  # running variance (Welford) of every reward seen
            self._n += 1
            d = v - self._mean
            self._mean += d / self._n
            self._m2 += d * (v - self._mean)
        if self.baseline is None:
            self.baseline = float(r.mean())
        std = math.sqrt(self._m2 / self._n) if self._n > 1 else 1.0
        adv = (r - self.baseline) / max(std, 1e-3)
        loss = self._step(cands, adv, steps)
        self.baseline = (self.baseline_decay * self.baseline
                         + (1 - self.baseline_decay) * float(r.mean()))
        self.updates += 1
        return loss

    def update_predicted(self, cands: list[Candidate], predicted: list[float]) -> float:
        """An update on the surrogate's predicted rewards for fresh samples (the baseline is
        the batch's own mean: these are many, cheap, and not measurements)."""
        r = torch.tensor(predicted, dtype=torch.float32)
        adv = (r - r.mean()) / r.std().clamp_min(1e-6)
        return self._step(cands, adv, 1)

    def _step(self, cands: list[Candidate], adv: torch.Tensor, steps: int) -> float:
        acts = self.actions(cands)
        with torch.no_grad():
            old = self._run(len(cands), actions=acts)[1]
        loss_v = 0.0
        for _ in range(steps):
            _, logp, ent = self._run(len(cands), actions=acts)
            # clipped surrogate (as in PPO): once a candidate's probability has moved by more
            # than CLIP relative to before this update, it stops pulling; plain REINFORCE drives
            # the log-probability of a below-baseline candidate towards -inf and drags the
            # rest of the policy with it
            ratio = (logp - old).exp()
            surrogate = torch.min(ratio * adv, ratio.clamp(1 - CLIP, 1 + CLIP) * adv)
            loss = -surrogate.mean() - self.entropy_weight * ent.mean()
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            loss_v = float(loss.detach())
        return loss_v
