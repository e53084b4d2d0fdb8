"""Phones seen through adb, via adbutils (never by shelling out to adb).

Listing is best-effort: no adb server, or no phone, yields an empty list and a note, not an
error, so `npas-host devices` always works.
"""

from __future__ import annotations

from dataclasses import dataclass

import adbutils


@dataclass(frozen=True)
class PhoneInfo:
    serial: str
    state: str
    model: str = ""
    abi: str = ""
    android: str = ""
    soc: str = ""
    battery_temp_c: float | None = None


def _prop(dev, name: str) -> str:
    try:
        return dev.prop.get(name, cache=True) or ""
    except Exception:  # a device that went away mid-listing: leave the field empty
        return ""


def battery_temp_c(dev) -> float | None:
    """Battery temperature from `dumpsys battery` (tenths of a degree there)."""
    try:
        out = dev.shell("dumpsys battery", timeout=5)
    except Exception:
        return None
    for line in str(out).splitlines():
        key, _, value = line.strip().partition(":")
        if key == "temperature" and value.strip().lstrip("-").isdigit():
            return int(value) / 10.0
    return None


def list_phones(host: str = "127.0.0.1", port: int = 5037,
                timeout_s: float = 5.0) -> tuple[list[PhoneInfo], str]:
    """Return (phones, note). The note explains an empty list."""
    client = adbutils.AdbClient(host=host, port=port, socket_timeout=timeout_s)
    try:
        items = client.list()
    except (adbutils.AdbError, OSError) as e:
        return [], f"no adb server at {host}:{port} ({e}); phones are not listed"
    phones = []
    for it in items:
        if it.state != "device":
            phones.append(PhoneInfo(serial=it.serial, state=it.state))
            continue
        dev = client.device(it.serial)
        soc = _prop(dev, "ro.soc.model") or _prop(dev, "ro.board.platform")
        phones.append(PhoneInfo(
            serial=it.serial, state=it.state, model=_prop(dev, "ro.product.model"),
            abi=_prop(dev, "ro.product.cpu.abi"), android=_prop(dev, "ro.build.version.release"),
            soc=soc, battery_temp_c=battery_temp_c(dev)))
    note = "" if phones else "adb server is up; no phone attached"
    return phones, note
