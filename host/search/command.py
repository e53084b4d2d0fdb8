"""`npas-host search`: the command line of the search (engine.py does the work).

``register`` adds the subcommand, with its defaults read from SearchConfig (written once);
``run`` turns the arguments into a SearchConfig, opens the device and runs the search. Bad
arguments (an unknown model, a missing dataset folder, an unreachable latency target) are
refused with a message before a run folder is written or anything is trained.
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from contextlib import ExitStack
from pathlib import Path

from ..commands.args import add_device_args, device_spec
from ..console import err, out
from ..devices import open_device
from ..errors import UserError
from .config import (
    AUTO_PRETRAIN_EPOCHS,
    DEFAULT_MODEL,
    EVALUATORS,
    EXECUTORS,
    LATENCY_SOURCES,
    SEARCH_STORE_BYTES,
    SearchConfig,
    SearchError,
    rates_arg,
    targets_arg,
)
from .space import ratio_str
from .strategies import STRATEGIES
from .tasks import INFO, TASKS, fmt_metric

_D = SearchConfig  # the defaults, as class attributes of the dataclass
_C = INFO["classify"]  # the task's defaults SearchConfig fills in
LOCAL_RAY_WORKERS = 2  # --executor ray without --workers or --ray-address


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``search`` subcommand to ``sub``."""
    p = sub.add_parser("search", help="search per-layer filter types, pruning schemes and "
                       "rates for a latency target measured on a device",
                       description="Phase 1 replaces mobile-unfriendly operators, phase 2 "
                       "searches the pruning (every candidate fine-tuned briefly and measured "
                       "on the device), phase 3 prunes the chosen candidate with gradual and "
                       "ADMM pruning, trains it and exports it. Writes a run folder with a "
                       "journal, checkpoints, the final model and report.md.")
    p.add_argument("--task", choices=TASKS, default=_D.task,
                   help="classify (accuracy; default) or sr (×2 super-resolution: PSNR and "
                        "SSIM on the Y channel against the bicubic baseline, trained on "
                        "patches, latency measured at --frame)")
    p.add_argument("--frame", help="sr: the output frame the device times, WIDTHxHEIGHT "
                                   "(default 1280x720: a 640x360 input)")
    p.add_argument("--model",
                   help=f"torchvision name, module:factory, or a .pt file of a whole model "
                        f"(default {DEFAULT_MODEL}: a small CNN for digits; with --task sr "
                        f"{INFO['sr'].model})")
    p.add_argument("--weights", help="a state dict to load into --model first")
    p.add_argument("--dataset",
                   help="digits (scikit-learn's, offline; default), digits-hard (the digits "
                        "distorted on photo clutter, generated offline), cifar10:PATH (the "
                        "python-pickle folder) or imagefolder:PATH; with --task sr: photos "
                        "(scikit-learn's two photographs, offline; default) or "
                        "imagefolder:PATH (high-resolution images, bicubic-degraded)")
    p.add_argument("--image-size", type=int,
                   help="input size (default: 16 for digits, 32 for the others); with --task "
                        "sr the high-resolution training patch side (default 64)")
    p.add_argument("--device", help=f"'{_D.device}' (the host runner; default), 'qemu-arm64' "
                                     f"or a phone serial; several, comma-separated, of one "
                                     f"model: a pool measuring at once ('local,local', "
                                     f"'SERIAL1,SERIAL2')")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--latency-ms",
                        help="the latency target, measured on the device (median); with "
                             "--strategy jcw several, comma-separated: one search, a model "
                             "exported per target")
    target.add_argument("--speedup", type=float,
                        help="or: target = the dense model's measured latency / SPEEDUP")
    p.add_argument("--strategy", choices=tuple(STRATEGIES), default=_D.strategy,
                   help="npas (RL controller + Bayesian optimisation; default), random, "
                        "uniform, jcw (joint channel + weight pruning, NSGA-II)")
    p.add_argument("--budget", type=int, default=_D.budget,
                   help=f"candidates evaluated in phase 2 (default {_D.budget})")
    p.add_argument("--batch", type=int, default=_D.batch,
                   help=f"candidates per round of the strategy (default {_D.batch})")
    p.add_argument("--samples", type=int, default=_D.samples,
                   help=f"npas: candidates the controller samples per round for the Bayesian "
                        f"filter (default {_D.samples})")
    p.add_argument("--population", type=int, default=_D.population,
                   help=f"jcw: NSGA-II's population (default {_D.population})")
    p.add_argument("--jcw-bounds", default=",".join(f"{v:g}" for v in _D.jcw_bounds),
                   help="jcw: lowest fractions kept: channels, first layer's channels, "
                        "residual layers' channels, weight density (default JCW's: "
                        "0.5,0.8,0.9,0.3)")
    p.add_argument("--evaluator", choices=EVALUATORS, default=_D.evaluator,
                   help="phase 2's accuracy: finetune (one-shot pruning + --finetune-epochs "
                        "per candidate; default) or supernet (weight sharing: one model "
                        "trained on sampled sub-networks, each candidate scored after "
                        "recomputing BatchNorm statistics, no fine-tuning)")
    p.add_argument("--supernet-epochs", type=float, default=_D.supernet_epochs,
                   help=f"supernet: its first training, in epochs (default "
                        f"{_D.supernet_epochs:g})")
    p.add_argument("--supernet-steps", type=int, default=_D.supernet_steps,
                   help=f"supernet: retraining steps per generation (jcw) or batch (default "
                        f"{_D.supernet_steps})")
    p.add_argument("--latency", choices=LATENCY_SOURCES, default=_D.latency,
                   help="phase 2's latency: device (every candidate measured; default) or "
                        "table (estimated from a per-layer table measured on the device "
                        "first; the front is re-measured on the device before it is reported)")
    p.add_argument("--time-budget", type=float, dest="time_budget_s",
                   help="seconds: phase 2 stops proposing when the run has taken this long "
                        "(with --budget, whichever comes first)")
    p.add_argument("--rates", default=",".join(ratio_str(r) for r in _D.ratios),
                   help="compression ratios (or fractions removed) to choose from")
    p.add_argument("--schemes", default=",".join(_D.schemes),
                   help="pruning schemes to choose from (default: all)")
    p.add_argument("--filter-types", default=",".join(_D.filter_types),
                   help="keep, 1x1, dwpw (depthwise + pointwise) (default: all)")
    p.add_argument("--precisions", default=",".join(_D.precisions),
                   help="per-layer precisions to choose from: fp32 (default: precision not "
                        "searched) or fp32,int8 (int8 offered where the layers have int8 "
                        "kernels; accuracy measured on the quantized candidate)")
    p.add_argument("--latency-weight", type=float, default=_D.latency_weight,
                   help=f"beta in reward = acc × (latency/target)^-beta above the target "
                        f"(default {_D.latency_weight:g})")
    p.add_argument("--finetune-epochs", type=float, default=_D.finetune_epochs,
                   help=f"phase 2: fine-tuning per candidate, in epochs (default "
                        f"{_D.finetune_epochs:g})")
    p.add_argument("--pretrain-epochs", default="auto",
                   help=f"train the model first for this many epochs; auto: "
                        f"{AUTO_PRETRAIN_EPOCHS:g} when its accuracy is near chance (random "
                        f"weights), else 0")
    p.add_argument("--phase1-epochs", type=float, default=_D.phase1_epochs,
                   help=f"fine-tuning after replacing operators (default {_D.phase1_epochs:g})")
    p.add_argument("--phase3-epochs", type=float, default=_D.phase3_epochs,
                   help=f"budget of gradual and of ADMM pruning each (default "
                        f"{_D.phase3_epochs:g})")
    p.add_argument("--final-epochs", type=float, default=_D.final_epochs,
                   help=f"training of the final model (default {_D.final_epochs:g})")
    p.add_argument("--lr", type=float,
                   help=f"learning rate for training (default {_C.lr:g} with SGD; --task sr "
                        f"{INFO['sr'].lr:g} with Adam)")
    p.add_argument("--finetune-lr", type=float,
                   help=f"learning rate for fine-tuning (phases 1 to 3; cosine decay; default "
                        f"{_C.finetune_lr:g}; --task sr {INFO['sr'].finetune_lr:g})")
    p.add_argument("--batch-size", type=int,
                   help=f"default {_C.batch_size}; --task sr {INFO['sr'].batch_size}")
    p.add_argument("--train-device", default=_D.train_device, help="cpu (default) or cuda")
    p.add_argument("--train-threads", type=int, default=_D.train_threads,
                   help=f"torch threads for training (default {_D.train_threads}: the local "
                        f"runner measures on the same CPU)")
    p.add_argument("--runs", type=int, default=_D.runs, help="timed runs per measurement")
    p.add_argument("--warmup", type=int, default=_D.warmup, help="discarded warm-up runs")
    p.add_argument("--threads", type=int, default=_D.threads,
                   help=f"runner threads (default {_D.threads})")
    p.add_argument("--seed", type=int, default=_D.seed)
    p.add_argument("--executor", choices=EXECUTORS, default=_D.executor,
                   help="where phase 2 fine-tunes candidates: local (this process, one at a "
                        "time; default) or ray (Ray tasks, as many at once as workers; "
                        "needs the ray extra)")
    p.add_argument("--workers", type=int,
                   help="ray: fine-tunes at once; without --ray-address the size of the local "
                        "Ray cluster this search starts (default: 2 locally; on a cluster one "
                        "per --train-threads CPUs, or per GPU with --train-device cuda)")
    p.add_argument("--ray-address",
                   help="ray: an existing cluster (HOST:6379 of its head, or 'auto' on one of "
                        "its nodes); default: start a local one")
    p.add_argument("--out", type=Path,
                   help="the run folder to write (default runs/search-DATE-TIME)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue a stopped search (its recorded settings are used)")
    p.add_argument("--skip-final", action="store_true",
                   help="stop after phase 2 (benchmarks)")
    p.add_argument("--phase1-checkpoint", help=argparse.SUPPRESS)
    p.add_argument("--no-live", action="store_true", help="log lines instead of a live panel")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_device_args(p)


def config_from_args(args: argparse.Namespace) -> SearchConfig:
    """The SearchConfig the parsed arguments describe (a fresh run, not --resume)."""
    pre = None
    if args.pretrain_epochs != "auto":
        try:
            pre = float(args.pretrain_epochs)
        except ValueError:
            raise SearchError(f"--pretrain-epochs {args.pretrain_epochs!r}: a number or "
                              f"auto") from None
    targets = targets_arg(args.latency_ms) if args.latency_ms is not None else ()
    try:
        bounds = tuple(float(v) for v in args.jcw_bounds.split(",") if v.strip())
    except ValueError:
        raise SearchError(f"--jcw-bounds {args.jcw_bounds!r}: four fractions, e.g. "
                          f"0.5,0.8,0.9,0.3") from None
    task = INFO[args.task]
    frame = ()
    if args.frame:
        if args.task != "sr":
            raise SearchError("--frame is for --task sr (the output frame timed)")
        from ..models.data import DataSpecError
        from ..models.sr import frame_arg

        try:
            frame = frame_arg(args.frame)
        except DataSpecError as e:
            raise SearchError(str(e)) from None
    return SearchConfig(
        task=args.task, frame=frame, model=args.model or task.model, weights=args.weights,
        dataset=args.dataset or task.dataset,
        image_size=args.image_size, device=args.device or _D.device,
        latency_ms=targets[0] if targets else None, targets=targets if len(targets) > 1 else (),
        speedup=args.speedup, strategy=args.strategy,
        budget=args.budget, batch=args.batch, samples=args.samples, population=args.population,
        jcw_bounds=bounds, evaluator=args.evaluator, supernet_epochs=args.supernet_epochs,
        supernet_steps=args.supernet_steps, latency=args.latency,
        time_budget_s=args.time_budget_s,
        ratios=rates_arg(args.rates),
        schemes=tuple(s.strip() for s in args.schemes.split(",") if s.strip()),
        filter_types=tuple(s.strip() for s in args.filter_types.split(",") if s.strip()),
        precisions=_precisions(args.precisions), latency_weight=args.latency_weight,
        finetune_epochs=args.finetune_epochs,
        pretrain_epochs=pre, phase1_epochs=args.phase1_epochs,
        phase3_epochs=args.phase3_epochs, final_epochs=args.final_epochs,
        lr=args.lr, finetune_lr=args.finetune_lr, batch_size=args.batch_size,
        train_device=args.train_device, train_threads=args.train_threads, runs=args.runs,
        warmup=args.warmup, threads=args.threads, seed=args.seed,
        skip_final=args.skip_final, phase1_checkpoint=args.phase1_checkpoint,
        executor=args.executor, workers=_workers(args), ray_address=args.ray_address)


def _precisions(text: str) -> tuple[str, ...]:
    from .precision import parse_precisions

    try:
        return parse_precisions(text)
    except ValueError as e:
        raise SearchError(str(e)) from None


def _workers(args: argparse.Namespace) -> int:
    if args.workers is not None:
        return args.workers
    if args.executor == "ray" and not args.ray_address:
        return LOCAL_RAY_WORKERS
    return 0 if args.executor == "ray" else _D.workers


def _resume_overrides(cfg: SearchConfig, args: argparse.Namespace) -> None:
    """What --resume may change: where it runs, not what it searches."""
    if args.device:
        cfg.device = args.device
    if args.executor != cfg.executor and args.executor != _D.executor:
        raise SearchError(f"--resume: this run was searched with --executor {cfg.executor}; "
                          f"its phase 2 replays only with that executor (leave --executor out)")
    if args.ray_address:
        cfg.ray_address = args.ray_address
    if args.workers is not None:
        cfg.workers = args.workers


def open_devices(args: argparse.Namespace, cfg: SearchConfig, stack: ExitStack) -> dict:
    """The devices ``cfg.device`` names, by a name unique in the pool ('local#1', 'local#2'
    for two host runners); each local runner gets a private store."""
    names = cfg.device_names()
    if len(names) > 1 and args.address:
        raise SearchError(f"--address reaches one runner; --device {cfg.device} names "
                          f"{len(names)} devices")
    out = {}
    for i, name in enumerate(names, 1):
        key = f"{name}#{i}" if names.count(name) > 1 else name
        # candidates differ in their weights: a local runner gets a private store
        out[key] = open_device(device_spec(args, name, private_store_bytes=SEARCH_STORE_BYTES),
                               stack)
    return out


def run(args: argparse.Namespace) -> int:
    """Run (or with --resume continue) the search the arguments describe; print the result."""
    from ..models.data import DataSpecError
    from ..pruning import PruningError
    from .engine import Search
    from .journal import Journal
    from .live import LiveView, SearchUI
    from .prepare import prepare

    previous = signal.signal(signal.SIGTERM, _interrupt)  # `kill`: stop the runner, keep the
    try:                                                   # journal (resume continues it)
        if args.resume:
            header = Journal(args.resume).header()
            if header is None:
                raise SearchError(f"--resume {args.resume}: no search journal there")
            cfg = SearchConfig.from_dict(header["config"])
            _resume_overrides(cfg, args)
            run_dir = args.resume
        else:
            cfg = config_from_args(args)
            run_dir = args.out or Path("runs") / f"search-{time.strftime('%Y%m%d-%H%M%S')}"
        prep = prepare(cfg)
        with ExitStack() as stack:
            device = open_devices(args, cfg, stack)
            ui = LiveView(err) if err.is_terminal and not args.no_live else SearchUI(err)
            with ui:
                s = Search(cfg, run_dir, device, resume=bool(args.resume), ui=ui,
                           prepared=prep).run()
    except (SearchError, DataSpecError, PruningError) as e:
        raise UserError(str(e)) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    _print_result(s, args.json)
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _print_result(s: dict, as_json: bool) -> None:
    ch, p3 = s["chosen"], s.get("phase3") or {}
    if as_json:
        keep = ("run_dir", "report", "task", "baseline", "input_shape", "model", "dataset",
                "device", "strategy", "seed",
                "target_ms", "dense_ms", "floor_ms", "best_meeting_accuracy", "evaluated",
                "failed", "wall_s", "precisions", "layers")
        print(json.dumps({**{k: s.get(k) for k in keep},
                          "chosen": {k: ch.get(k) for k in ("id", "summary", "accuracy",
                                                            "latency_ms", "reward")},
                          "phase1": {k: s["phase1"].get(k) for k in ("acc_before",
                                                                     "acc_replaced",
                                                                     "acc_after")},
                          "phase3": {k: v for k, v in p3.items() if k != "layers"},
                          "targets": [_target_row(t) for t in s.get("targets", [])]}))
        return
    out.print(f"searched {s['evaluated']} candidates ({s['failed']} failed) in "
              f"{s['wall_s']:.0f} s; target {s['target_ms']:.3f} ms (dense "
              f"{s['dense_ms']:.3f} ms)")
    out.print(f"chosen: candidate {ch['id']}: {ch['summary']}")
    task = s.get("task", "classify")
    f = fmt_metric
    out.print(f"  phase 2: {f(ch['accuracy'], task)} at {ch['latency_ms']:.3f} ms")
    if p3:
        verdict = "meets" if p3["meets_target"] else "[red]misses[/red]"
        out.print(f"  final ({p3['picked']}): {f(p3['final_acc'], task)} at "
                  f"{p3['final_ms']:.3f} ms on {s['device']}: {verdict} the target")
    for t in s.get("targets", []):
        r = _target_row(t)
        final = (f"; final {f(r['final_acc'], task)} at {r['final_ms']:.3f} ms: "
                 f"{'meets' if r['meets_target'] else '[red]misses[/red]'}"
                 if r.get("final_ms") is not None else "")
        out.print(f"  target {r['target_ms']:g} ms: candidate {r['id']} "
                  f"({f(r['accuracy'], task)} at "
                  f"{r['latency_ms']:.3f} ms){final} → {r['exported'] or '-'}")
    if s.get("precisions"):  # precision searched: the chosen precision of every layer
        out.print("  per layer: " + ", ".join(f"{la['name']} {la['precision']}"
                                              for la in s["layers"]))
        if p3.get("final_acc_fp32") is not None:
            out.print(f"  final accuracy on the quantized model (int8 as the kernels compute "
                      f"it); float32 before quantizing {f(p3['final_acc_fp32'], task)}; int8 "
                      f"in the bundle: {', '.join(p3.get('int8_layers', [])) or 'none'}")
    sr = (p3 or {}).get("sr")
    if sr:
        out.print(f"  super-resolution ×2, {sr['frame']} output ({sr['input']} input) timed: "
                  f"PSNR (Y) {sr['psnr']:.2f} dB, SSIM {sr['ssim']:.4f}; bicubic "
                  f"{sr['bicubic_psnr']:.2f} dB, {sr['bicubic_ssim']:.4f} "
                  f"({sr['gain_db']:+.2f} dB)")
    out.print(f"report: {s['report']}")


def _target_row(t: dict) -> dict:
    ch, p3 = t["chosen"], t.get("phase3") or {}
    model = (p3.get("exported") or {}).get("PyTorch model")
    return {"target_ms": t["target_ms"], "id": ch.get("id"), "accuracy": ch.get("accuracy"),
            "latency_ms": ch.get("latency_ms"), "final_acc": p3.get("final_acc"),
            "final_ms": p3.get("final_ms"), "meets_target": p3.get("meets_target"),
            "exported": model.rsplit("/", 1)[0] if model else None}
