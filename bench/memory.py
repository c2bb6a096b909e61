"""Peak resident memory (RSS) and CPU time of a process tree, sampled from outside with psutil.

The bench runs every contender in its own subprocess; a background thread samples that process
and its descendants and sorts them into roles (the driver, the JVM, the PySpark daemon, its
forked Python workers, anything those fork, like DataLoader workers). Figures are kept per named
phase (``cold``, ``warm``, ...), so one session can be measured query by query. Sampling from
outside needs no cooperation from the code under test, so sqlinfer and the baselines are measured
the same way.

Each phase also records how much CPU the whole machine spent outside the measured tree
(``foreign_cpu``): on a shared machine that is the noise in a measurement, shown next to it.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

import psutil

MB = 1024 * 1024


@dataclass
class PhasePeaks:
    """Largest RSS seen per process during one phase, the largest sum over worker-side processes,
    and CPU seconds spent by the tree and by everything else on the machine."""

    per_pid: dict[int, int] = field(default_factory=dict)
    roles: dict[int, str] = field(default_factory=dict)
    started: dict[int, float] = field(default_factory=dict)  # pid -> process create time (epoch s)
    python_total: int = 0  # max over time of the sum of daemon + worker + child RSS
    windows: list[list[float]] = field(default_factory=list)  # [start, end] epoch seconds in this phase
    gpu_utilization: float | None = None  # filled in by the caller when a GPU is sampled
    tree_cpu: float = 0.0  # CPU seconds of the sampled processes during the phase
    role_cpu: dict[str, float] = field(default_factory=dict)  # the same, per role
    jvm_cpu: dict[str, float] = field(default_factory=dict)  # the JVM's, per kind of thread (jvm_thread_kind)
    machine_cpu: float = 0.0  # busy CPU seconds of the whole machine during the phase
    wall: float = 0.0

    def peak(self, role: str) -> int:
        """The largest single-process peak among processes of ``role`` (0 when none ran)."""
        return max((rss for pid, rss in self.per_pid.items() if self.roles[pid] == role), default=0)

    def pids(self, role: str) -> list[int]:
        return sorted(pid for pid, r in self.roles.items() if r == role)

    @property
    def foreign_cpu(self) -> float:
        """Share of the machine's CPU capacity used by other processes during the phase (0-1)."""
        capacity = self.wall * (psutil.cpu_count() or 1)
        return max(0.0, self.machine_cpu - self.tree_cpu) / capacity if capacity else 0.0

    def summary(self) -> dict[str, float]:
        return {
            "driver_mb": self.peak("driver") / MB,
            "jvm_mb": self.peak("jvm") / MB,
            "daemon_mb": self.peak("daemon") / MB,
            "worker_mb": self.peak("worker") / MB,
            "worker_children_mb": self.peak("child") / MB,
            "python_total_mb": self.python_total / MB,
            "workers": len(self.pids("worker")),
            "worker_children": len(self.pids("child")),
            "foreign_cpu": self.foreign_cpu,
            "tree_cpu": self.tree_cpu,
            "gpu_utilization": self.gpu_utilization,
        }


def _role(proc: psutil.Process, roots: dict[int, str], known: dict[int, str]) -> str:
    """The role of ``proc``, decided from its own name and its parent's role:
    root roles as given; ``jvm``; ``daemon`` (the PySpark daemon the JVM starts, and sqlinfer's
    early daemon the driver starts, which takes its place); ``worker`` (the daemon's forks, which
    run the UDFs); ``child`` (what a worker forks, e.g. DataLoader workers);
    ``<role>_child`` below any other root; ``other`` while the parent is not known yet."""
    if proc.pid in roots:
        return roots[proc.pid]
    parent_role = known.get(proc.ppid())
    if proc.name() == "java":
        return "jvm"
    if parent_role is None:
        return "other"
    if parent_role == "driver" and proc.name().startswith("python"):
        return "daemon"  # the only Python process a sqlinfer driver starts: its early daemon
    if parent_role == "jvm":
        return "daemon" if "daemon" in " ".join(proc.cmdline()) else "jvm_child"
    if parent_role == "daemon":
        return "worker"
    if parent_role in ("worker", "child"):
        return "child"
    return parent_role if parent_role.endswith("_child") else f"{parent_role}_child"


def jvm_thread_kind(name: str) -> str:
    """What a JVM thread does, from its name (Linux: /proc/PID/task/TID/comm, 15 characters):
    ``tasks`` (Spark's task threads: file reads, Arrow to and from the Python workers, the parquet
    writer), ``driver`` (py4j's threads, ``Thread-N``: the Python driver's calls, i.e. planning,
    the metastore, registration), ``compiler`` (the JIT), ``gc``, ``other`` (scheduler, listener
    bus, RPC, start-up on the main thread)."""
    if name.startswith("Executor task"):
        return "tasks"
    if name.startswith("Thread-"):
        return "driver"
    if "CompilerThre" in name:
        return "compiler"
    if name.startswith(("GC Thread", "G1 ", "VM Thread", "ParGC")):
        return "gc"
    return "other"


def _thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """tid -> (name, CPU seconds) of a process's threads; empty where /proc cannot tell."""
    ticks = os.sysconf("SC_CLK_TCK")
    threads = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return {}
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm", encoding="utf-8") as comm:
                name = comm.read().strip()
            with open(f"/proc/{pid}/task/{tid}/stat", encoding="ascii") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            threads[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / ticks)
        except (OSError, ValueError, IndexError):
            continue
    return threads


def _machine_busy() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


class RssSampler:
    """Samples ``roots`` (pid -> role) and all their descendants every ``interval`` seconds."""

    def __init__(self, roots: dict[int, str], interval: float = 0.1) -> None:
        self.roots = dict(roots)
        self.interval = interval
        self.phases: dict[str, PhasePeaks] = {}
        self._current = "start"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._known: dict[int, str] = {}
        self._names: dict[int, str] = {}
        self._cpu: dict[int, float] = {}  # pid -> CPU seconds at the last sample
        self._thread_cpu: dict[int, float] = {}  # JVM thread id -> CPU seconds at the last sample
        self._samples = 0
        self._last = (time.monotonic(), _machine_busy())
        self._self = psutil.Process()
        self._own = sum(self._self.cpu_times()[:2])

    def exclude_past(self) -> None:
        """Count only what the roots' processes spend from now on (roots already running, such as
        a kept session, have spent CPU before)."""
        for pid in self.roots:
            try:
                tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
            except psutil.Error:
                continue
            for proc in tree:
                try:
                    times = proc.cpu_times()
                    self._cpu[proc.pid] = times.user + times.system
                    if proc.name() == "java":
                        self._thread_cpu.update((tid, cpu) for tid, (_name, cpu) in _thread_cpu(proc.pid).items())
                except psutil.Error:
                    continue

    def phase(self, name: str) -> None:
        """Figures from now on count towards ``name`` (a phase may be entered more than once)."""
        self._sample()  # close the previous phase with a fresh sample
        now = time.time()
        with self._lock:
            previous = self.phases.get(self._current)
            if previous is not None and previous.windows:
                previous.windows[-1][1] = now
            self._current = name
            self.phases.setdefault(name, PhasePeaks()).windows.append([now, now])

    def __enter__(self) -> RssSampler:
        with self._lock:
            self.phases.setdefault(self._current, PhasePeaks()).windows.append([time.time(), time.time()])
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        with self._lock:
            current = self.phases[self._current]
            if current.windows:
                current.windows[-1][1] = time.time()

    def _loop(self) -> None:
        while not self._stop.is_set():
            # The JVM's threads (a hundred files to read) twice a second, and at every phase change.
            self._samples += 1
            self._sample(threads=self._samples % 5 == 0)
            self._stop.wait(self.interval)

    def _sample(self, threads: bool = True) -> None:
        with self._lock:  # one sample at a time (the thread, and phase() from the caller)
            self._sample_locked(threads)

    def _sample_locked(self, threads: bool) -> None:
        peaks = self.phases.setdefault(self._current, PhasePeaks())
        procs: dict[int, psutil.Process] = {}
        for pid in self.roots:
            try:
                root = psutil.Process(pid)
                procs[pid] = root
                procs.update((child.pid, child) for child in root.children(recursive=True))
            except psutil.Error:
                continue
        total = 0
        # Lower pids first: a parent is almost always older than its children, so its role is
        # known when the child's is decided (a child seen first is decided at the next sample).
        for pid in sorted(procs):
            proc = procs[pid]
            try:
                # A role is kept while the process keeps its name: `spark-submit` (bash) execs
                # into java under the same pid.
                name = proc.name()
                cached = self._names.get(pid) == name and self._known.get(pid)
                role = cached or _role(proc, self.roots, self._known)
                rss = proc.memory_info().rss
                created = proc.create_time()
                times = proc.cpu_times()
            except psutil.Error:
                continue
            if role != "other":
                self._known[pid], self._names[pid] = role, name
            cpu = times.user + times.system
            spent = cpu - self._cpu.get(pid, 0.0)  # a new process: all of its CPU so far
            peaks.tree_cpu += spent
            peaks.role_cpu[role] = peaks.role_cpu.get(role, 0.0) + spent
            self._cpu[pid] = cpu
            peaks.roles[pid] = role
            peaks.started.setdefault(pid, created)
            peaks.per_pid[pid] = max(peaks.per_pid.get(pid, 0), rss)
            if role == "jvm" and threads:
                self._sample_jvm_threads(pid, peaks)
            if role in ("daemon", "worker", "child"):
                total += rss
        peaks.python_total = max(peaks.python_total, total)
        # The bench's own sampling is not someone else's load: count it with the tree.
        own = sum(self._self.cpu_times()[:2])
        peaks.tree_cpu += own - self._own
        self._own = own
        now, busy = time.monotonic(), _machine_busy()
        peaks.wall += now - self._last[0]
        peaks.machine_cpu += busy - self._last[1]
        self._last = (now, busy)

    def _sample_jvm_threads(self, pid: int, peaks: PhasePeaks) -> None:
        """The JVM's CPU since the last sample, by kind of thread (a thread that ended between two
        samples loses its last interval)."""
        for tid, (name, cpu) in _thread_cpu(pid).items():
            kind = jvm_thread_kind(name)
            peaks.jvm_cpu[kind] = peaks.jvm_cpu.get(kind, 0.0) + cpu - self._thread_cpu.get(tid, 0.0)
            self._thread_cpu[tid] = cpu
