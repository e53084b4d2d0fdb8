"""`npas-host map MODEL --device D [--rate R]`: the rule-based pruning-scheme mapper.

Compiles the model dense and once per rung of the regularity ladders (``mapping.LADDERS``: all
layers of a kind at the same rung in one bundle), times every bundle per layer on the device,
picks each layer's knee (``mapping.decide``), then compiles and times the mapped plan. Writes
the plan (``-o``, replayable with ``compile/profile --plan``) and, beside it, the profile that
chose it (``PLAN.profile.json``); prints a table per layer (scheme, block size, why) and one
per bundle (compression, end-to-end median), so the mapped plan is seen next to every uniform
rung at the same rate.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from contextlib import ExitStack
from pathlib import Path

from rich.table import Table

from ..console import err, out
from ..errors import UserError
from ..measure import MeasureConfig
from .config import PruningConfig, PruningError, parse_rate
from .mapping import (
    DEFAULT_TOLERANCE,
    LADDERS,
    MapResult,
    decide,
    mapped_plan,
    prunable_layers,
    rung_plan,
)
from .timing import BundleTimer, for_layer

MAP_RUNS = 30
# A local runner's private store (unless --store names one): the ladder's bundles differ in
# weights, and VGG-16's eight are ~2.5 GB; removed when the command ends
MAP_STORE_BYTES = 8 << 30
MAP_WARMUP = 5


def register(sub: argparse._SubParsersAction) -> None:
    from ..commands.args import add_device_args

    p = sub.add_parser("map", help="map a pruning scheme and block size to every layer from "
                                   "latencies measured on a device (writes a plan)")
    p.add_argument("model", help="torchvision name, module:factory, or a .pt2 export")
    p.add_argument("--device", default="local",
                   help="'local' (the host runner; default), 'qemu-arm64', or a phone serial")
    p.add_argument("--rate", default="5x",
                   help="pruning rate of every mapped layer: a fraction removed (0.8) or a "
                        "compression (5x; default)")
    p.add_argument("--input-shape", default="1,3,224,224",
                   help="the input the bundles are compiled and timed for (default "
                        "1,3,224,224)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="a layer takes the finest block whose time is within this fraction of "
                        f"what regularity can buy (default {DEFAULT_TOLERANCE:g})")
    p.add_argument("--runs", type=int, default=MAP_RUNS,
                   help=f"timed runs per bundle (default {MAP_RUNS})")
    p.add_argument("--warmup", type=int, default=MAP_WARMUP,
                   help=f"discarded warm-up runs per bundle (default {MAP_WARMUP})")
    p.add_argument("--rounds", type=int, default=3,
                   help="the end-to-end comparison times every bundle in this many rotated "
                        "rounds of RUNS/ROUNDS runs each (default 3)")
    p.add_argument("--threads", type=int, default=1,
                   help="runner threads; 0: one per big core (default 1)")
    p.add_argument("-o", "--output", type=Path,
                   help="the plan JSON to write (default: MODEL.map.json here)")
    p.add_argument("--vector-width", type=int, default=16,
                   help="filter/channel widths stay multiples of this (default 16)")
    p.add_argument("--patterns", type=int, default=8,
                   help="pattern set size per layer for pattern pruning (default 8)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_device_args(p)


def _check(args: argparse.Namespace) -> float:
    try:
        rate = parse_rate(args.rate)
    except PruningError as e:
        raise UserError(f"--rate: {e}") from None
    if not 0 < rate < 1:
        raise UserError(f"--rate must remove a fraction in (0, 1) (or be a compression > 1x); "
                        f"got {args.rate}")
    if args.runs < 1 or args.warmup < 1 or args.threads < 0 or not 1 <= args.rounds <= 100:
        raise UserError(f"--runs and --warmup must be ≥ 1, --rounds 1..100 and --threads ≥ 0; "
                        f"got {args.runs}, {args.warmup}, {args.rounds}, {args.threads}")
    if not 0 <= args.tolerance <= 1:
        raise UserError(f"--tolerance must be in [0, 1]; got {args.tolerance}")
    return rate


def weights_compression(model, pruned_model) -> float:
    """Conv/Linear weights of ``model`` over the non-zero ones left in ``pruned_model``."""
    from torch import nn

    def count(m, nonzero: bool) -> int:
        return sum(int((x.weight != 0).sum()) if nonzero else x.weight.numel()
                   for x in m.modules() if isinstance(x, (nn.Conv2d, nn.Linear)))
    return count(model, False) / max(1, count(pruned_model, True))


def run(args: argparse.Namespace) -> int:
    """`npas-host map`. User errors raise UserError/PruningError (the CLI prints them)."""
    from ..commands.args import device_spec
    from ..commands.compile import progress_bar
    from ..devices import open_device
    from ..devices.session import Session
    from ..targets import toolchain_for_device

    rate = _check(args)
    from ..models import example_inputs, load_model, parse_shape

    model = load_model(args.model)
    example = example_inputs(parse_shape(args.input_shape))
    cfg = PruningConfig(args.vector_width, args.patterns)
    output = args.output or Path(f"{Path(args.model).stem.replace(':', '_')}.map.json")
    names = list(prunable_layers(model))
    if not any(k in LADDERS for k in prunable_layers(model).values()):
        raise UserError(f"{args.model}: no layer the mapper prunes (k×k or 1x1 convs without "
                        f"groups, Linear); kinds found: "
                        f"{sorted(set(prunable_layers(model).values())) or 'none'}")
    with ExitStack() as stack, progress_bar() as progress:
        task = progress.add_task(f"starting the runner on {args.device}", total=None)
        device = open_device(device_spec(args, private_store_bytes=MAP_STORE_BYTES), stack)
        session = stack.enter_context(Session(device, on_event=lambda m: err.print(m)))
        info = session.client.device_info()
        toolchain = toolchain_for_device(info, "cpu")
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="npas-map-")))
        res = MapResult(args.model, rate, args.tolerance, [], mapped_plan([], rate, cfg),
                        device={"name": args.device, "abi": info.abi,
                                "cpu": getattr(info, "cpu_model", ""),
                                "features": list(getattr(info, "cpu_features", ()))})
        res.compression["dense"] = 1.0
        m = BundleTimer(session, toolchain, example, tmp, progress, task,
                        MeasureConfig(runs=args.runs, warmup=args.warmup, threads=args.threads,
                                      pin_big_cores=device.traits.pin_big_cores,
                                      per_layer=True))
        n = 2 + len(next(iter(LADDERS.values())))
        m.compile("dense", model, {}, f"[1/{n}]")
        dense = for_layer(m.per_layer("dense", f"[1/{n}]"), names)
        rung_ms = []
        for i in range(n - 2):
            label = " / ".join(dict.fromkeys(L[i].label for L in LADDERS.values()))
            pruned = rung_plan(model, i, rate, cfg).apply(model)
            res.compression[label] = round(weights_compression(model, pruned.model), 3)
            m.compile(label, pruned.model, pruned.schemes, f"[{i + 2}/{n}]")
            rung_ms.append(for_layer(m.per_layer(label, f"[{i + 2}/{n}]"), names))
        res.choices = decide(model, rate, rung_ms, dense, args.tolerance)
        res.plan = mapped_plan(res.choices, rate, cfg)
        pruned = res.plan.apply(model)
        res.compression["mapped"] = round(weights_compression(model, pruned.model), 3)
        m.compile("mapped", pruned.model, pruned.schemes, f"[{n}/{n}]")
        res.end_to_end_ms = m.side_by_side(args.rounds)
        res.device_s, res.compile_s = m.device_s, m.compile_s
        progress.remove_task(task)
    res.plan.save(output)
    profile = output.with_name(output.stem + ".profile.json")
    profile.write_text(json.dumps(res.to_dict(), indent=1))
    if args.json:
        print(json.dumps({"plan": res.plan.to_dict(), "plan_path": str(output),
                          "profile_path": str(profile), **res.to_dict()}))
        return 0
    _print(res, output, profile)
    return 0


def _print(res: MapResult, plan_path: Path, profile_path: Path) -> None:
    t = Table(title=f"{res.model}: schemes mapped at rate {res.rate:.3f} (the knee: the finest "
                    f"block within {res.tolerance:.0%} of what regularity buys)")
    for col in ("layer", "kind", "scheme / block", "dense ms", "why"):
        t.add_column(col, justify="right" if col == "dense ms" else "left")
    for c in res.choices:
        t.add_row(c.layer, c.kind, c.rung, "" if c.dense_ms is None else f"{c.dense_ms:.3f}",
                  c.why)
    out.print(t)
    e = Table(title="end to end, side by side (medians over rotated rounds): every uniform "
                    "rung and the mapped plan, same layers, same rate")
    for col in ("bundle", "weights ×", "median ms", "vs dense"):
        e.add_column(col, justify="left" if col == "bundle" else "right")
    dense = res.end_to_end_ms.get("dense")
    for label, ms in res.end_to_end_ms.items():
        e.add_row(label, f"{res.compression.get(label, 1.0):.2f}", f"{ms:.3f}",
                  f"{dense / ms:.2f}x" if dense else "")
    out.print(e)
    out.print(f"{res.device_s:.1f} s on the device (uploads, loads and runs), "
              f"{res.compile_s:.1f} s compiling; plan → {plan_path} (use it with "
              f"`compile/profile --plan`), profile → {profile_path}")
