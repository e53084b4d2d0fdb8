"""``npas-host bench dense|sparse|arm64``: the benchmarks (not tests) as a subcommand.

``register(sub)`` adds the ``bench`` parser, which takes the benchmark's name and hands the
rest of the command line to that benchmark's own parser (``bench dense --help``); ``run(args)``
runs it and returns its exit code. The benchmarks are imported only when one runs.
"""

from __future__ import annotations

import argparse

BENCHMARKS = ("dense", "int8", "sparse", "arm64", "scaleout", "pas", "load", "fuzz")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench`` to the subcommands in ``sub``."""
    p = sub.add_parser("bench", help="benchmarks (not tests): `bench dense --help`, "
                       "`bench sparse --help`, `bench arm64 --help`")
    p.add_argument("which", choices=BENCHMARKS, help="dense: our code vs PyTorch, "
                   "ONNX Runtime, MNN and ncnn on resnet18, mobilenet_v2, vgg16; int8: our "
                   "int8 vs ONNX Runtime's static QDQ int8 (and both fp32); sparse: "
                   "pruned models on our sparse kernels vs our dense code and those "
                   "engines; arm64: instructions per inference of ours, ncnn and MNN under "
                   "qemu-aarch64; scaleout: phase 2's candidates per minute in-process "
                   "and on Ray with 1 and 2 workers; pas: PaS width search vs uniform filter "
                   "pruning at the same measured latency; load: N clients on one runner, or "
                   "load/unload cycles, with its RSS; fuzz: the runner's libFuzzer targets")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options of that benchmark")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark ``args.which`` with the options ``args.rest``: its exit code."""
    if args.which == "dense":
        from .dense import main
    elif args.which == "int8":
        from .int8 import main
    elif args.which == "arm64":
        from .arm64.cli import main
    elif args.which == "scaleout":
        from .scaleout import main
    elif args.which == "pas":
        from .pas import main
    elif args.which == "load":
        from .reliability import load_main as main
    elif args.which == "fuzz":
        from .reliability import fuzz_main as main
    else:
        from .sparse.cli import main
    return main(args.rest)
