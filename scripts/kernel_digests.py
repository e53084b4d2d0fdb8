"""Digests of the generated code for the models the benchmarks use, to check that a change
which should not touch code generation did not (a refactor, a move, a rename).

For resnet18, mobilenet_v2 and vgg16 (torchvision, seeded random weights, 1x3x224x224) it
compiles the dense model and the sparse benchmark's mappings at their NPAS rates for the
host CPU, for arm64 (when clang is there) and, dense only, for OpenCL fp32; it prints and
writes (``--json``) the sha256 of each bundle's source (kernels.c / kernels.cl), weight blob
and manifest steps. Compare two runs with ``--compare OLD.json``: exits 1 on any difference.

    .venv/bin/python scripts/kernel_digests.py --json /tmp/after.json --compare /tmp/before.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODELS = ("resnet18", "mobilenet_v2", "vgg16")


def sparse_bench():
    """The sparse benchmark's mappings and pruner, wherever the module lives."""
    try:
        from host.bench.sparse import mappings as m
        from host.bench.sparse import work as w
        return m.MAPPINGS, w.prune, w.forward_work
    except ImportError:  # an older checkout: host/bench/sparse.py, one module
        from host.bench import sparse as s
        return s.MAPPINGS, s.prune, s.forward_work


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bundle_digests(bundle) -> dict[str, str]:
    d = Path(bundle.path)
    src = d / ("kernels.cl" if (d / "kernels.cl").exists() else "kernels.c")
    steps = json.loads((d / "manifest.json").read_text())["steps"]
    return {"source": digest(src), "weights": digest(d / "weights.bin"),
            "steps": hashlib.sha256(json.dumps(steps, sort_keys=True).encode()).hexdigest()}


def toolchains(want: set[str]):
    import codegen

    out = {}
    if "host" in want:
        out["host"] = codegen.toolchain_for("cpu")
    if "arm64" in want and shutil.which("clang"):
        out["arm64"] = codegen.toolchain_for("cpu", abi="arm64-v8a", features=("asimd",))
    if "opencl" in want:
        out["opencl"] = codegen.toolchain_for("gpu", precision="fp32")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--targets", default="host,arm64,opencl")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--compare", type=Path)
    args = ap.parse_args(argv)

    import torch

    from codegen import compile_model
    from host.models import example_inputs, load_model

    mappings, prune, forward_work = sparse_bench()
    result: dict[str, dict[str, str]] = {}
    tcs = toolchains(set(args.targets.split(",")))
    with tempfile.TemporaryDirectory(prefix="npas-digests-") as tmp:
        for name in args.models.split(","):
            torch.manual_seed(0)
            model = load_model(name)
            (x,) = example_inputs((1, 3, 224, 224))
            variants = [("dense", model, None)]
            _, dense_works = forward_work(model, x)
            for mapping in mappings[name]:
                _, pruned, _ = prune(model, mapping, mapping.npas, dense_works)
                variants.append((f"{mapping.name} {mapping.npas}x", pruned.model,
                                 pruned.schemes))
            for label, m, schemes in variants:
                for tname, tc in tcs.items():
                    if schemes and tname == "opencl":
                        continue  # GPU bundles run pruned models densely
                    key = f"{name} / {label} / {tname}"
                    out = Path(tmp) / f"b{len(result)}"
                    b = compile_model(m, (x,), out, name="digest", toolchain=tc,
                                      schemes=schemes)
                    result[key] = bundle_digests(b)
                    print(key, result[key]["source"][:16], result[key]["weights"][:16],
                          flush=True)
                    shutil.rmtree(out)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.compare:
        old = json.loads(args.compare.read_text())
        diff = [k for k in sorted(set(old) | set(result)) if old.get(k) != result.get(k)]
        for k in diff:
            print(f"DIFFERENT: {k}: {old.get(k)} -> {result.get(k)}")
        print(f"{len(result)} bundles, {len(diff)} different from {args.compare}")
        return 1 if diff else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
