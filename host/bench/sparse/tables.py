"""The sparse benchmark's printed tables: the solved mappings per model, sparse against dense
per thread count, the other engines on pruned models, the NPAS-rate headlines, and the
unstructured 3x3 comparison.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rich.markup import escape
from rich.table import Table

from host.console import out

from ..common import EngineRun, gflops
from .mappings import MAPPINGS, NEEDED_SPEEDUP
from .work import GLUE_OPS, ModelResult, Variant, fastest, speedup, unstructured_summary

# ---------------------------------------------------------------- printing

def _f(v: float | None, fmt: str, suffix: str = "") -> str:
    return "–" if v is None else format(v, fmt) + suffix


def print_plans(model: str, variants: Sequence[Variant], dense_compile_s: float | None) -> None:
    t = Table(title=f"{model}: mappings, rates solved for the weights compression over all "
                    f"Conv2d + Linear layers (dense bundle compiled in {dense_compile_s} s)")
    for col in ("mapping", "target", "rate R", "weights ×", "conv ×", "linear ×", "FLOPs ×",
                "sparse kernels", "compile s"):
        t.add_column(col, justify="left" if col == "mapping" else "right", no_wrap=True)
    t.add_column("note")
    for v in variants:
        t.add_row(v.mapping, v.rate_text, _f(v.rate, ".4f"), _f(v.compression, ".2f"),
                  _f(v.conv_compression, ".2f"), _f(v.linear_compression, ".2f"),
                  _f(v.flop_reduction, ".2f"),
                  f"{v.sparse_layers}/{v.masked_layers}" if v.masked_layers else "–",
                  _f(v.compile_s, ".1f"), escape(v.note))
    out.print(t)
    for m in MAPPINGS[model]:
        out.print(f"  [bold]{escape(m.name)}[/bold]: {escape(', '.join(map(str, m.rules)))} — "
                  f"{escape(m.why)}")


def headline(variants: Sequence[Variant], by_label: Mapping[str, EngineRun]) -> Variant | None:
    """The NPAS-rate variant with the fastest sparse bundle (MobileNet-V2 has two); one with a
    wrong output (timed with --time-wrong) only when none is right."""
    timed = [(by_label[v.label].status != "ok", by_label[v.label].median_ms, v)
             for v in variants if v.npas and v.label in by_label
             and by_label[v.label].median_ms is not None]
    return min(timed, key=lambda t: t[:2])[2] if timed else None


@dataclass
class ResultRow:
    variant: Variant
    dense_ms: float | None
    sparse_ms: float | None
    engine: str | None
    engine_ms: float | None
    rel_err: float | None
    status: str
    detail: str

    @property
    def vs_dense(self) -> float | None:
        return speedup(self.dense_ms, self.sparse_ms)

    @property
    def vs_engine(self) -> float | None:
        return speedup(self.engine_ms, self.sparse_ms)

    @property
    def gflops(self) -> float | None:
        return gflops(self.variant.work_flops, self.sparse_ms)


def result_rows(res: ModelResult, threads: int, engines: Sequence[str]) -> list[ResultRow]:
    by = {r.engine: r for r in res.runs if r.threads == threads}
    dense = by.get("ours dense")
    dense_ms = dense.median_ms if dense and dense.status == "ok" else None
    rows = []
    for v in res.variants:
        cands = [by[e] for e in engines if e in by]
        cands += [by[k] for e in engines
                  if (k := f"{e} on {v.mapping} {v.target:g}x") in by]
        best = fastest(cands)
        name = None
        if best is not None:
            name = best.engine.split(" on ")[0] + (" (pruned)" if " on " in best.engine else "")
        s = by.get(v.label)
        ok = s is not None and s.status == "ok"
        rows.append(ResultRow(v, dense_ms, s.median_ms if s else None, name,
                              best.median_ms if best else None, s.rel_err if s else None,
                              s.status if s else v.note.split(":")[0] or "skipped",
                              v.note or (s.detail if s and not ok else "")))
    return rows


def print_results(results: Sequence[ModelResult], threads: int,
                  args: argparse.Namespace) -> None:
    t = Table(title=f"Sparse vs dense, {threads} thread(s), 1×3×{args.input_size}×"
                    f"{args.input_size}: medians of {args.runs} interleaved samples; load "
                    f"average {os.getloadavg()[0]:.2f} at the end", caption=(
        "weights ×: all Conv2d + Linear weights / non-zero ones. FLOPs ×: conv + linear "
        "multiply-adds, dense / non-zero. dense, sparse: our bundles. "
        + ("Fastest engine: of " + ", ".join(args.engines) + " on the dense model"
           + (" and on the pruned one (\"(pruned)\"), NPAS rows" if args.engines_on_pruned
              else "") + ". " if args.engines else "")
        + "× dense, × engine: speed-up of our sparse bundle over them. GFLOP/s: "
        "non-zero work / sparse median. rel err: sparse vs PyTorch's pruned model. ★: the "
        "model's headline mapping at the NPAS rate."))
    for col in ("model", "mapping", "rate", "weights ×", "FLOPs ×", "dense ms", "sparse ms",
                "fastest engine", "engine ms", "× dense", "× engine", "GFLOP/s", "rel err"):
        t.add_column(col, justify="left" if col in ("model", "mapping", "fastest engine")
                     else "right", no_wrap=True)
    t.add_column("note")
    for res in results:
        by = {r.engine: r for r in res.runs if r.threads == threads}
        head = headline(res.variants, by)
        for r in result_rows(res, threads, args.engines):
            v = r.variant
            star = " ★" if v is head else ""
            text = r.detail if r.detail.startswith(r.status) else f"{r.status}: {r.detail}"
            if r.status == "wrong" and r.sparse_ms is not None:
                text = "WRONG output (see rel err), timed all the same (--time-wrong)"
            note = escape(r.detail) if r.status in ("ok", "unreachable") else \
                f"[red]{escape(text)}[/red]"
            t.add_row(res.model, escape(v.mapping) + star, v.rate_text,
                      _f(v.compression, ".2f"), _f(v.flop_reduction, ".2f"),
                      _f(r.dense_ms, ".2f"), _f(r.sparse_ms, ".2f"), r.engine or "–",
                      _f(r.engine_ms, ".2f"), _f(r.vs_dense, ".2f", "×"),
                      _f(r.vs_engine, ".2f", "×"), _f(r.gflops, ".1f"),
                      _f(r.rel_err, ".1e"), note)
    out.print(t)
    for res in results:
        for r in res.runs:
            if r.threads == threads and r.status != "ok" and not r.engine.startswith("ours "):
                out.print(f"  [yellow]{escape(res.model)}, {escape(r.engine)}:[/yellow] "
                          f"{escape(r.status)}: {escape(r.detail)}")


def print_engines_on_pruned(results: Sequence[ModelResult], threads: int,
                            args: argparse.Namespace) -> None:
    """The other engines on the dense model and on the pruned ones: zeros cost them the same."""
    t = Table(title=f"The other engines on the dense and the pruned models, {threads} "
                    f"thread(s) (pruned / dense ≈ 1: they run the zeros)")
    for col in ("model", "engine", "pruned with", "dense ms", "pruned ms", "pruned / dense"):
        t.add_column(col, justify="left" if col in ("model", "engine", "pruned with")
                     else "right")
    for res in results:
        by = {r.engine: r for r in res.runs if r.threads == threads}
        for v in res.variants:
            for e in args.engines:
                p = by.get(f"{e} on {v.mapping} {v.target:g}x")
                if p is None:
                    continue
                d = by.get(e)
                dm = d.median_ms if d and d.status == "ok" else None
                pm = p.median_ms if p.status == "ok" else None
                t.add_row(res.model, e, f"{escape(v.mapping)} {v.target:g}x", _f(dm, ".2f"),
                          _f(pm, ".2f") if pm is not None else f"{p.status}",
                          _f(speedup(pm, dm), ".2f"))
    if t.row_count:
        out.print(t)


def print_headlines(results: Sequence[ModelResult], args: argparse.Namespace) -> None:
    t = Table(title="At the NPAS rates: our sparse bundle's speed-up (issue 4 asks, at 1 "
                    "thread, for at least the 'needed' ratio over the fastest dense engine "
                    "and as much over ours dense)")
    for col in ("model", "threads", "mapping", "weights ×", "ours sparse ms", "× ours dense",
                "× fastest engine", "needed"):
        t.add_column(col, justify="left" if col in ("model", "mapping") else "right")
    for res in results:
        for threads in args.threads:
            by = {r.engine: r for r in res.runs if r.threads == threads}
            head = headline(res.variants, by)
            if head is None:
                t.add_row(res.model, str(threads), "–", "–", "–", "–", "–", "–")
                continue
            r = next(x for x in result_rows(res, threads, args.engines) if x.variant is head)
            need = NEEDED_SPEEDUP.get(res.model) if threads == 1 else None
            wrong = " [red](WRONG output)[/red]" if r.status != "ok" else ""
            t.add_row(res.model, str(threads), escape(head.mapping) + wrong,
                      _f(head.compression, ".2f"), _f(r.sparse_ms, ".2f"),
                      _f(r.vs_dense, ".2f", "×"),
                      f"{_f(r.vs_engine, '.2f', '×')} ({r.engine or '–'})",
                      _f(need, ".1f", "×"))
    out.print(t)


def print_unstructured(u: dict) -> None:
    got = ", ".join(f"{p}: {n}" for p, n in u["sparse_layers"].items())
    t = Table(title=f"ResNet-18's 16 3x3 convs at {u['rate']:.0%} unstructured sparsity vs "
                    f"dense (sparse kernels, by policy: {got}): per-layer times, all bundles "
                    f"interleaved, medians over runs", caption=(
        "policy: the sparse pass's; auto keeps a conv dense where its cost model says the "
        "dense kernel (Winograd) is faster, always runs every conv sparse. 3x3: sum of the "
        "3x3 conv steps in one run; + glue: with the padding and layout-change steps ("
        + ", ".join(GLUE_OPS) + ") of each bundle, which sparse layers bring. ratio: "
        "sparse / dense, below 1 is faster. Multiply-adds of these convs ×2: "
        f"{u['conv_flops_dense'] / 1e9:.2f} → {u['conv_flops_sparse'] / 1e9:.2f} G."))
    for col in ("threads", "policy", "dense 3x3 ms", "sparse 3x3 ms", "ratio", "dense + glue",
                "sparse + glue", "ratio", "model dense", "model sparse", "ratio", "rel err"):
        t.add_column(col, justify="right")
    t.add_column("note")
    for threads, res in u.get("threads", {}).items():
        for policy in u["sparse_layers"]:
            s = unstructured_summary(res, policy)
            t.add_row(str(threads), policy, *(_f(s[k], ".2f") for k in (
                "dense_conv_ms", "unstructured_conv_ms", "conv_ratio", "dense_conv_glue_ms",
                "unstructured_conv_glue_ms", "conv_glue_ratio", "dense_total_ms",
                "unstructured_total_ms", "total_ratio")), _f(res.get("rel_err"), ".1e"),
                escape(res.get("error", "")))
    out.print(t)
