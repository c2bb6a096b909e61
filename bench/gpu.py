"""GPU utilization while a contender runs, from ``nvidia-smi`` (sampled every 100 ms).

"Busy" is what the GPU targets ask for: a GPU waiting on JPEG decode shows low utilization even
when the throughput looks fine. On a machine without ``nvidia-smi`` (or with ``device`` cpu) the
sampler does nothing and reports ``None``.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time


class GpuSampler:
    def __init__(self, device: str) -> None:
        self.enabled = device != "cpu" and shutil.which("nvidia-smi") is not None
        self.samples: list[float] = []
        self.times: list[float] = []  # epoch seconds of each sample
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        if self.enabled:
            self._proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            first = line.strip().split(",")[0].strip()
            if first.replace(".", "", 1).isdigit():
                self.times.append(time.time())
                self.samples.append(float(first))

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def mean(self, windows: list[tuple[float, float]] | None = None) -> float | None:
        """Mean utilization in percent (first GPU) over all samples, or over those taken within
        ``windows`` (epoch-second intervals); None when not measured."""
        picked = [u for t, u in zip(self.times, self.samples, strict=True)
                  if windows is None or any(start <= t <= end for start, end in windows)]
        return sum(picked) / len(picked) if picked else None
