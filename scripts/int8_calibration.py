"""int8 against float32 per calibration method: max relative error, mean cosine and top-1
agreement of our int8 model with PyTorch float32, on the inputs and calibration batches
``npas-host bench int8`` uses (the bench's cached seeded weights, ``peers.calibration``'s 4
batches, ``--eval`` inputs from seed 200).

The int8 outputs are ``codegen.quant``'s reference executor on the graph the quantization pass
makes (``codegen.int8_eval``): what the int8 bundle computes, bit for bit (tests/test_int8*.py
check that per kernel and on ResNet-18/MobileNet-V2). ``--keep-fp32`` keeps layers float32
(e.g. the global pool, as before the int8 pools); ``--workload arm64``: ``npas-host bench
arm64``'s model (BatchNorm recalibrated) and calibration instead, its input evaluated too.

    .venv/bin/python scripts/int8_calibration.py --models resnet18,mobilenet_v2 \\
        --methods minmax,percentile:99.99,percentile:99.9
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import torch

    from codegen import HostToolchain
    from codegen.int8_eval import quantized_graph, run_quantized
    from host.bench.common import bench_cache_dir, load_workload
    from host.bench.int8 import EVAL_SEED
    from host.bench.peers import calibration
    from host.models import example_inputs

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="resnet18,mobilenet_v2")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--methods", default="minmax,percentile:99.99")
    ap.add_argument("--eval", type=int, default=16)
    ap.add_argument("--keep-fp32", default="")
    ap.add_argument("--workload", choices=("int8", "arm64"), default="int8",
                    help="int8: bench int8's model and calibration (default); arm64: bench "
                         "arm64's (BatchNorm recalibrated, its 4 calibration batches), whose "
                         "benchmark input is evaluated first")
    args = ap.parse_args(argv)
    lanes = HostToolchain(precision="int8").isa().floats
    keep = tuple(n for n in args.keep_fp32.split(",") if n)
    print("| model | calibration | max rel. error | mean cosine | top-1 agreement |")
    print("| --- | --- | --- | --- | --- |")
    for name in args.models.split(","):
        evals = []
        if args.workload == "arm64":
            from host.bench.arm64.cli import calibrate_bn, int8_calibration

            w = load_workload(name, args.size, bench_cache_dir(None) / "arm64")
            calibrate_bn(w)
            cal = int8_calibration(w)
            evals.append(w.example)
        else:
            w = load_workload(name, args.size, bench_cache_dir(None))
            cal = [[x] for x in calibration(w.shape)]
        evals += [example_inputs(w.shape, seed=EVAL_SEED + i)[0] for i in range(args.eval)]
        with torch.no_grad():
            refs = [w.model(x).numpy() for x in evals]
        for method in args.methods.split(","):
            t0 = time.perf_counter()
            g = quantized_graph(w.model, (w.example,), cal, lanes, keep,
                                calibration_method=method)
            outs = [run_quantized(g, [x.numpy()])[0] for x in evals]
            errs = [float(np.abs(o - r).max() / np.abs(r).max())
                    for o, r in zip(outs, refs, strict=True)]
            err = max(errs)
            cos = np.mean([float(o.ravel() @ r.ravel() / np.linalg.norm(o) / np.linalg.norm(r))
                           for o, r in zip(outs, refs, strict=True)])
            top1 = np.mean([o.argmax() == r.argmax() for o, r in zip(outs, refs, strict=True)])
            first = f" (bench input {errs[0]:.4f})" if args.workload == "arm64" else ""
            print(f"| {name} | {method}{' keep ' + ','.join(keep) if keep else ''} | "
                  f"{err:.4f}{first} | {cos:.5f} | {top1 * 100:.0f} % "
                  f"({round(top1 * len(outs))}/{len(outs)}) |", flush=True)
            print(f"  ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
