"""The command-line side of pruning: `npas-host plan` (write a plan from rules, show its report)
and `--plan PLAN.json` for compile/profile (prune the loaded model before compiling; the
other compile options, such as --sparse, are in host/commands/args.py).

Rules read ``LAYERS=SCHEME:RATE[:key=value,...]``: LAYERS is a glob over module paths ('*' for
every layer); a glob skips the layers the scheme does not apply to and says which and why
(`plan` prints them, `--json` has them under "skipped"); an exact name must fit.
RATE is a fraction removed (0.8) or a compression ratio (5x). Later rules win.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
from pathlib import Path

from torch import nn

from .config import PruningConfig, PruningError, parse_rate
from .plan import LayerRule, PruningPlan, parse_precision_rule


def add_plan_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plan", type=Path,
                   help="prune the model with this plan (`npas-host plan`) before compiling")


def apply_plan_file(model: nn.Module, path: Path | None) -> tuple[nn.Module, dict[str, str]]:
    """The model pruned by the plan at ``path`` and its layers' mask schemes (for
    ``compile_model(schemes=...)``); the model itself and {} when no plan is given."""
    if path is None:
        return model, {}
    pruned = PruningPlan.load(path).apply(model)
    return pruned.model, pruned.schemes


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``plan`` to the subcommands in ``sub``."""
    add_plan_parser(sub)


def add_plan_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("plan", help="write a pruning plan and show what it does to a model")
    p.add_argument("model", help="torchvision name, module:factory, or a .pt2 export")
    p.add_argument("--rule", action="append", required=True, metavar="LAYERS=SCHEME:RATE",
                   help="e.g. 'layer*.conv1=pattern:5x', 'fc=block:0.75:rows=8', "
                        "'*=unstructured:0.5'; schemes: unstructured, block, block_punched, "
                        "connectivity, pattern, filter, channel. Repeatable; later rules win")
    p.add_argument("--precision", action="append", default=[], metavar="LAYERS=PRECISION",
                   help="per-layer precision for compile --plan, e.g. '*=int8', "
                        "'stem.0=fp32' (fp32, int8; repeatable, later rules win; default fp32)")
    p.add_argument("-o", "--output", type=Path, help="the plan JSON to write")
    p.add_argument("--vector-width", type=int, default=16,
                   help="filter/channel widths stay multiples of this (default 16)")
    p.add_argument("--patterns", type=int, default=8,
                   help="pattern set size per layer for pattern pruning (default 8)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def parse_rule(text: str) -> tuple[str, str, float, dict]:
    layers, eq, rest = text.partition("=")
    parts = rest.split(":")
    if not eq or len(parts) < 2 or not layers:
        raise PruningError(f"rule {text!r}: expected LAYERS=SCHEME:RATE[:key=value,...], "
                           f"e.g. 'layer1.*=pattern:0.8'")
    params = {}
    for kv in (x for p in parts[2:] for x in p.split(",") if x):
        k, _, v = kv.partition("=")
        try:
            params[k] = int(v)
        except ValueError:
            raise PruningError(f"rule {text!r}: parameter {kv!r} must be key=integer") from None
    return layers, parts[0], parse_rate(parts[1]), params


def build_plan(model: nn.Module, rules: list[str], cfg: PruningConfig,
               skipped: dict[str, dict[str, str]] | None = None) -> PruningPlan:
    """The plan the rules make. A glob's rule leaves out the layers its scheme does not fit:
    ``skipped`` (when given) gets, per rule text, each such layer and why."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    layers: dict[str, LayerRule] = {}
    for text in rules:
        pattern, scheme, rate, params = parse_rule(text)
        if any(c in pattern for c in "*?["):
            hits = fnmatch.filter(names, pattern)
            left: dict[str, str] = {}
            fit = PruningPlan.uniform(model, scheme, rate, cfg, params, only=hits,
                                      skipped=left).layers
            if not fit:
                why = "".join(f"; {r}" for r in _reasons(left)[:3])
                raise PruningError(f"rule {text!r}: {scheme} applies to none of the "
                                   f"{len(hits)} layers matching {pattern!r}{why}")
            layers.update(fit)
            if left and skipped is not None:
                skipped[text] = left
        else:
            layers[pattern] = LayerRule(scheme, rate, params)
    return PruningPlan(layers, cfg)


def _reasons(left: dict[str, str]) -> list[str]:
    """Per reason, commonest first: 'N layers: reason (layer, layer, ...)'."""
    by: dict[str, list[str]] = {}
    for name, why in left.items():
        # a scheme's refusal reads "layer NAME (shape): reason": group on the reason
        head = f"layer {name} ("
        if why.startswith(head) and "): " in why:
            why = why.split("): ", 1)[1]
        why = re.sub(r", got [^;]*", "", why)  # what each layer has instead: its own detail
        by.setdefault(why, []).append(name)
    out = []
    for why, names in sorted(by.items(), key=lambda kv: -len(kv[1])):
        shown = ", ".join(names[:4]) + (f", … {len(names) - 4} more" if len(names) > 4 else "")
        out.append(f"{len(names)} layer{'s' if len(names) > 1 else ''}: {why} ({shown})")
    return out


def skipped_lines(skipped: dict[str, dict[str, str]]) -> list[str]:
    """Per glob rule that left layers out: how many it skipped, and why."""
    lines = []
    for text, left in skipped.items():
        lines.append(f"rule {text!r} skipped {len(left)} of the layers it matched "
                     f"(the scheme does not fit them):")
        lines += [f"  {r}" for r in _reasons(left)]
    return lines


def run(args: argparse.Namespace) -> int:
    """`npas-host plan`. Raises PruningError (a user error: the CLI prints it)."""
    from ..models import load_model

    model = load_model(args.model)
    skipped: dict[str, dict[str, str]] = {}
    plan = build_plan(model, args.rule, PruningConfig(args.vector_width, args.patterns),
                      skipped)
    plan.precision = [f"{p}={q}" for p, q in map(parse_precision_rule, args.precision)]
    report = plan.report(model)
    if args.output:
        plan.save(args.output)
    if args.json:
        print(json.dumps({"plan": plan.to_dict(), **report.to_dict(), "skipped": skipped}))
    else:
        print(report)
        for line in skipped_lines(skipped):
            print(line)
        if args.output:
            print(f"plan of {len(plan.layers)} layers → {args.output}")
    return 0


