"""Weight blob sizes and load times of compact bundles (format 2) against full ones.

For each model (seeded random weights, 224x224) and target (the host CPU, arm64-v8a): the
parameters' float32 bytes, the weight blob a compact bundle ships, the one a full bundle ships
(``compile_model(compact_weights=False)``: every param as the kernels read it) and the weight
buffer both load into. With ``--load``, each bundle is uploaded to a fresh runner (the host
runner, or for arm64 the static runner under qemu-aarch64) and loaded ``--loads`` times: the
upload's bytes and time, and the median init_ns (load, prepare steps, buffers) per variant.

    .venv/bin/python scripts/bundle_sizes.py --models resnet18,resnet34 --load --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def _runner(target: str, store: Path):
    from host.devices.local import LocalRunner, LocalRunnerConfig

    if target == "arm64":
        from host.devices.qemu_static import QemuArm64StaticRunner

        return QemuArm64StaticRunner(LocalRunnerConfig(store=store, startup_timeout_s=120.0))
    return LocalRunner(LocalRunnerConfig(binary=ROOT / "build/host/npas-runner", store=store))


def _load_times(bundle, target: str, loads: int, tmp: Path) -> dict:
    from host.devices.session import Session
    from host.measure import MeasureConfig

    with _runner(target, tmp / f"store-{bundle.path.name}") as runner, \
            Session(runner, call_timeout_s=1800.0) as s:
        init, up = [], None
        for _ in range(loads):
            key = s.load(bundle, MeasureConfig(threads=1))
            up = up or s.upload(key)
            init.append(s.loaded(key).init_ns)
            s.unload(key)
    return {"upload_bytes": up.bytes, "upload_s": round(up.seconds, 3),
            "init_ms": round(statistics.median(init) / 1e6, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,resnet34,mobilenet_v2,vgg16")
    ap.add_argument("--targets", default="host,arm64")
    ap.add_argument("--load", action="store_true", help="also upload and load each bundle")
    ap.add_argument("--loads", type=int, default=3)
    ap.add_argument("--json", help="write the rows here as well")
    args = ap.parse_args()

    import torch
    from zoo import torchvision_model

    from codegen import compile_model
    from codegen.toolchain import Arm64AndroidToolchain, HostToolchain

    rows = []
    with tempfile.TemporaryDirectory(prefix="npas-sizes-") as t:
        tmp = Path(t)
        for name in args.models.split(","):
            model = torchvision_model(name)
            x = torch.randn((1, 3, 224, 224), generator=torch.Generator().manual_seed(1))
            params = sum(p.numel() for p in model.parameters()) * 4
            for target in args.targets.split(","):
                tc = Arm64AndroidToolchain() if target == "arm64" else HostToolchain()
                row = {"model": name, "target": target, "param_bytes": params}
                for variant, compact in (("compact", True), ("full", False)):
                    t0 = time.perf_counter()
                    b = compile_model(model, (x,), tmp / f"{name}-{target}-{variant}",
                                      name=name, toolchain=tc, compact_weights=compact)
                    row[f"{variant}_compile_s"] = round(time.perf_counter() - t0, 1)
                    row[f"{variant}_blob_bytes"] = b.manifest.shipped_weights_bytes
                    row["loaded_bytes"] = b.manifest.weights_bytes
                    if args.load:
                        for k, v in _load_times(b, target, args.loads, tmp).items():
                            row[f"{variant}_{k}"] = v
                print(json.dumps(row), flush=True)
                rows.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
