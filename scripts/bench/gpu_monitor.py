"""GPU busy share for the benchmarks: `nvidia-smi --query-gpu=utilization.gpu` sampled every
0.2 s in a background thread (standard library only).

    sampler = GpuSampler(); sampler.start(); ...; busy = sampler.stop()   # mean %, or None
    sampler.mean_between(t0, t1)                                          # over a time window

`utilization.gpu` is the share of the driver's last sample period (1/6 s to 1 s) in which a
kernel was running: a busy share, not a measure of how much of the GPU a kernel uses.
"""

import os
import subprocess
import threading
import time


def _gpu_id():
    """The GPU this process uses: the first of CUDA_VISIBLE_DEVICES, else 0."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return visible or "0"


class GpuSampler:
    """Samples the utilisation of one GPU every `period` seconds until `stop()`."""

    def __init__(self, period=0.2, gpu=None):
        self.period = period
        self.gpu = gpu if gpu is not None else _gpu_id()
        self.samples = []  # (time.monotonic(), percent)
        self.error = None
        self._stop = threading.Event()
        self._thread = None

    @property
    def count(self):
        return len(self.samples)

    def _query(self):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", self.gpu],
            capture_output=True, text=True, timeout=5,
        )
        if out.returncode != 0:
            raise RuntimeError(out.stderr.strip() or out.stdout.strip() or f"exit status {out.returncode}")
        return float(out.stdout.strip().splitlines()[0])

    def _run(self):
        while not self._stop.is_set():
            tick = time.monotonic()
            try:
                value = self._query()
            except (OSError, RuntimeError, ValueError, IndexError, subprocess.TimeoutExpired) as e:
                self.error = f"nvidia-smi: {e}"
                return
            self.samples.append((time.monotonic(), value))
            self._stop.wait(max(0.0, self.period - (time.monotonic() - tick)))

    def start(self):
        self._thread = threading.Thread(target=self._run, name="gpu-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Stops sampling; the mean utilisation in percent, or None without samples."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=6)
        return self.mean_between(float("-inf"), float("inf"))

    def mean_between(self, t0, t1):
        """The mean of the samples taken between monotonic times `t0` and `t1`, or None."""
        values = [v for t, v in self.samples if t0 <= t <= t1]
        return sum(values) / len(values) if values else None
