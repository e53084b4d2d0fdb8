"""`npas-host install`: put the runner on a phone (the app, or a standalone arm64 binary: by
default the static one build/arm64-static holds) and check that it answers."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..console import out


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("install", help="install the runner on a phone and check it answers")
    p.add_argument("--device", required=True, help="the phone's adb serial")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--apk", type=Path, help="the runner app (android_app, built by Gradle)")
    what.add_argument("--binary", type=Path,
                      help="a standalone arm64 runner, pushed to /data/local/tmp/npas "
                           "(default: the static one scripts/build_arm64.sh builds, "
                           "build/arm64-static/npas-runner)")


def run(args: argparse.Namespace) -> int:
    from ..devices.phone import PhoneConfig, install

    runner = install(PhoneConfig(serial=args.device), apk=args.apk, binary=args.binary)
    try:
        info = runner.client().device_info()
    finally:
        runner.stop()
    if runner.version:
        out.print(f"pushed: {runner.version}")
    out.print(f"runner {info.runner_version} ({runner.mode}) on {args.device} answers: "
              f"{info.abi}, {info.cpu_model}, {len(info.cores)} cores")
    return 0
