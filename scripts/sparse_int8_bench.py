"""Sparse + int8 on this x86 host (issue 14's measurement; a script, not a test): ResNet-18
pruned as ``npas-host bench sparse`` prunes it (its block-punched mapping at the NPAS rate,
5.3x), compiled as sparse int8, dense int8 (the unpruned model) and sparse fp32 (and dense
fp32 for scale), timed on a fresh local runner at 1 thread side by side in rotated rounds
(``BundleTimer``); prints the medians, the ratios, the load average, and per layer the
medians of the pruned layers (``--per-layer``).

    .venv/bin/python scripts/sparse_int8_bench.py --runs 60 --rounds 6 [--size 224]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    import torch

    from codegen import HostToolchain, compile_model, read_report
    from host.bench.common import local_session, progress
    from host.bench.sparse.mappings import MAPPINGS
    from host.bench.sparse.work import forward_work, prune
    from host.measure import MeasureConfig
    from host.models import example_inputs, load_model
    from host.pruning.timing import BundleTimer, for_layer

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--per-layer", action="store_true")
    ap.add_argument("--no-fp32-dense", action="store_true")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    model = load_model("resnet18")
    (x,) = example_inputs((1, 3, args.size, args.size))
    mapping = MAPPINGS["resnet18"][0]
    _, dense_work = forward_work(model, x)
    solved, pruned, rules = prune(model, mapping, mapping.npas, dense_work)
    print(f"resnet18 {mapping.name}: {solved!r}; rules {rules}")
    cal = [list(example_inputs((1, 3, args.size, args.size), seed=s)) for s in range(2)]
    i8, f32 = HostToolchain(precision="int8"), HostToolchain()
    print(f"int8 ISA {i8.quant_isa().name}, fp32 ISA {f32.isa().name}")
    variants = {
        "sparse int8": (pruned.model, pruned.schemes, i8),
        "dense int8": (model, {}, i8),
        "sparse fp32": (pruned.model, pruned.schemes, f32),
    }
    if not args.no_fp32_dense:
        variants["dense fp32"] = (model, {}, f32)
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack, progress() as prog:
        session = local_session(None, stack, prog)
        task = prog.add_task("timing", total=None)
        timer = BundleTimer(session, f32, x, Path(tmp), prog, task,
                            MeasureConfig(runs=args.runs, warmup=5, threads=1))
        for label, (m, schemes, tc) in variants.items():
            slug = label.replace(" ", "_")
            timer.bundles[label] = compile_model(
                m, x, Path(tmp) / slug, name=slug, toolchain=tc, schemes=schemes,
                calibration=cal if tc is i8 else None)
        rep = read_report(timer.bundles["sparse int8"].path)
        sp = rep.sparse
        print(f"sparse int8: {sum('bcsr' in v for v in sp.values())} of {len(sp)} pruned layers "
              f"on the int8 block-sparse kernels; float32 layers: {rep.fp32_layers}")
        load0 = os.getloadavg()
        med = timer.side_by_side(args.rounds)
        load1 = os.getloadavg()
        layers = {}
        if args.per_layer:
            for label in variants:
                layers[label] = for_layer(timer.per_layer(label), list(sp))
    base = med["dense int8"]
    print(f"\nload average before {load0[0]:.2f} {load0[1]:.2f}, after {load1[0]:.2f} "
          f"{load1[1]:.2f}; {args.runs} runs in {args.rounds} rotated rounds, 1 thread")
    print(f"{'variant':<14} {'median ms':>10} {'vs dense int8':>14} {'vs sparse fp32':>15}")
    for label, ms in med.items():
        print(f"{label:<14} {ms:>10.3f} {base / ms:>13.2f}x {med['sparse fp32'] / ms:>14.2f}x")
    if layers:
        print(f"\n{'layer':<24}" + "".join(f"{v:>14}" for v in variants) + "  storage (int8)")
        for name in sp:
            row = "".join(f"{layers[v].get(name, float('nan')):>14.3f}" for v in variants)
            print(f"{name:<24}{row}  {sp[name][:60]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
