"""Runs one ncnn or MNN model on one input inside the arm64 Python (build/arm64-python, made by
scripts/build_arm64_python.sh) under qemu-aarch64, with a marker syscall around each counted
inference, for a qemu plugin that counts guest instructions between the markers.

It imports only the standard library, numpy, ncnn and MNN (never host.* or torch: the guest
has neither). Each counted inference is the same work as ``infer()`` of the engine's class in
host/bench/engines.py: the input copied in, one run, the output fetched to host memory.

    guest.py --engine {ncnn,mnn} --precision {fp32,fp16,int8} --model PATH [--weights PATH]
             --input X.npy --output Y.npy --warmup N --runs N [--threads 1] [--per-layer]

With --per-layer (ncnn only), one more marked inference follows the counted ones: it extracts
every layer's outputs in the param file's order from one extractor, so each extraction
computes just that layer, with a step mark before each; the JSON line lists the layers.

stdout carries one JSON line at the end and nothing else (fd 1 points at stderr while the
engines run, as MNN announces CPU features there); errors go to stderr, exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

# A marker is lseek(-1, MARK_BASE + code, SEEK_SET): the counting plugin watches for this
# syscall (fd -1, an offset whose top 32 bits spell "NPAS"); without the plugin it fails with
# EBADF and does nothing.
MARK_BASE = 0x4E50415300000000
MARK_BEGIN = 1
MARK_END = 2
MARK_STEP_BASE = 0x100  # + i before layer i of a per-layer inference (--per-layer, ncnn)


class GuestError(Exception):
    """A failure with a message for the user (exit status 1)."""


def mark(code: int) -> None:
    try:
        os.lseek(-1, MARK_BASE + code, os.SEEK_SET)
    except OSError:
        pass


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """fd 1 points at stderr inside, so C-level prints keep off stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        try:  # C stdio buffers too, before fd 1 points back
            import ctypes
            ctypes.CDLL(None).fflush(None)
        except (ImportError, OSError):
            pass
        os.dup2(saved, 1)
        os.close(saved)


def _need_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise GuestError(f"{what} not found: {path}")
    return path


Loaded = tuple[str, Callable[[], np.ndarray], Callable[[], list[dict]] | None]


def load_ncnn(args: argparse.Namespace, x: np.ndarray) -> Loaded:
    import ncnn

    param = _need_file(args.model, "ncnn .param")
    weights = args.weights or os.path.splitext(param)[0] + ".bin"
    _need_file(weights, "ncnn .bin")
    net = ncnn.Net()
    opt = net.opt
    opt.use_vulkan_compute = False
    opt.num_threads = args.threads
    # fp32: fp32 storage and arithmetic, as engines.py. fp16: ncnn's defaults on an ARMv8.2
    # core (fp16 storage, packing and arithmetic; no bf16), set explicitly. int8: a model
    # host/bench/ncnn_int8.py converted, int8 inference on (its int8 layers use SDOT where
    # the core has dotprod), and ncnn's ARMv8.2 defaults (fp16) for the layers in between.
    fp16 = args.precision in ("fp16", "int8")
    flags = {"use_fp16_storage": fp16, "use_fp16_packed": fp16, "use_fp16_arithmetic": fp16,
             "use_bf16_storage": False, "use_int8_inference": args.precision == "int8"}
    for flag, value in flags.items():
        if not hasattr(opt, flag):
            raise GuestError(f"ncnn {ncnn.__version__} has no option {flag}")
        setattr(opt, flag, value)
    if hasattr(opt, "use_bf16_packed"):  # newer ncnn only (not in 1.0.20250503)
        opt.use_bf16_packed = False
    if net.load_param(param) != 0:
        raise GuestError(f"ncnn could not load {param}")
    if net.load_model(weights) != 0:
        raise GuestError(f"ncnn could not load {weights}")
    if x.ndim < 2 or x.shape[0] != 1:
        raise GuestError(f"ncnn: the input must have batch 1, got shape {list(x.shape)}")
    chw = np.ascontiguousarray(x[0])  # ncnn.Mat is CHW, no batch

    def infer() -> np.ndarray:
        with net.create_extractor() as ex:
            ex.input("in0", ncnn.Mat(chw))
            ret, out = ex.extract("out0")
            if ret != 0:
                raise GuestError(f"ncnn: extracting out0 failed ({ret})")
            return np.array(out)[None]

    blobs = [b.name for b in net.blobs()]

    def per_layer() -> list[dict]:
        rows: list[dict] = []
        with net.create_extractor() as ex:
            mark(MARK_BEGIN)
            ex.input("in0", ncnn.Mat(chw))
            for layer in net.layers():
                if layer.type == "Input":
                    continue
                mark(MARK_STEP_BASE + len(rows))
                shapes = []
                for top in layer.tops:
                    ret, m = ex.extract(blobs[top], 1)  # 1: as computed, no unpacking
                    if ret != 0:
                        raise GuestError(f"ncnn: extracting {blobs[top]} failed ({ret})")
                    shapes.append([m.c * getattr(m, "elempack", 1), m.h, m.w])
                rows.append({"name": layer.name, "type": layer.type, "shapes": shapes})
            mark(MARK_END)
        return rows

    return ncnn.__version__, infer, per_layer


def load_mnn(args: argparse.Namespace, x: np.ndarray) -> Loaded:
    import MNN

    if args.precision == "int8":
        raise GuestError("--precision int8 is for ncnn (a model host/bench/ncnn_int8.py wrote)")
    path = _need_file(args.model, "MNN model")
    try:
        interp = MNN.Interpreter(path)
        # "high": fp32 everywhere; "low": fp16 arithmetic where the core has it (ARMv8.2)
        session = interp.createSession({"backend": "CPU", "numThread": args.threads,
                                        "precision": "high" if args.precision == "fp32"
                                        else "low"})
        inp = interp.getSessionInput(session)
        if tuple(inp.getShape()) != x.shape:
            interp.resizeTensor(inp, x.shape)
            interp.resizeSession(session)
    except Exception as e:  # the bindings raise several kinds; the message is what matters
        raise GuestError(f"MNN could not load {path}: {e}") from None
    host_in = MNN.Tensor(x.shape, MNN.Halide_Type_Float, x, MNN.Tensor_DimensionType_Caffe)

    def infer() -> np.ndarray:
        inp.copyFrom(host_in)
        interp.runSession(session)
        out = interp.getSessionOutput(session)
        shape = tuple(out.getShape())
        host_out = MNN.Tensor(shape, MNN.Halide_Type_Float, np.zeros(shape, np.float32),
                              MNN.Tensor_DimensionType_Caffe)
        out.copyToHostTensor(host_out)
        return np.array(host_out.getNumpyData(), copy=True)

    return MNN.version(), infer, None


LOADERS = {"ncnn": load_ncnn, "mnn": load_mnn}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", required=True, choices=sorted(LOADERS))
    p.add_argument("--precision", required=True, choices=["fp32", "fp16", "int8"])
    p.add_argument("--model", required=True, help="ncnn .param or .mnn")
    p.add_argument("--weights", help="ncnn .bin (default: the .param's name with .bin)")
    p.add_argument("--input", required=True, help="float32 .npy, NCHW with the batch")
    p.add_argument("--output", required=True, help="the last output, float32 .npy")
    p.add_argument("--warmup", type=int, required=True, help="uncounted runs first")
    p.add_argument("--runs", type=int, required=True, help="counted runs, each marked")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--per-layer", action="store_true",
                   help="one more inference, marked layer by layer (ncnn only)")
    args = p.parse_args(argv)
    if args.warmup < 0 or args.runs < 1 or args.threads < 1:
        p.error("--warmup must be >= 0, --runs and --threads >= 1")
    return args


def run(args: argparse.Namespace) -> dict:
    try:
        x = np.load(_need_file(args.input, "input"))
    except ValueError as e:
        raise GuestError(f"cannot read {args.input}: {e}") from None
    x = np.ascontiguousarray(x, dtype=np.float32)
    try:
        version, infer, per_layer = LOADERS[args.engine](args, x)
    except ImportError as e:
        raise GuestError(f"cannot import {args.engine}: {e}") from None
    if args.per_layer and per_layer is None:
        raise GuestError(f"--per-layer is not available for {args.engine}")
    layers = None
    try:
        for _ in range(args.warmup):
            infer()
        out = None
        for _ in range(args.runs):
            mark(MARK_BEGIN)
            out = infer()
            mark(MARK_END)
        if args.per_layer:
            layers = per_layer()
    except GuestError:
        raise
    except Exception as e:
        raise GuestError(f"{args.engine} inference failed: {e}") from None
    out = np.ascontiguousarray(out, dtype=np.float32)
    try:
        np.save(args.output, out)
    except OSError as e:
        raise GuestError(f"cannot write {args.output}: {e}") from None
    return {"engine": args.engine, "precision": args.precision, "version": version,
            "output_shape": list(out.shape), **({"layers": layers} if layers else {})}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with stdout_to_stderr():
            result = run(args)
    except GuestError as e:
        print(f"guest.py: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
