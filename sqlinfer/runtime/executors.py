"""The executors of a session on a cluster: whether their Python can run sqlinfer, and which tasks
they ran for a build's node.

On a local master the workers run this very interpreter, so there is nothing to check. On a
cluster (``spark://``, ``yarn``, ``k8s://``) each executor starts the Python that
``spark.pyspark.python`` names on its own machine; if that Python lacks sqlinfer or torch, the
first model query would fail deep inside a task with a pickle error about a missing module. A
tiny job at session start asks every executor instead, and turns a missing package into one error
that says what to install (docs/cluster.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlinfer.errors import SessionError
from sqlinfer.runtime.settings import is_local

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# What a Python worker must import to score a model.
REQUIRED = ("sqlinfer", "torch", "pyarrow", "numpy")

# The probe is compiled in a module of its own name, which no executor has: cloudpickle then ships
# the function by value. (A function of an installed sqlinfer module is shipped by reference, and
# an executor without sqlinfer would fail to unpickle it before it could say what is missing.)
_PROBE_SOURCE = '''
def probe(_):
    import importlib.util, socket, sys

    def found(name):
        try:
            return importlib.util.find_spec(name) is not None
        except Exception:  # a broken install: as good as missing
            return False

    missing = [name for name in REQUIRED if not found(name)]
    yield (socket.gethostname(), sys.executable, sys.version.split()[0], tuple(missing))
'''


def _probe() -> Callable[[Any], Iterator[tuple[str, str, str, tuple[str, ...]]]]:
    namespace: dict[str, Any] = {"__name__": "sqlinfer_executor_probe", "REQUIRED": REQUIRED}
    exec(compile(_PROBE_SOURCE, "<sqlinfer executor probe>", "exec"), namespace)  # our own constant
    probe: Callable[[Any], Iterator[tuple[str, str, str, tuple[str, ...]]]] = namespace["probe"]
    return probe


def check_executor_python(spark: SparkSession) -> None:
    """Fail with ``session.executor_env`` unless every executor's Python imports :data:`REQUIRED`.

    One task per core the cluster offers (at least two), so each executor answers as long as all
    have registered; one that registers later is not checked (its first task fails as it would).
    """
    sc = spark.sparkContext
    tasks = max(2, sc.defaultParallelism)
    sc.setLocalProperty("spark.job.description", "sqlinfer: check the executors' Python")
    try:
        answers = set(sc.parallelize(range(tasks), tasks).mapPartitions(_probe()).collect())
    except Exception as exc:  # the executors could not start Python at all
        raise SessionError(f"the executors could not run Python ({sc.getConf().get('spark.pyspark.python')}): "
                           f"{_reason(str(exc))}", code="session.executor_env") from None
    finally:
        sc.setLocalProperty("spark.job.description", None)
    lacking = sorted((host, python, version, missing) for host, python, version, missing in answers if missing)
    if lacking:
        host, python, version, missing = lacking[0]
        others = f" (and {len(lacking) - 1} more executors)" if len(lacking) > 1 else ""
        raise SessionError(
            f"the executors' Python cannot import {', '.join(missing)}: {python} (Python {version}) on {host}"
            f"{others}. Install sqlinfer and torch there (pip install sqlinfer, with the driver's versions), or "
            "ship a packed virtualenv with spark.archives and point spark.pyspark.python into it "
            "(docs/cluster.md)", code="session.executor_env")


def _reason(error: str) -> str:
    """The line of a Spark error that says why: the last ``SomeError: ...`` line of the Python
    traceback inside it, else its first line."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    reasons = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): ", line)]
    return reasons[-1] if reasons else (lines[0] if lines else "unknown error")


@dataclass
class TaskSummary:
    """What Spark ran for one job group (a node of a build): task attempts and where they ran."""

    tasks: int = 0  # task attempts that succeeded
    failed: int = 0  # attempts that failed or were lost with their executor, then run again
    executors: list[str] = field(default_factory=list)  # ids of the executors the tasks ran in


def task_summary(spark: SparkSession, group: str) -> TaskSummary:
    """The tasks of the jobs run under ``group`` (``SparkContext.setJobGroup``), from Spark's status
    store (kept whether or not the UI runs); empty if Spark has forgotten them."""
    sc = spark.sparkContext
    jsc: Any = sc._jsc
    jvm_context = jsc.sc()
    jvm_context.listenerBus().waitUntilEmpty(10_000)  # the store is filled by the listener bus, later
    store = jvm_context.statusStore()
    summary = TaskSummary()
    executors: set[str] = set()
    tracker = sc.statusTracker()
    for job_id in tracker.getJobIdsForGroup(group):
        job = tracker.getJobInfo(job_id)
        for stage_id in job.stageIds if job else []:
            stage = tracker.getStageInfo(stage_id)
            for attempt in range(stage.currentAttemptId + 1 if stage else 0):
                try:
                    listed = store.taskList(stage_id, attempt, 1_000_000)
                except Exception:  # a skipped stage, or an attempt the store no longer holds
                    continue
                for index in range(listed.size()):
                    task = listed.apply(index)
                    if task.status() == "SUCCESS":
                        summary.tasks += 1
                        executors.add(task.executorId())
                    elif task.status() in ("FAILED", "KILLED"):
                        summary.failed += 1
    summary.executors = sorted(executors, key=lambda e: (not e.isdigit(), int(e) if e.isdigit() else 0, e))
    return summary


def embedded_metastore_warning(settings: dict[str, str]) -> str | None:
    """A warning when a cluster master meets the embedded Derby metastore and a local warehouse."""
    master = settings["spark.master"]
    if is_local(master) or settings.get("spark.hadoop.hive.metastore.uris"):
        return None
    if not settings.get("spark.hadoop.javax.jdo.option.ConnectionURL", "").startswith("jdbc:derby:"):
        return None
    return (f"the project uses its embedded metastore (Derby, one process at a time, on this machine) with "
            f"master {master}: tables are written to {settings['spark.sql.warehouse.dir']}, which every executor "
            "must be able to reach. For a cluster, set spark.sql.warehouse.dir to shared storage and "
            "spark.hadoop.hive.metastore.uris to a shared Hive metastore (docs/cluster.md)")
