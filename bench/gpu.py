"""GPU utilization while a contender runs, from ``nvidia-smi`` (sampled every 100 ms).

"Busy" is what the GPU targets ask for: a GPU waiting on JPEG decode shows low utilization even
when the throughput looks fine. On a machine without ``nvidia-smi`` (or with ``device`` cpu) the
sampler does nothing and reports ``None``.
"""

from __future__ import annotations

import shutil
import subprocess
import threading


class GpuSampler:
    def __init__(self, device: str) -> None:
        self.enabled = device != "cpu" and shutil.which("nvidia-smi") is not None
        self.samples: list[float] = []
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
                self.samples.append(float(first))

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def mean(self) -> float | None:
        """Mean utilization in percent over the samples (first GPU), or None when not measured."""
        if not self.samples:
            return None
        return sum(self.samples) / len(self.samples)
