"""Our int8 bundle against the same bundle with some layers kept float32 (``--keep-fp32``), timed
side by side on the local runner: both loaded, benchmarked in alternating rounds (the order
rotating) so that a changing machine load falls on both; medians and their ratio.

What it is for: the latency effect of running a layer in int8, everything else equal (e.g. the
global pool before the classifier, int8 since the int8 pools; float32 before):

    .venv/bin/python scripts/int8_keep_ab.py --model mobilenet_v2 --keep adaptive_avgpool2d
    .venv/bin/python scripts/int8_keep_ab.py --model resnet18 --keep avgpool
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from codegen import HostToolchain, compile_model
    from host.bench.common import bench_cache_dir, load_workload
    from host.bench.peers import calibration
    from host.devices import DeviceSpec, open_device
    from host.devices.session import Session
    from host.measure import MeasureConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--keep", required=True, help="layers the B bundle keeps float32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--runs", type=int, default=10, help="runs per bundle per round")
    args = ap.parse_args(argv)
    w = load_workload(args.model, args.size, bench_cache_dir(None))
    cal = [[x] for x in calibration(w.shape)]
    keep = tuple(args.keep.split(","))
    tc = HostToolchain(precision="int8")
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        bundles = {
            "int8": compile_model(w.model, w.example, Path(tmp) / "a", toolchain=tc,
                                  calibration=cal),
            f"int8, {args.keep} fp32": compile_model(w.model, w.example, Path(tmp) / "b",
                                                     toolchain=tc, calibration=cal,
                                                     keep_fp32=keep)}
        device = open_device(DeviceSpec("local"), stack)
        s = stack.enter_context(Session(device, call_timeout_s=600))
        cfg = MeasureConfig(threads=args.threads, runs=args.runs, warmup=2)
        keys = {k: s.load(b, cfg) for k, b in bundles.items()}
        samples: dict[str, list[int]] = {k: [] for k in keys}
        labels = list(keys)
        for r in range(args.rounds):
            for k in labels[r % 2:] + labels[:r % 2]:
                samples[k] += s.benchmark(keys[k]).samples_ns
        med = {k: statistics.median(v) / 1e6 for k, v in samples.items()}
        for k, m in med.items():
            print(f"{args.model} {k}: median {m:.3f} ms over {len(samples[k])} runs "
                  f"({args.threads} thread{'s' if args.threads > 1 else ''})")
        a, b = med.values()
        print(f"{args.model}: int8 / kept-fp32 = {a / b:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
