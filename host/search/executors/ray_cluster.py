"""Phase 2's fine-tunes as Ray tasks: on a cluster someone started (``--ray-address``) or on a
one-node cluster this process starts (``--workers N`` worker processes).

What is shipped once: the phase-1 model, the dataset, the space and the training settings go
into Ray's object store in one ``ray.put``; each task gets a reference and a worker process
keeps what it fetched, so a candidate costs only its encoding on the wire. Each task asks for
what its fine-tune needs (``num_cpus`` = ``--train-threads``, ``num_gpus`` 1 with
``--train-device cuda``).

Faults: Ray retries a task whose worker process died (killed, out of memory, node lost)
``MAX_RETRIES`` times, on whatever worker is free; an exception inside the fine-tune is a
result (the candidate failed), not a retry. Every attempt first registers with a small
``Ledger`` actor, so the result says how many attempts it took and where the lost ones ran:
the driver journals that as the candidate's restarts. Only the driver writes files.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..config import SearchConfig, SearchError
from ..space import Candidate

MAX_RETRIES = 3  # Ray's default for system failures, written out
INSTALL_HINT = ("install it with `.venv/bin/pip install -e '.[ray]'` (or `pip install "
                "'npas[ray]'`)")
_SHARED: dict[str, Any] = {}  # in a worker process: what it fetched, by object id


def require_ray():
    """The ray module, or a SearchError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise SearchError(f"--executor ray needs Ray, which is not installed in this Python "
                          f"({os.path.dirname(os.__file__)}): {INSTALL_HINT}") from None
    return ray


@dataclass
class Shared:
    """What every fine-tune reads, put in the object store once."""

    base: torch.nn.Module
    data: Any
    space: Any
    cfg: SearchConfig
    train_cfg: Any
    gate: Any  # a FileGate when a runner on the driver's CPU times (else None)


def _fine_tune(shared_ref: list, cid: int, encoding: list, ledger, hook) -> dict:
    """One candidate's accuracy, in a worker process (a Ray task)."""
    import ray

    from ..finetune import finetune

    ctx = ray.get_runtime_context()
    where = {"node": ctx.get_node_id()[:12], "pid": os.getpid()}
    before = ray.get(ledger.begin.remote(cid, where))
    attempt = len(before) + 1
    ref = shared_ref[0]
    sh = _SHARED.get(ref.hex())
    if sh is None:
        _SHARED.clear()  # another search's objects
        sh = _SHARED[ref.hex()] = ray.get(ref)
    if hook is not None:
        hook(cid, attempt)  # tests: kill this worker mid-evaluation
    torch.set_num_threads(max(1, sh.cfg.train_threads))
    c = Candidate.from_json(encoding)
    t0 = time.perf_counter()
    gate = sh.gate.trainer() if sh.gate is not None else None
    try:
        pruned = sh.space.realize(sh.base, c)
    except Exception as e:  # the driver realized it already; this would be a bug, not a retry
        return {"cid": cid, "accuracy": None, "error": f"pruning on the worker: {e}",
                "finetune_s": 0.0, "attempt": attempt, "lost": before, "worker": where}
    cfg = sh.cfg
    if cfg.train_device.startswith("cuda"):  # Ray gave this task its GPU as device 0
        from dataclasses import replace

        cfg = replace(cfg, train_device="cuda")
    acc, err = finetune(pruned, c, sh.data, cfg, sh.train_cfg, gate)
    return {"cid": cid, "accuracy": acc, "error": err,
            "finetune_s": time.perf_counter() - t0, "attempt": attempt, "lost": before,
            "worker": where}


def _reachable(address: str, timeout_s: float = 5.0) -> None:
    """A SearchError unless something accepts connections at HOST:PORT ('auto' and
    'ray://...' are left to Ray)."""
    if address == "auto" or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise SearchError(f"--ray-address {address!r}: HOST:PORT of the cluster's head (ray "
                          f"start --head prints it), or auto on a node of the cluster")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise SearchError(f"--ray-address {address}: nothing answers there ({e.strerror or e}); "
                          f"start the head (.venv/bin/ray start --head --port {port}) or give "
                          f"its address") from None


class _Ledger:
    """Attempts per candidate: where each one ran (a Ray actor on the driver's cluster)."""

    def __init__(self) -> None:
        self.attempts: dict[int, list[dict]] = {}

    def begin(self, cid: int, where: dict) -> list[dict]:
        """Registers an attempt; returns the earlier ones (lost, or the task would be done)."""
        seen = self.attempts.setdefault(cid, [])
        before = list(seen)
        seen.append(where)
        return before


class RayExecutor:
    """Fine-tunes on Ray. ``capacity``: candidates in flight at once."""

    def __init__(self, cfg: SearchConfig, on_event: Callable[[str], None] | None = None,
                 hook: Callable[[int, int], None] | None = None):
        ray = require_ray()
        self.ray, self.cfg, self.hook = ray, cfg, hook
        self.on_event = on_event or (lambda _m: None)
        gpu = cfg.train_device.startswith("cuda")
        self.owned = False
        if not ray.is_initialized():
            if cfg.ray_address:
                _reachable(cfg.ray_address)  # Ray itself retries a dead address for minutes
            try:
                if cfg.ray_address:
                    ray.init(address=cfg.ray_address, include_dashboard=False,
                             log_to_driver=False)
                else:
                    ray.init(num_cpus=max(1, cfg.workers) * max(1, cfg.train_threads),
                             num_gpus=(torch.cuda.device_count() if gpu else 0),
                             include_dashboard=False, log_to_driver=False)
            except (ConnectionError, ValueError, RuntimeError) as e:
                where = (f"the Ray cluster at --ray-address {cfg.ray_address}"
                         if cfg.ray_address else "a local Ray cluster")
                raise SearchError(f"could not start or reach {where}: {e}") from None
            self.owned = True
        res = ray.cluster_resources()
        cpus, gpus = int(res.get("CPU", 0)), int(res.get("GPU", 0))
        per = max(1, cfg.train_threads)
        if gpu and gpus < 1:
            self.close()
            raise SearchError("--train-device cuda with --executor ray: the Ray cluster has "
                              "no GPU (start its nodes with GPUs visible, or train on cpu)")
        fits = gpus if gpu else cpus // per
        if fits < 1:
            self.close()
            raise SearchError(f"the Ray cluster has {cpus} CPUs: a fine-tune needs {per} "
                              f"(--train-threads)")
        self.capacity = min(cfg.workers, fits) if cfg.workers else fits
        self.desc = (f"Ray {ray.__version__}, {len(ray.nodes())} node(s), {cpus} CPUs, "
                     f"{gpus} GPUs; {self.capacity} fine-tunes at once")
        self._task = ray.remote(_fine_tune).options(
            num_cpus=per, num_gpus=1 if gpu else 0, max_retries=MAX_RETRIES,
            retry_exceptions=False)
        self.ledger = ray.remote(_Ledger).options(num_cpus=0).remote()
        self.shared_ref = None
        self.pending: dict[Any, int] = {}

    def start(self, shared: Shared) -> None:
        """Put what every fine-tune reads into the object store (once)."""
        self.shared_ref = self.ray.put(shared)

    def submit(self, cid: int, cand: Candidate) -> None:
        ref = self._task.remote([self.shared_ref], cid, cand.to_json(), self.ledger, self.hook)
        self.pending[ref] = cid

    def wait(self, timeout_s: float) -> list[tuple[int, dict]]:
        """The fine-tunes finished within ``timeout_s``: (candidate id, result)."""
        if not self.pending:
            return []
        ray = self.ray
        ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=timeout_s)
        if ready:
            more, _ = ray.wait([r for r in self.pending if r not in ready],
                               num_returns=len(self.pending) - len(ready), timeout=0)
            ready += more
        out = []
        for ref in ready:
            cid = self.pending.pop(ref)
            try:
                out.append((cid, ray.get(ref)))
            except ray.exceptions.RayError as e:  # retries exhausted, or the cluster is gone
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                out.append((cid, {"cid": cid, "accuracy": None, "finetune_s": 0.0,
                                  "error": f"evaluation on Ray: {type(e).__name__}: {first} "
                                           f"(after {MAX_RETRIES} retries)",
                                  "attempt": MAX_RETRIES + 1, "lost": [], "worker": None}))
        return out

    def close(self) -> None:
        for ref in list(self.pending):
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # already finished, or the cluster is gone
                pass
        self.pending.clear()
        if self.owned and self.ray.is_initialized():
            self.ray.shutdown()
            self.owned = False
