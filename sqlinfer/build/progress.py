"""A running node's progress: while one node of a build runs, a line every :data:`EVERY_S` seconds
with its Spark tasks done so far and the rows its model functions have scored.

A node over 10^9 rows runs for hours, and the build's own line for it comes at its end. Spark's
console progress bar is off in sqlinfer's sessions (it would draw over the build's lines), and its
web UI is not where a terminal or a CI log looks. The line comes from Spark's status tracker (the
node's jobs, by the job group the runner gives them) and from the model functions' counters (rows
of finished tasks), read on a thread of its own while the node's statement blocks the build's.
A node that ends sooner prints nothing more.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import TracebackType

    from pyspark.sql import SparkSession

EVERY_S = 30.0  # seconds between two lines of one node (the first after as long)


class NodeProgress:
    """``with NodeProgress(...):`` around a node's run: ``report`` gets a line such as
    ``      predictions: 3 of 8 tasks done, 1,000 rows scored, 30 s`` every ``every_s`` seconds."""

    def __init__(self, spark: SparkSession, group: str, name: str, report: Callable[[str], None],
                 scored: Callable[[], int], every_s: float | None = None) -> None:
        self.spark, self.group, self.name, self.report, self.scored = spark, group, name, report, scored
        self.every_s = EVERY_S if every_s is None else every_s
        self._started = time.perf_counter()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sqlinfer-progress-{name}", daemon=True)

    def __enter__(self) -> NodeProgress:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._done.wait(self.every_s):
            try:
                line = self.line()
            except Exception:  # e.g. the session ending under the node, whose own error says why
                continue
            if not self._done.is_set():
                self.report(line)

    def line(self) -> str:
        """Where the node is now: tasks done of the tasks its jobs' stages have so far, rows scored."""
        tracker = self.spark.sparkContext.statusTracker()
        done = total = 0
        for job_id in tracker.getJobIdsForGroup(self.group):
            job = tracker.getJobInfo(job_id)
            for stage_id in job.stageIds if job else []:
                stage = tracker.getStageInfo(stage_id)
                if stage is not None:
                    done, total = done + stage.numCompletedTasks, total + stage.numTasks
        parts = [f"{done:,} of {total:,} tasks done" if total else "starting"]
        scored = self.scored()
        if scored:
            parts.append(f"{scored:,} rows scored")
        parts.append(f"{time.perf_counter() - self._started:,.0f} s")
        return f"      {self.name}: {', '.join(parts)}"
