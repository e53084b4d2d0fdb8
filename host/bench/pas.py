"""Benchmark (not a test): PaS width search against uniform filter pruning at the same measured
latency, same training budget, several seeds.

    npas-host bench pas [--target 0.5] [--steer macs|latency] [--seeds 0,1,2]
                        [--pretrain-epochs 3] [--pas-epochs 2] [--finetune-epochs 2]
                        [--rates 0.2,...,0.7]

The model (default: the main job's digits CNN on scikit-learn's digits) is trained once
(``--pretrain-epochs``, seed 0): both methods start from it. Per seed, PaS trains with masks
and the penalty for ``--pas-epochs`` (on MACs, or with ``--steer latency`` on the latency a
per-layer table measured on the runner first predicts) and fine-tunes the narrower model for
``--finetune-epochs``. Uniform filter pruning removes the same fraction of every layer's filters
(widths rounded to the vector width, as PaS's): one model per rate in ``--rates``; every
bundle is timed on the device side by side (rotated rounds). For each seed the two uniform
rates whose measured latencies bracket that seed's PaS model are fine-tuned for the whole
budget (pas + fine-tune epochs, the same seed), and uniform's accuracy at PaS's latency is
interpolated linearly between them (``bracket``; outside the timed range the nearest rate
alone, marked). The table gives accuracy and latency per seed and the means; ``--out`` keeps
the JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from rich.table import Table

from ..console import err, out

DEFAULT_RATES = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from ..search.config import DEFAULT_MODEL

    ap = argparse.ArgumentParser(prog="npas-host bench pas", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--image-size", type=int,
                    help="resize the dataset's images (e.g. 32 for a torchvision model)")
    ap.add_argument("--channels", type=int, help="image channels (e.g. 3 for RGB models)")
    ap.add_argument("--target", type=float, default=0.5,
                    help="PaS's target, a fraction of the dense model's MACs or latency "
                         "(default 0.5)")
    ap.add_argument("--steer", choices=("macs", "latency"), default="macs",
                    help="what PaS's penalty steers: MACs, or the latency a per-layer table "
                         "measured on the runner predicts (default macs)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--alpha", type=float, help="PaS's penalty weight (default PasConfig's)")
    ap.add_argument("--mask-lr", type=float, help="PaS's mask step (default PasConfig's)")
    ap.add_argument("--balance", type=float,
                    help="PaS's balance of the penalty's push between layers (pas --help)")
    ap.add_argument("--pretrain-epochs", type=float, default=3.0)
    ap.add_argument("--pas-epochs", type=float, default=2.0)
    ap.add_argument("--finetune-epochs", type=float, default=2.0)
    ap.add_argument("--rates", default=",".join(f"{r:g}" for r in DEFAULT_RATES),
                    help="uniform filter-pruning rates to time (default 0.2..0.7)")
    ap.add_argument("--vector-width", type=int, default=16)
    ap.add_argument("--runs", type=int, default=60, help="timed runs per bundle (default 60)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runner", type=Path)
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    a = ap.parse_args(argv)
    try:
        a.seeds = [int(s) for s in a.seeds.split(",") if s]
        a.rates = [float(r) for r in a.rates.split(",") if r]
    except ValueError:
        ap.error("--seeds and --rates are comma-separated numbers")
    if not a.seeds or not a.rates or not all(0 < r < 1 for r in a.rates):
        ap.error("--seeds needs one seed or more and --rates fractions in (0, 1)")
    return a


def main(argv: list[str] | None = None) -> int:
    from ..commands.compile import progress_bar
    from ..devices import DeviceSpec, open_device
    from ..devices.session import Session
    from ..measure import MeasureConfig
    from ..models import adapt_head, load_model
    from ..models.data import load_dataset
    from ..models.train import TrainConfig, evaluate, train
    from ..pruning.config import PruningConfig
    from ..pruning.latency_table import measure_table
    from ..pruning.pas import PasConfig, count_macs, search_widths
    from ..pruning.plan import PruningPlan
    from ..pruning.timing import BundleTimer
    from ..targets import toolchain_for_device

    a = parse_args(argv)
    t_start = time.perf_counter()
    base = load_model(a.model)
    data = load_dataset(a.dataset, a.image_size, a.channels)
    adapt_head(base, data.num_classes)
    example = (__import__("torch").zeros(1, *data.input_shape),)
    tc = TrainConfig()
    err.print(f"pretraining {a.model} on {data.describe()} for {a.pretrain_epochs:g} epochs")
    train(base, data, a.pretrain_epochs, tc, seed=0)
    res: dict = {"model": a.model, "dataset": a.dataset, "target": a.target, "steer": a.steer,
                 "budget_epochs": a.pas_epochs + a.finetune_epochs,
                 "pretrain_acc": evaluate(base, data), "dense_macs": count_macs(base, example[0]),
                 "pas": [], "uniform": {}, "chosen": []}

    def keep() -> None:  # after every stage: an interrupted run keeps what it measured
        if a.out:
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(res, indent=1))
    cfg = PruningConfig(vector_width=a.vector_width)
    with ExitStack() as stack, progress_bar() as progress:
        task = progress.add_task("starting the local runner", total=None)
        device = open_device(DeviceSpec(name="local", runner=a.runner), stack)
        session = stack.enter_context(Session(device))
        info = session.client.device_info()
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="npas-bench-pas-")))
        timer = BundleTimer(session, toolchain_for_device(info, "cpu"), example, tmp, progress,
                            task, MeasureConfig(runs=a.runs, warmup=5, threads=1))
        table = None
        if a.steer == "latency":
            table = measure_table(base, timer, a.vector_width)
            res["table_dense_ms"] = table.dense_ms
            keep()
        pas_models = {}
        knobs = {k: v for k, v in (("alpha", a.alpha), ("mask_lr", a.mask_lr),
                                   ("balance", a.balance)) if v is not None}
        res["pas_config"] = knobs
        for seed in a.seeds:
            model = copy.deepcopy(base)
            t0 = time.perf_counter()
            progress.update(task, description=f"PaS seed {seed}: training with channel masks")
            r = search_widths(model, data, PasConfig(a.target, a.pas_epochs, seed=seed,
                                                     vector_width=a.vector_width, **knobs),
                              table=table)
            train(r.model, data, a.finetune_epochs, tc, seed=seed)
            pas_models[seed] = r.model
            res["pas"].append({"seed": seed, "widths": r.widths,
                               "macs_fraction": r.macs_pruned / r.macs_dense,
                               "masked_fraction": r.masked_cost, "cost_fraction": r.cost,
                               "predicted_ms": r.predicted_ms, "acc": evaluate(r.model, data),
                               "cpu_minutes": (time.perf_counter() - t0) / 60})
            err.print(f"PaS seed {seed}: {a.steer} {r.cost:.3f} of dense (target "
                      f"{a.target:g}), MACs {r.macs_pruned / r.macs_dense:.3f}, accuracy "
                      f"{res['pas'][-1]['acc']:.4f}")
            keep()
        uniform = {}
        for rate in a.rates:
            p = PruningPlan.uniform(base, "filter", rate, cfg).apply(base)
            uniform[rate] = p.model
            res["uniform"][f"{rate:g}"] = {"macs_fraction": count_macs(p.model, example[0])
                                           / res["dense_macs"]}
        timer.compile("dense", base, {})
        for rate, m in uniform.items():
            timer.compile(f"uniform {rate:g}", m, {})
        for seed, m in pas_models.items():
            timer.compile(f"pas seed {seed}", m, {})
        ms = timer.side_by_side(a.rounds, ["dense", *(f"uniform {r:g}" for r in a.rates),
                                           *(f"pas seed {s}" for s in a.seeds)])
        progress.remove_task(task)
    res["latency_ms"] = ms
    keep()
    for row in res["pas"]:
        lat = ms[f"pas seed {row['seed']}"]
        parts = bracket({r: ms[f"uniform {r:g}"] for r in a.rates}, lat)
        accs = {}
        for rate, _ in parts:
            model = copy.deepcopy(uniform[rate])
            train(model, data, a.pas_epochs + a.finetune_epochs, tc, seed=row["seed"])
            accs[rate] = evaluate(model, data)
        def mix(f, parts=parts):
            return sum(w * f(r) for r, w in parts)
        res["chosen"].append({
            "seed": row["seed"], "rates": {f"{r:g}": accs[r] for r, _ in parts},
            "weights": {f"{r:g}": w for r, w in parts}, "interpolated": len(parts) == 2,
            "rate": mix(float), "latency_ms": mix(lambda r: ms[f"uniform {r:g}"]),
            "acc": mix(accs.__getitem__),
            "macs_fraction": mix(lambda r: res["uniform"][f"{r:g}"]["macs_fraction"])})
        row["latency_ms"] = lat
        row["latency_fraction"] = lat / ms["dense"]
        keep()
    res["wall_minutes"] = (time.perf_counter() - t_start) / 60
    keep()
    _print(res)
    if a.out:
        err.print(f"results → {a.out}")
    return 0


def bracket(latency_by_rate: dict[float, float], ms: float) -> list[tuple[float, float]]:
    """The uniform rates to train and their weights for uniform's accuracy at latency ``ms``:
    the two rates measured nearest below and above it, weighted linearly in latency (their
    weighted latency is ``ms``), or the nearest rate alone (weight 1) outside the range."""
    below = [r for r, t in latency_by_rate.items() if t <= ms]
    above = [r for r, t in latency_by_rate.items() if t >= ms]
    if not below or not above:
        return [(min(latency_by_rate, key=lambda r: abs(latency_by_rate[r] - ms)), 1.0)]
    lo = max(below, key=latency_by_rate.__getitem__)  # the slowest at or under ms
    hi = min(above, key=latency_by_rate.__getitem__)  # the fastest at or over it
    t_lo, t_hi = latency_by_rate[lo], latency_by_rate[hi]
    if lo == hi or t_hi == t_lo:
        return [(lo, 1.0)]
    w_hi = (ms - t_lo) / (t_hi - t_lo)
    return [(lo, 1.0 - w_hi), (hi, w_hi)]


def _print(res: dict) -> None:
    t = Table(title=f"PaS vs uniform filter pruning at the same measured latency "
                    f"({res['model']}, {res['dataset']}, {res['budget_epochs']:g} epochs each "
                    f"after the shared pretraining: {res['pretrain_acc']:.4f})")
    for col in ("seed", "PaS MACs", "PaS ms", "PaS acc", "uniform rates", "uniform MACs",
                "uniform ms", "uniform acc at PaS's ms"):
        t.add_column(col, justify="right")
    for p, u in zip(res["pas"], res["chosen"], strict=True):
        rates = "+".join(u["rates"]) + ("" if u["interpolated"] else " (nearest)")
        t.add_row(str(p["seed"]), f"{p['macs_fraction']:.3f}", f"{p['latency_ms']:.4f}",
                  f"{p['acc']:.4f}", rates,
                  f"{u['macs_fraction']:.3f}", f"{u['latency_ms']:.4f}", f"{u['acc']:.4f}")
    mean = statistics.mean
    t.add_row("mean", f"{mean(p['macs_fraction'] for p in res['pas']):.3f}",
              f"{mean(p['latency_ms'] for p in res['pas']):.4f}",
              f"{mean(p['acc'] for p in res['pas']):.4f}", "",
              f"{mean(u['macs_fraction'] for u in res['chosen']):.3f}",
              f"{mean(u['latency_ms'] for u in res['chosen']):.4f}",
              f"{mean(u['acc'] for u in res['chosen']):.4f}")
    out.print(t)
    out.print("uniform's accuracy per rate and seed (weight at PaS's latency): " + "; ".join(
        f"seed {u['seed']}: " + ", ".join(f"{r} {acc:.4f} ({u['weights'][r]:.2f})"
                                          for r, acc in u["rates"].items())
        for u in res["chosen"]))
    gap = mean(p["acc"] - u["acc"] for p, u in zip(res["pas"], res["chosen"], strict=True))
    out.print(f"PaS − uniform at PaS's measured latency: {100 * gap:+.2f} points (mean of "
              f"{len(res['pas'])} seeds; {'PaS ahead' if gap > 0 else 'uniform ahead or level'})")
    out.print(f"dense {res['latency_ms']['dense']:.4f} ms; uniform rates timed: "
              + ", ".join(f"{k} → {res['latency_ms'][f'uniform {k}']:.4f} ms"
                          for k in res["uniform"])
              + f"; {res['wall_minutes']:.1f} min in all")
