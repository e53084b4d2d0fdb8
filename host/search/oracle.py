"""The latency oracle: compile a candidate with the code generator and time it on the device.

The oracle opens the measuring session itself and asks the runner what it is (``info``); the
toolchain follows from that answer (host/targets.py), so nothing outside has to fetch the
device's description first. The measurement settings are one MeasureConfig (host/measure.py).

One worker thread compiles and measures while the search's main thread fine-tunes the same
candidate for its accuracy (``submit`` returns a future). Compiling happens in a separate
process: capture traces the model with torch.fx, which patches ``nn.Module.__call__`` for the
whole process while it traces, so a model trained in another thread at that moment would run
through the tracer. The process also keeps a crash in the compiler away from the search. It
ends with the search, even a SIGKILLed one, which runs no cleanup: it watches its parent
(``compile_pool``), and multiprocessing's resource tracker, which waits for every process
holding its pipe, then ends too.

Results are cached by the bundle's content hash (kernels + weights + manifest: the same hash
is the same program), in memory and in ``latency.jsonl`` in the run folder, so a resumed run or
a repeated candidate is not measured again. Failures are results, not exceptions: a candidate
that does not compile, or whose measurement loses the runner twice (the session restarts it
and retries once; then the oracle restarts the device and tries once more), comes back with
``ok=False`` and the errors.

When the device shares this machine's CPU (the local runner, qemu), training must not run while
the runner is timing: ``quiet`` is a lock the trainer takes around each step and the oracle
holds for the timed runs only (compiling overlaps training; timing does not).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from codegen import Bundle, CodegenError, CompileError, compile_model, read_report

from ..devices import Device
from ..devices.session import Session
from ..measure import MeasureConfig
from ..rpc.client import RunnerError
from ..targets import toolchain_for_device

CACHE_NAME = "latency.jsonl"


PARENT_POLL_S = 0.2


def _child_init(parent: int) -> None:
    torch.set_num_threads(1)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True,
                     name="npas-parent-watch").start()


def _exit_with_parent(parent: int) -> None:
    """End this process once ``parent`` is gone (the process is re-parented then); a compile
    in progress is abandoned: nobody is left to read its result."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(1)


def compile_pool() -> ProcessPoolExecutor:
    """One spawned compile process that exits when this process does, however it ends."""
    return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_child_init, initargs=(os.getpid(),))


def _compile(model: nn.Module, example: torch.Tensor, out: Path, name: str, toolchain,
             schemes: dict[str, str], calibration=None, keep_fp32=()) -> tuple[Bundle, list]:
    """Runs in the compile process; also returns the conv/linear steps that run int8."""
    bundle = compile_model(model, (example,), out, name=name, toolchain=toolchain,
                           schemes=schemes, calibration=calibration, keep_fp32=keep_fp32)
    if calibration is None:
        return bundle, []
    fp32 = read_report(out).fp32_layers
    return bundle, [s.name for s in bundle.manifest.steps
                    if s.op in ("conv2d", "linear") and s.name not in fp32]


@dataclass
class LatencyResult:
    ok: bool
    median_ms: float | None = None
    content_hash: str = ""
    samples_ns: list[int] = field(default_factory=list)
    warmup_ns: list[int] = field(default_factory=list)
    init_ns: int = 0
    threads: int = 0
    telemetry_before: dict | None = None
    telemetry_after: dict | None = None
    layers: list[dict] = field(default_factory=list)  # per layer: name, op, median_ms
    compile_s: float = 0.0
    measure_s: float = 0.0
    cached: bool = False
    restarts: int = 0
    attempts: int = 0
    errors: list[str] = field(default_factory=list)
    bundle_dir: str | None = None
    # what the measurement sent over the link (0: the runner had every artifact) and how long
    # that took; the bundle's weights as shipped (compact) and as loaded
    upload_bytes: int = 0
    upload_s: float = 0.0
    weights_shipped_bytes: int = 0
    weights_loaded_bytes: int = 0
    # --precisions: the conv/linear steps that ran int8 in the compiled bundle (its report)
    int8_layers: list[str] = field(default_factory=list)

    def to_record(self) -> dict:
        d = asdict(self)
        if not d["int8_layers"]:  # a float32 bundle's record, as before --precisions
            d.pop("int8_layers")
        return d

    @staticmethod
    def from_record(d: dict) -> LatencyResult:
        known = {k: v for k, v in d.items() if k in LatencyResult.__dataclass_fields__}
        return LatencyResult(**known)

    @property
    def temperature_c(self) -> float | None:
        """The hottest thermal zone after the runs (None where the OS exposes none)."""
        t = (self.telemetry_after or {}).get("thermal_millicelsius") or {}
        return max(t.values()) / 1000.0 if t else None

    @property
    def p10_ms(self) -> float | None:
        if not self.samples_ns:
            return None
        s = sorted(self.samples_ns)
        return s[len(s) // 10] / 1e6

    @property
    def p90_ms(self) -> float | None:
        if not self.samples_ns:
            return None
        s = sorted(self.samples_ns)
        return s[min(len(s) - 1, (9 * len(s)) // 10)] / 1e6


_CACHED_TYPES: dict[str, tuple[type, ...]] = {
    "content_hash": (str,), "samples_ns": (list,), "warmup_ns": (list,), "init_ns": (int,),
    "threads": (int,), "telemetry_before": (dict, type(None)),
    "telemetry_after": (dict, type(None)), "layers": (list,), "compile_s": (int, float),
    "measure_s": (int, float), "cached": (bool,), "restarts": (int,), "attempts": (int,),
    "errors": (list,), "upload_bytes": (int,), "upload_s": (int, float),
    "weights_shipped_bytes": (int,), "weights_loaded_bytes": (int,), "int8_layers": (list,)}


def read_cache(path: Path) -> dict[str, dict]:
    """The measurements ``latency.jsonl`` holds: key → result record. It is a cache: a line
    that is not a successful measurement of the right shape (torn, edited) is skipped, and
    that candidate is measured again."""
    try:
        data = path.read_bytes()
    except OSError:
        return {}
    out = {}
    for line in data.splitlines():
        try:
            d = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            continue
        if not isinstance(d, dict) or not isinstance(d.get("key"), str):
            continue
        r = d.get("result")
        if (isinstance(r, dict) and r.get("ok") is True
                and isinstance(r.get("median_ms"), int | float)
                and not isinstance(r.get("median_ms"), bool)
                and all(isinstance(r[k], t) and (bool in t or not isinstance(r[k], bool))
                        for k, t in _CACHED_TYPES.items() if k in r)
                and all(isinstance(x, int) and not isinstance(x, bool)
                        for k in ("samples_ns", "warmup_ns") for x in r.get(k, []))
                and all(isinstance(la, dict) for la in r.get("layers", []))
                and _thermal_ok(r.get("telemetry_after"))):
            out[d["key"]] = r
    return out


def _thermal_ok(telemetry: dict | None) -> bool:
    t = (telemetry or {}).get("thermal_millicelsius") or {}
    return isinstance(t, dict) and all(isinstance(v, int | float) and not isinstance(v, bool)
                                       for v in t.values())


class LatencyOracle:
    """Compiles and times candidates on ``device`` with the settings ``cfg``; ``toolchain``
    None means the one for what the device's runner reports (``info``)."""

    def __init__(self, device: Device, example: torch.Tensor, cfg: MeasureConfig, *,
                 toolchain=None, cache_path: Path | None = None,
                 quiet: threading.Lock | None = None,
                 on_event: Callable[[str], None] | None = None):
        self.device, self.example, self.cfg = device, example, cfg
        self.quiet = quiet
        self.on_event = on_event or (lambda _m: None)
        self.session = Session(device, on_event=self.on_event)  # the device's call timeout
        self.info = self.session.client.device_info()
        self.toolchain = toolchain if toolchain is not None else toolchain_for_device(self.info)
        self._int8_toolchain = None
        self.cache: dict[str, dict] = {}
        self.cache_path = cache_path
        self._cache_lock = threading.Lock()
        self._session_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="npas-latency")
        self._compiler: ProcessPoolExecutor | None = None
        self._compiler_lock = threading.Lock()
        self.restarts = 0  # device restarts by the oracle (the session counts its own)
        # test hook: called with (tag, attempt) right before a benchmark
        self.before_benchmark: Callable[[str, int], None] | None = None
        if cache_path is not None:
            self.load_cache(cache_path)

    # --- cache --------------------------------------------------------------------------------
    def share_cache(self, other: LatencyOracle) -> None:
        """Use ``other``'s cache (devices of one model in a pool: oracle_pool.py)."""
        self.cache, self._cache_lock = other.cache, other._cache_lock

    def load_cache(self, path: Path) -> None:
        self.cache_path = path
        self.cache.update(read_cache(path))

    def persist(self, path: Path) -> None:
        """From now on keep the cache in ``path`` (written now with everything known)."""
        with self._cache_lock:
            self.cache_path = path
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps({"key": k, "result": v}) + "\n"
                                   for k, v in self.cache.items()))
            tmp.replace(path)

    def _remember(self, key: str, result: LatencyResult) -> None:
        rec = result.to_record()
        rec.pop("bundle_dir", None)
        with self._cache_lock:
            self.cache[key] = rec
            if self.cache_path is not None:
                with open(self.cache_path, "a") as f:
                    f.write(json.dumps({"key": key, "result": rec}) + "\n")

    def _key(self, content_hash: str, per_layer: bool) -> str:
        c = self.cfg
        return f"{content_hash}:r{c.runs}:w{c.warmup}:t{c.threads}{':layers' if per_layer else ''}"

    # --- measuring ---------------------------------------------------------------------------
    def int8_toolchain(self):
        """The device's int8 toolchain (--precisions with int8); raises where it has none."""
        if self._int8_toolchain is None:
            self._int8_toolchain = toolchain_for_device(self.info, precision="int8")
        return self._int8_toolchain

    def submit(self, tag: str, model: nn.Module, schemes: dict[str, str], bundle_dir: Path,
               keep_bundle: bool = False, int8=None) -> Future:
        """Compile and measure on the worker thread; the future gives a LatencyResult."""
        return self._pool.submit(self.measure, tag, model, schemes, bundle_dir, False,
                                 keep_bundle, True, int8)

    def measure(self, tag: str, model: nn.Module, schemes: dict[str, str], bundle_dir: Path,
                per_layer: bool = False, keep_bundle: bool = True,
                use_cache: bool = True, int8=None) -> LatencyResult:
        """``int8``: a ``precision.Int8Spec`` (compiled with the int8 toolchain, its
        ``keep_fp32`` in float32), or None (float32)."""
        t0 = time.perf_counter()
        bundle_dir = Path(bundle_dir)
        int8_layers: list[str] = []
        try:
            model = model.cpu().eval()
            name = "".join(ch if ch.isalnum() or ch in "_.-" else "_" for ch in tag) or "model"
            bundle, int8_layers = self._compile_remote(model, bundle_dir, name, schemes, int8)
        except (CodegenError, CompileError, ValueError, BrokenProcessPool) as e:
            shutil.rmtree(bundle_dir, ignore_errors=True)
            return LatencyResult(ok=False, errors=[f"compile: {e}"],
                                 compile_s=time.perf_counter() - t0)
        compile_s = time.perf_counter() - t0
        key = self._key(bundle.manifest.content_hash, per_layer)
        try:
            cached = self.cache.get(key) if use_cache else None
            if cached is not None:
                r = LatencyResult.from_record(cached)
                r.cached, r.compile_s, r.measure_s, r.restarts, r.attempts = \
                    True, compile_s, 0.0, 0, 0
                r.bundle_dir = str(bundle_dir) if keep_bundle else None
                r.int8_layers = int8_layers
                return r
            r = self._benchmark(tag, bundle, per_layer)
            r.compile_s, r.int8_layers = compile_s, int8_layers
            if r.ok:
                self._remember(key, r)
            r.bundle_dir = str(bundle_dir) if keep_bundle else None
            return r
        finally:
            if not keep_bundle:
                shutil.rmtree(bundle_dir, ignore_errors=True)

    def _compile_remote(self, model: nn.Module, out: Path, name: str,
                        schemes: dict[str, str], int8=None) -> tuple[Bundle, list[str]]:
        with self._compiler_lock:
            if self._compiler is None:
                self._compiler = compile_pool()
            pool = self._compiler
        try:
            if int8 is None:
                return pool.submit(_compile, model, self.example, out, name, self.toolchain,
                                   dict(schemes)).result()
            return pool.submit(_compile, model, self.example, out, name, self.int8_toolchain(),
                               dict(schemes), int8.calibration, tuple(int8.keep_fp32)).result()
        except BrokenProcessPool:
            with self._compiler_lock:  # the next candidate gets a fresh process
                if self._compiler is pool:
                    self._compiler = None
            raise BrokenProcessPool(f"the compiler process died compiling {name}") from None

    def _benchmark(self, tag: str, bundle, per_layer: bool) -> LatencyResult:
        errors: list[str] = []
        restarts = 0
        t0 = time.perf_counter()
        for attempt in range(2):
            before = self.session.restarts
            try:
                with self._session_lock:
                    if self.before_benchmark is not None:
                        self.before_benchmark(tag, attempt)
                    key = self.session.load(bundle, self.cfg)
                    upload = self.session.upload(key)
                    try:
                        with self.quiet if self.quiet is not None else contextlib.nullcontext():
                            res = self.session.benchmark(key, replace(self.cfg,
                                                                         per_layer=per_layer))
                    finally:
                        with contextlib.suppress(RunnerError):
                            self.session.unload(key)
                restarts += self.session.restarts - before
                d = res.to_dict()
                layers = [{"name": la.name, "op": la.op, "median_ms": la.median_ms}
                          for la in res.layers]
                return LatencyResult(
                    ok=True, median_ms=statistics.median(res.samples_ns) / 1e6,
                    content_hash=bundle.manifest.content_hash,
                    samples_ns=list(res.samples_ns), warmup_ns=list(res.warmup_ns),
                    init_ns=res.init_ns, threads=res.threads,
                    telemetry_before=d["telemetry_before"], telemetry_after=d["telemetry_after"],
                    layers=layers, measure_s=time.perf_counter() - t0, restarts=restarts,
                    attempts=attempt + 1, errors=errors, upload_bytes=upload.bytes,
                    upload_s=round(upload.seconds, 6),
                    weights_shipped_bytes=bundle.manifest.shipped_weights_bytes,
                    weights_loaded_bytes=bundle.manifest.weights_bytes)
            except RunnerError as e:
                restarts += self.session.restarts - before
                errors.append(str(e))
                self.on_event(f"{tag}: measurement failed (attempt {attempt + 1}): {e}")
                if attempt == 0:
                    try:
                        self._restart()
                        restarts += 1
                    except Exception as e2:  # a phone that is gone, a remote runner
                        errors.append(f"restart: {e2}")
                        break
        return LatencyResult(ok=False, content_hash=bundle.manifest.content_hash,
                             measure_s=time.perf_counter() - t0, restarts=restarts,
                             attempts=len([e for e in errors if not e.startswith("restart")]),
                             errors=errors)

    def _restart(self) -> None:
        """A fresh runner and session (a crashed kernel can leave the runner in any state)."""
        with self._session_lock:
            self.device.restart()  # may raise: then the old session stays (and recovers later)
            self.restarts += 1
            with contextlib.suppress(Exception):
                self.session.close()
            self.session = Session(self.device, on_event=self.on_event)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._compiler is not None:
            self._compiler.shutdown(wait=True, cancel_futures=True)
        with contextlib.suppress(Exception):
            self.session.close()
