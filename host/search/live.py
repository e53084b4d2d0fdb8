"""What the user sees while a search runs: a live panel on a terminal (phase, candidates
evaluated, best so far, the device's temperature, the last candidates), one line per event
otherwise (logs, CI). Both go to stderr; results and the report's path go to stdout."""

from __future__ import annotations

import threading
import time
from collections import deque

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table


class SearchUI:
    """Plain lines: the base the live view builds on, and what tests and logs get."""

    def __init__(self, console: Console, quiet: bool = False):
        self.console = console
        self.quiet = quiet
        self.phase_name = "starting"
        self.detail = ""
        self.evaluated = 0
        self.budget = 0
        self.failed = 0
        self.best: dict | None = None
        self.target_ms: float | None = None
        self.temperature_c: float | None = None
        self.recent: deque[dict] = deque(maxlen=6)
        self.t0 = time.perf_counter()
        self._lock = threading.Lock()

    def __enter__(self) -> SearchUI:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def log(self, text: str) -> None:
        if not self.quiet:
            self.console.print(escape(text))

    def phase(self, name: str, detail: str = "") -> None:
        with self._lock:
            self.phase_name, self.detail = name, detail
        self.log(f"[{self._elapsed()}] {name}" + (f": {detail}" if detail else ""))

    def progress(self, evaluated: int, budget: int) -> None:
        self.evaluated, self.budget = evaluated, budget

    def temperature(self, c: float | None) -> None:
        if c is not None:
            self.temperature_c = c

    def candidate(self, rec: dict) -> None:
        with self._lock:
            self.recent.append(rec)
            if rec.get("status") == "failed":
                self.failed += 1
            elif rec.get("meets_target") and (self.best is None
                                              or rec["accuracy"] > self.best["accuracy"]):
                self.best = rec
        self.log(self.describe(rec))

    def describe(self, rec: dict) -> str:
        cid = rec.get("id")
        if rec.get("status") == "failed":
            return f"candidate {cid}: failed: {rec.get('error')}"
        lat = rec.get("latency_ms")
        mark = "meets target" if rec.get("meets_target") else "over target"
        cached = " (cached)" if rec.get("latency", {}).get("cached") else ""
        return (f"candidate {cid}: acc {rec['accuracy']:.4f}, {lat:.3f} ms{cached} ({mark}), "
                f"reward {rec['reward']:.4f}: {rec.get('summary', '')}")

    def _elapsed(self) -> str:
        s = int(time.perf_counter() - self.t0)
        return f"{s // 60:02d}:{s % 60:02d}"


class LiveView(SearchUI):
    """The same events, drawn as a panel that refreshes in place (a terminal only)."""

    def __init__(self, console: Console):
        super().__init__(console)
        self.live = Live(self, console=console, refresh_per_second=2, transient=False)

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.live.__exit__(*exc)

    def log(self, text: str) -> None:
        self.live.console.print(escape(text))

    def __rich__(self):
        with self._lock:
            head = Table.grid(padding=(0, 2))
            head.add_column(style="bold")
            head.add_column()
            head.add_row("phase", escape(self.phase_name + (f": {self.detail}" if self.detail
                                                            else "")))
            if self.budget:
                head.add_row("candidates", f"{self.evaluated}/{self.budget} evaluated"
                             + (f", {self.failed} failed" if self.failed else ""))
            if self.target_ms is not None:
                head.add_row("target", f"{self.target_ms:.3f} ms")
            b = self.best
            head.add_row("best so far", "-" if b is None else
                         f"acc {b['accuracy']:.4f} at {b['latency_ms']:.3f} ms "
                         f"(candidate {b['id']}): {escape(b.get('summary', ''))}")
            head.add_row("device temp", "not reported (no thermal sensor)"
                         if self.temperature_c is None else f"{self.temperature_c:.1f} °C")
            head.add_row("elapsed", self._elapsed())
            recent = Table(title="last candidates", title_justify="left", expand=False)
            for col in ("id", "acc", "ms", "reward", "choices"):
                recent.add_column(col, justify="left" if col == "choices" else "right")
            for r in self.recent:
                if r.get("status") == "failed":
                    recent.add_row(str(r["id"]), "-", "-", "-", "[red]failed[/red]")
                else:
                    ms = f"{r['latency_ms']:.3f}"
                    if not r.get("meets_target"):
                        ms = f"[yellow]{ms}[/yellow]"
                    recent.add_row(str(r["id"]), f"{r['accuracy']:.4f}", ms,
                                   f"{r['reward']:.4f}", escape(r.get("summary", "")))
            return Panel(Group(head, recent), title="npas-host search")
