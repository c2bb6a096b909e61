"""One network per worker process and model fingerprint: built on first use, then reused by
every task the process runs (Spark reuses Python workers), like pyspark's ``ml/model_cache.py``;
or built once in the worker daemon before it forks, and inherited by every worker
(:func:`prebuild`, sqlinfer/runtime/daemon.py). A function whose weights or declaration change
(a new fingerprint) replaces its old network in the process."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable

from sqlinfer.models.flavors.base import Weights
from sqlinfer.models.network import Network
from sqlinfer.models.plan import ModelPlan
from sqlinfer.worker.device import choose_device

Stats = Callable[[dict[str, float]], None]

_NETWORKS: dict[tuple[str, str], Network] = {}
_BUILD_LOCK = threading.Lock()
# Networks this process got built from the daemon it was forked from, not yet reported: each
# worker reports its inherited networks once, on first use (a copy of the set per fork).
_INHERITED: set[tuple[str, str]] = set()


def prebuild(plan: ModelPlan, load_weights: Callable[[], Weights]) -> None:
    """Build ``plan``'s network on the CPU in this process, for the workers it will fork to
    inherit (the worker daemon, before its first fork). Its tensors stay in pages shared with
    every worker: copy-on-write pages that inference only reads."""
    key = (plan.fingerprint, "cpu")
    _NETWORKS[key] = Network(plan, load_weights(), "cpu")
    _INHERITED.add(key)


def get_model(plan: ModelPlan, load_weights: Callable[[], Weights], stats: Stats) -> Network:
    """The process-wide model for this plan and device, built on first use only."""
    device = choose_device(plan.decl.device)
    key = (plan.fingerprint, device)
    model = _NETWORKS.get(key)
    if model is not None:
        if key in _INHERITED:
            _INHERITED.discard(key)
            stats({"inherited": 1})
        return model
    with _BUILD_LOCK:
        if key not in _NETWORKS:
            _drop_replaced(plan)
            started = time.perf_counter()
            _NETWORKS[key] = Network(plan, load_weights(), device)
            # The worker keeps what it has imported and built so far for its whole life: out of
            # the collection PySpark runs after every task (see runtime/daemon.py), it costs no task.
            gc.freeze()
            # built_at (epoch seconds) lets the bench place the build on the cold start's timeline.
            stats({"builds": 1, "build_seconds": time.perf_counter() - started, "built_at": time.time()})
    return _NETWORKS[key]


def _drop_replaced(plan: ModelPlan) -> None:
    """Drop the networks this process holds for ``plan``'s function under another fingerprint:
    the function's weights or declaration changed. A kept session's workers live across commands
    (sqlinfer/runtime/kept_server.py), and each retrained version would otherwise stay in every
    worker until it ends."""
    stale = [key for key, network in _NETWORKS.items()
             if network.plan.udf_name == plan.udf_name and key[0] != plan.fingerprint]
    if not stale:
        return
    for key in stale:
        del _NETWORKS[key]
        _INHERITED.discard(key)
    # A network folded through torch.fx holds itself in a reference cycle (its graph and module
    # name each other), and get_model froze it out of the collector's reach after its build: only
    # unfrozen can it be collected. get_model freezes again after the new build.
    gc.unfreeze()
    gc.collect()
