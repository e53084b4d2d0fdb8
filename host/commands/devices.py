"""`npas-host devices`: the local runner (started briefly to ask what this machine is) and the
phones adb sees."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from ..console import out

SHOWN_FEATURES = ("avx2", "fma", "avx512f", "asimd", "asimddp", "fphp")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("devices", help="list the local runner and phones seen through adb")
    p.add_argument("--json", action="store_true")


def _local_info(binary: Path) -> dict:
    """Start the host runner briefly and ask it what this machine is."""
    from google.protobuf.json_format import MessageToDict

    from ..devices.local import LocalRunner, LocalRunnerConfig
    from ..rpc.client import RunnerError

    try:
        with LocalRunner(LocalRunnerConfig(binary=binary)) as runner:
            info = runner.client().device_info()
    except RunnerError as e:
        return {"detail": f"{binary}: does not start: {e}"}
    gpus = [f"{d.name} ({d.version.strip()})" for p in info.opencl_platforms
            for d in p.devices]
    feats = " ".join(f for f in info.cpu_features if f in SHOWN_FEATURES)
    detail = (f"{info.abi}, {info.cpu_model}, {len(info.cores)} cores ({feats}), runner "
              f"{info.runner_version}; OpenCL: "
              + ("; ".join(gpus) if gpus else info.opencl_status or "none"))
    return {"model": info.cpu_model, "abi": info.abi, "detail": detail,
            "info": MessageToDict(info, preserving_proto_field_name=True,
                                  always_print_fields_with_no_presence=True)}


def run(args: argparse.Namespace) -> int:
    from ..devices.adb import list_phones
    from ..devices.local import find_runner_binary

    rows = []
    try:
        binary = find_runner_binary()
        rows.append({"device": "local", "kind": "host runner", **_local_info(binary)})
    except FileNotFoundError as e:
        rows.append({"device": "local", "kind": "host runner", "detail": f"unavailable: {e}"})
    phones, note = list_phones()
    for ph in phones:
        rows.append({"device": ph.serial, "kind": "phone", **asdict(ph)})
    if args.json:
        print(json.dumps({"devices": rows, "note": note}, indent=1))
        return 0
    for r in rows:
        if r["kind"] != "phone":
            out.print(f"[bold]{r['device']}[/bold] ({r['kind']}): {escape(r['detail'])}")
    if phones:
        t = Table(title="Phones")
        for col in ("serial", "state", "model", "abi", "android", "soc", "battery °C"):
            t.add_column(col)
        for ph in phones:
            temp = "" if ph.battery_temp_c is None else f"{ph.battery_temp_c:.1f}"
            t.add_row(ph.serial, ph.state, ph.model, ph.abi, ph.android, ph.soc, temp)
        out.print(t)
    if note:
        out.print(f"[dim]{note}[/dim]")
    return 0
