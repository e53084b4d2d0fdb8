"""`npas-host pas`: Pruning-as-Search, every layer's width from one training run, measured on a
device.

    npas-host pas [--model M] [--dataset digits] --macs 0.5 [--repvgg] [--device local]

Trains the model first unless ``--weights`` are given (``--pretrain-epochs``), then trains it
with the channel masks and the MAC penalty (``host/pruning/pas.py``) for ``--epochs``, removes
the masked channels (widths rounded to ``--vector-width`` towards the target), fine-tunes the
narrower model, merges RepVGG blocks when ``--repvgg`` trained with them, compiles the dense and
the narrower model for the device and times them side by side. Writes to ``--out``
(default ``runs/pas-DATE-TIME``): ``model.pt2`` (torch.export, usable as MODEL by
compile/profile), ``bundle/``, ``report.json`` (widths per group, MACs, accuracy, latency,
CPU-minutes of each stage) and ``history.jsonl`` (loss and MACs per step).
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from rich.table import Table

from ..console import err, out
from ..errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    from ..commands.args import add_device_args
    from ..search.config import DEFAULT_MODEL
    from .pas import DEFAULT_ALPHA, PasConfig

    d = PasConfig(target=0.5)
    p = sub.add_parser("pas", help="Pruning-as-Search: learn every layer's width in one "
                                   "training run with a MAC target, measured on a device")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"torchvision name or module:factory (default {DEFAULT_MODEL})")
    p.add_argument("--weights", type=Path, help="a state dict to load first (skips pretraining)")
    p.add_argument("--dataset", default="digits",
                   help="digits (default), digits-hard, cifar10:PATH or imagefolder:PATH")
    p.add_argument("--image-size", type=int, help="resize the dataset's images to this")
    p.add_argument("--macs", type=float,
                   help="MACs to keep, as a fraction of the dense model's (e.g. 0.5)")
    p.add_argument("--latency-ms", type=float,
                   help="instead of --macs: a latency target on --device, steered through a "
                        "per-layer latency table measured there first")
    p.add_argument("--epochs", type=float, default=d.epochs,
                   help=f"epochs of mask training (default {d.epochs:g})")
    p.add_argument("--pretrain-epochs", type=float, default=3.0,
                   help="epochs of training before it, without --weights (default 3)")
    p.add_argument("--finetune-epochs", type=float, default=2.0,
                   help="epochs of fine-tuning after the channels are removed (default 2)")
    p.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                   help=f"weight of the MAC penalty (default {DEFAULT_ALPHA:g}, the paper's)")
    p.add_argument("--mask-lr", type=float, default=d.mask_lr)
    p.add_argument("--balance", type=float, default=d.balance,
                   help="0 (default, the paper's): the penalty pushes each mask by its "
                        "channel's cost, so the costliest layers lose most; 1: every mask "
                        "equally, the task gradient alone ranks the channels")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--vector-width", type=int, default=d.vector_width,
                   help=f"kept widths are multiples of this (default {d.vector_width})")
    p.add_argument("--repvgg", action="store_true",
                   help="train 3x3 convs as RepVGG blocks (3x3 + 1x1 + identity branches), "
                        "merged into plain 3x3 convs before compiling")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="local", help="where to measure: 'local' (default), "
                   "'qemu-arm64' or a phone serial")
    p.add_argument("--runs", type=int, default=50, help="timed runs per model (default 50)")
    p.add_argument("--threads", type=int, default=1, help="runner threads (default 1)")
    p.add_argument("--out", type=Path, help="output folder (default runs/pas-DATE-TIME)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_device_args(p)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..commands.args import device_spec
    from ..commands.compile import progress_bar
    from ..devices import open_device
    from ..devices.session import Session
    from ..measure import MeasureConfig
    from ..models import load_model
    from ..models.data import load_dataset
    from ..models.train import TrainConfig, evaluate, train
    from ..targets import toolchain_for_device
    from .latency_table import measure_table
    from .pas import PasConfig, count_macs
    from .timing import BundleTimer

    if (args.macs is None) == (args.latency_ms is None):
        raise UserError("give one target: --macs FRACTION or --latency-ms MS")
    if args.latency_ms is not None and args.latency_ms <= 0:
        raise UserError(f"--latency-ms must be positive; got {args.latency_ms}")
    # with --latency-ms the fraction is known once the table is measured
    cfg = PasConfig(args.macs or 0.5, args.epochs, args.alpha, args.lr, args.mask_lr,
                    vector_width=args.vector_width, seed=args.seed, balance=args.balance)
    if args.finetune_epochs < 0 or args.pretrain_epochs < 0 or args.runs < 1:
        raise UserError("--finetune-epochs and --pretrain-epochs must be ≥ 0, --runs ≥ 1")
    run_dir = args.out or Path("runs") / f"pas-{time.strftime('%Y%m%d-%H%M%S')}"
    if run_dir.exists() and any(run_dir.iterdir()):
        raise UserError(f"{run_dir} exists and is not empty: give another --out")
    data = load_dataset(args.dataset, args.image_size)
    model = load_model(args.model)
    example = torch.zeros(1, *data.input_shape)
    tc = TrainConfig(lr=args.lr)
    stages: dict[str, float] = {}

    def timed(name: str, fn):
        t0 = time.perf_counter()
        r = fn()
        stages[name] = round((time.perf_counter() - t0) / 60, 2)
        return r
    if args.weights:
        try:
            model.load_state_dict(torch.load(args.weights, map_location="cpu"))
        except (OSError, RuntimeError) as e:
            raise UserError(f"--weights {args.weights}: {e}") from None
    elif args.pretrain_epochs:
        err.print(f"training {args.model} on {data.describe()} for {args.pretrain_epochs:g} "
                  f"epochs")
        timed("pretrain", lambda: train(model, data, args.pretrain_epochs, tc, args.seed))
    dense = copy.deepcopy(model).eval()
    dense_acc = evaluate(dense, data)
    with ExitStack() as stack, progress_bar() as progress:
        task = progress.add_task(f"starting the runner on {args.device}", total=None)
        device = open_device(device_spec(args), stack)
        session = stack.enter_context(Session(device, on_event=lambda m: err.print(m)))
        info = session.client.device_info()
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="npas-pas-")))
        timer = BundleTimer(session, toolchain_for_device(info, "cpu"), (example,), tmp,
                            progress, task, MeasureConfig(
                                runs=args.runs, warmup=device.traits.default_warmup,
                                threads=args.threads,
                                pin_big_cores=device.traits.pin_big_cores))
        table = None
        if args.latency_ms is not None:
            table = timed("latency table", lambda: measure_table(dense, timer,
                                                                 args.vector_width))
            frac = args.latency_ms / table.dense_ms
            if not 0 < frac < 1:
                raise UserError(f"--latency-ms {args.latency_ms}: the dense model already "
                                f"takes {table.dense_ms:.4f} ms on {args.device} (per-layer "
                                f"sum); give a smaller target")
            cfg.target = frac
            err.print(f"latency table: dense {table.dense_ms:.4f} ms (per-layer sum) → target "
                      f"{frac:.3f} of it")
        progress.update(task, description="training with channel masks")
        res, pruned, blocks = _train(model, data, cfg, args, run_dir, tc, timed, table)
        acc = evaluate(pruned, data)
        torch.export.save(torch.export.export(pruned, (example,)), str(run_dir / "model.pt2"))
        timer.compile("dense", dense, {})
        bundle = timer.compile("pas", pruned, {})
        ms = timer.side_by_side(3 if args.runs >= 3 else 1, ["dense", "pas"])
        shutil.copytree(bundle.path, run_dir / "bundle")
        progress.remove_task(task)
    macs = count_macs(pruned, example)
    report = {"model": args.model, "dataset": args.dataset, "target": cfg.target,
              "steered": "latency" if table else "MACs", "latency_target_ms": args.latency_ms,
              "macs_dense": res.macs_dense, "macs_masked": res.macs_masked, "macs": macs,
              "macs_fraction": macs / res.macs_dense, "cost_fraction": res.cost,
              "widths": res.widths, "repvgg_blocks": blocks, "accuracy_dense": dense_acc,
              "accuracy": acc, "latency_ms": ms, "device": args.device,
              "threads": args.threads, "cpu_minutes": stages, "config": {**vars(cfg)}}
    if table is not None:
        report["latency_table"] = table.to_dict()
        report["predicted_ms"] = res.predicted_ms
        report["table_error"] = res.predicted_ms / ms["pas"] - 1.0
    (run_dir / "report.json").write_text(json.dumps(report, indent=1, default=str))
    if args.json:
        print(json.dumps(report, default=str))
        return 0
    _print(report, res, run_dir, stages)
    return 0


def _train(model, data, cfg, args, run_dir: Path, tc, timed, table):
    """Mask training, removal and fine-tuning: (PasResult, the final model, RepVGG blocks)."""
    from ..models.train import train
    from .pas import search_widths
    from .repvgg import merge_repvgg, to_repvgg

    blocks: list[str] = []
    if args.repvgg:
        model, blocks = to_repvgg(model)
        err.print(f"RepVGG blocks: {len(blocks)} ({', '.join(blocks) or 'no eligible conv'})")
    run_dir.mkdir(parents=True, exist_ok=True)
    what = "latency" if table is not None else "MACs"
    hist = (run_dir / "history.jsonl").open("w")

    def on_step(step, total, loss, frac):
        hist.write(json.dumps({"step": step, "loss": round(loss, 5), "cost": round(frac, 5)})
                   + "\n")
        if step % 10 == 0 or step == total:
            hist.flush()
            err.print(f"PaS step {step}/{total}: loss {loss:.3f}, {what} {frac:.3f} of dense "
                      f"(target {cfg.target:.3f})")
    try:
        res = timed("pas", lambda: search_widths(model, data, cfg, on_step, table))
    finally:
        hist.close()
    pruned = res.model
    if args.finetune_epochs:
        err.print(f"fine-tuning the narrower model for {args.finetune_epochs:g} epochs")
        timed("finetune", lambda: train(pruned, data, args.finetune_epochs, tc, args.seed))
    return res, (merge_repvgg(pruned) if blocks else pruned.eval()), blocks


def _print(report: dict, res, run_dir: Path, stages: dict) -> None:
    ms = report["latency_ms"]
    t = Table(title=f"PaS on {report['model']} ({report['steered']} target "
                    f"{report['target']:.3f} of dense)")
    for col in ("model", "MACs", "of dense", "accuracy", "median ms", "speed-up"):
        t.add_column(col, justify="left" if col == "model" else "right")
    t.add_row("dense", f"{res.macs_dense / 1e6:.2f} M", "1.000",
              f"{report['accuracy_dense']:.4f}", f"{ms['dense']:.4f}", "1.00x")
    t.add_row("pas", f"{report['macs'] / 1e6:.2f} M", f"{report['macs_fraction']:.3f}",
              f"{report['accuracy']:.4f}", f"{ms['pas']:.4f}",
              f"{ms['dense'] / ms['pas']:.2f}x")
    out.print(t)
    if "predicted_ms" in report:
        out.print(f"latency table predicted {report['predicted_ms']:.4f} ms for the result, "
                  f"measured {ms['pas']:.4f} ms ({report['table_error']:+.1%}); target "
                  f"{report['latency_target_ms']:g} ms")
    out.print("widths: " + ", ".join(f"{k} {v}" for k, v in res.widths.items()))
    out.print(f"→ {run_dir} (model.pt2, bundle/, report.json, history.jsonl); CPU-minutes: "
              + ", ".join(f"{k} {v:g}" for k, v in stages.items()))
