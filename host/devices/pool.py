"""Several devices of one model measuring at once: a pool that lends each member to one
measurement at a time, takes a lost member out, and refuses to mix device models.

A member is whatever measures on one device (the search's ``LatencyOracle``, which owns the
device's runner session and restarts it on a crash). ``lease()`` blocks until a member is free
and gives it to one caller only, so two measurements never share a device. ``remove`` takes a
member out for good (its device is gone) and says so in ``lost``; when the last one goes, a
waiting ``lease`` raises ``PoolEmpty``. Latencies differ from phone model to phone model, so a
search measures on one model only: ``one_model`` compares what each runner reports
(``DeviceInfo``: ABI, CPU, cores and their maximum frequencies) and names the models it finds.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from ..errors import UserError

T = TypeVar("T")


class PoolEmpty(RuntimeError):
    """Every device of the pool is lost."""


@dataclass(frozen=True)
class DeviceModel:
    """What makes two devices the same model for timing purposes."""

    abi: str
    cpu_model: str
    max_khz: tuple[int, ...]  # per core, sorted

    @classmethod
    def of(cls, info) -> DeviceModel:
        """From a runner's DeviceInfo."""
        return cls(info.abi, info.cpu_model or "?",
                   tuple(sorted(int(c.max_freq_khz) for c in info.cores)))

    def __str__(self) -> str:
        top = max(self.max_khz, default=0) / 1000
        return f"{self.cpu_model} ({self.abi}, {len(self.max_khz)} cores, up to {top:.0f} MHz)"


def one_model(models: dict[str, DeviceModel]) -> DeviceModel:
    """The one model all ``models`` (device name → model) share, or a UserError naming them."""
    kinds: dict[DeviceModel, list[str]] = {}
    for name, m in models.items():
        kinds.setdefault(m, []).append(name)
    if len(kinds) != 1:
        said = "; ".join(f"{', '.join(names)}: {m}" for m, names in kinds.items())
        raise UserError(f"the devices are not all the same model ({said}); different models "
                        f"give different latencies, so one search measures on one model: give "
                        f"--device only devices of one model")
    return next(iter(kinds))


class DevicePool(Generic[T]):
    """Members by device name; each lent to one caller at a time."""

    def __init__(self, members: dict[str, T]):
        if not members:
            raise ValueError("a device pool needs at least one device")
        self.members = dict(members)
        self._free = list(self.members)
        self._cond = threading.Condition()
        self.lost: list[tuple[str, str]] = []  # (device, why), in the order they went
        self.in_use = 0
        self.peak_in_use = 0  # the most members lent at once

    def __len__(self) -> int:
        return len(self.members)

    @contextlib.contextmanager
    def lease(self) -> Iterator[tuple[str, T]]:
        """(name, member) for the caller alone, back in the pool afterwards (unless removed
        meanwhile)."""
        with self._cond:
            while not self._free:
                if not self.members:
                    raise PoolEmpty("every device of the pool is lost: " + "; ".join(
                        f"{n}: {why}" for n, why in self.lost))
                self._cond.wait()
            name = self._free.pop(0)
            self.in_use += 1
            self.peak_in_use = max(self.peak_in_use, self.in_use)
        try:
            yield name, self.members[name]
        finally:
            with self._cond:
                self.in_use -= 1
                if name in self.members:
                    self._free.append(name)
                self._cond.notify_all()

    def remove(self, name: str, why: str) -> T | None:
        """Take ``name`` out for good; returns the member (for closing) or None if gone."""
        with self._cond:
            member = self.members.pop(name, None)
            if member is not None:
                self.lost.append((name, why))
                if name in self._free:
                    self._free.remove(name)
            self._cond.notify_all()
            return member
