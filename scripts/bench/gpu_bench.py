"""The `--run` half of `scripts/bench/gpu`: on the GPU machine (no Rust, no network; `python3`
with torch, torchvision, numpy), with the binaries of `bench-carry/`, in one command of at most
8 minutes (standard library only here; the reference imports torch).

Usage: gpu_bench.py [--carry bench-carry] [--work DIR] [--budget 450] [--workers N]
                    [--nih-count 4096] [--cifar-count 50000] [--epochs 3] [--only PART,...]
                    [--cpu-smoke]

1. Writes the data with the carried `write_bench_data`: NIH-like 1024 px PNGs, 256 RSNA-like
   JPEG DICOMs (the online linear head of NIH_RSNA_BYOL), CIFAR-10 binary.
2. Runs, each part with a time budget (parts that no longer fit are skipped and say so):
   - `bench-data`: NIH_RSNA_BYOL (batch 256) and CIFAR10BYOL (batch 512), augment_on workers
     and device, all cores, on the GPU;
   - ssl-host end to end: BYOL ResNet-50 224 px on the NIH images (NIH_RSNA_BYOL, batch 256,
     mixed precision, all cores, `--epochs` epochs), and BYOL ResNet-18 on CIFAR (CIFAR10BYOL,
     batch 512), each with augment_on workers and device; images/s is the training throughput
     of the epochs after the first (the first pays for start-up), GPU busy the mean
     `nvidia-smi` utilisation over those epochs' training passes (sampled every 0.2 s);
   - the PyTorch reference (gpu_reference.py) for the same two.
3. Prints a table; all records go to WORK/results.json, logs to WORK/logs/.

`--cpu-smoke`: the same flow on the CPU with tiny sizes (128 px images, ResNet-18, small
batches, 2 epochs), to check the scripts on a machine without a GPU; its figures mean nothing.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gpu_monitor import GpuSampler  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+): .* ([0-9.]+|NaN|inf) images/s, ([0-9.]+)s$")
PARTS = ["bench-data", "ssl-host-nih", "reference-nih", "ssl-host-cifar", "reference-cifar"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--carry", default="bench-carry", help="folder with ssl-host and write_bench_data")
    p.add_argument("--work", default=None, help="data, runs and logs (default /tmp/ssl-host-bench)")
    p.add_argument("--budget", type=float, default=None, help="seconds for everything (default 450; smoke 1500)")
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: all cores; smoke 2)")
    p.add_argument("--nih-count", type=int, default=None, help="NIH images (default 4096; smoke 24)")
    p.add_argument("--cifar-count", type=int, default=None, help="CIFAR training images (default 50000; smoke 100)")
    p.add_argument("--epochs", type=int, default=None, help="ssl-host epochs (default 3; smoke 2)")
    p.add_argument("--only", default=",".join(PARTS), help="comma-separated parts: " + ", ".join(PARTS))
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU (checks the scripts)")
    a = p.parse_args(argv)
    smoke = a.cpu_smoke
    a.work = a.work or ("/tmp/ssl-host-bench-smoke" if smoke else "/tmp/ssl-host-bench")
    a.budget = a.budget or (1500.0 if smoke else 450.0)
    a.workers = a.workers or (2 if smoke else os.cpu_count())
    a.nih_count = a.nih_count or (24 if smoke else 4096)
    a.cifar_count = a.cifar_count or (100 if smoke else 50000)
    a.epochs = a.epochs or (2 if smoke else 3)
    a.rsna_count = 24 if smoke else 256
    a.size = 128 if smoke else 1024
    a.nih_batch, a.cifar_batch = (4, 16) if smoke else (256, 512)
    a.device = "cpu" if smoke else "cuda"
    a.only = [x.strip() for x in a.only.split(",") if x.strip()]
    bad = [x for x in a.only if x not in PARTS]
    if bad:
        p.error(f"--only: unknown part(s) {', '.join(bad)}; expected some of {', '.join(PARTS)}")
    if a.epochs < 2:
        p.error("--epochs must be at least 2 (the first epoch is warm-up)")
    return a


class Clock:
    """The run's deadline."""

    def __init__(self, budget):
        self.start = time.monotonic()
        self.deadline = self.start + budget

    def left(self):
        return self.deadline - time.monotonic()

    def elapsed(self):
        return time.monotonic() - self.start


def run_timed(cmd, log_path, timeout, env=None, sample_gpu=False):
    """Runs `cmd` (its own process group) for at most `timeout` seconds, its output (stdout and
    stderr) to `log_path` with the monotonic time of each line. Returns (exit status or None
    when killed, [(time, line)], sampler or None)."""
    lines = []
    sampler = GpuSampler(period=0.2).start() if sample_gpu else None
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1, env=env, start_new_session=True)

        def read():
            for line in proc.stdout:
                lines.append((time.monotonic(), line.rstrip("\n")))
                log.write(line)
                log.flush()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            status = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            status = None
            for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            log.write(f"\n[gpu_bench: stopped after {timeout:.0f} s, the part's time budget]\n")
        reader.join(timeout=5)
    if sampler is not None:
        sampler.stop()
    return status, lines, sampler


def json_line(lines, prefix):
    """The JSON record of the last line starting with `prefix {`."""
    for _, line in reversed(lines):
        if line.startswith(prefix + " {"):
            return json.loads(line[len(prefix) + 1:])
    return None


def tail(lines, n=2):
    """What a failed part said: its error line when it has one, else its last lines."""
    errors = [line for _, line in lines if line.startswith("error") or "Error" in line]
    if errors:
        return errors[-1]
    return " | ".join(line for _, line in lines[-n:]) or "(no output)"


class Bench:
    def __init__(self, a):
        self.a = a
        self.clock = Clock(a.budget)
        self.host = os.path.abspath(os.path.join(a.carry, "ssl-host"))
        self.writer = os.path.abspath(os.path.join(a.carry, "write_bench_data"))
        self.data = os.path.join(a.work, "data")
        self.logs = os.path.join(a.work, "logs")
        self.runs = os.path.join(a.work, "runs")
        self.results = {"settings": {k: v for k, v in vars(a).items()}, "parts": []}

    # ------------------------------------------------------------------------------ helpers

    def say(self, text):
        print(f"[{self.clock.elapsed():5.0f} s] {text}", flush=True)

    def record(self, **r):
        self.results["parts"].append(r)
        return r

    def budget(self, want, reserve=10.0):
        """Seconds a part may take: `want`, or what is left before the deadline (minus a reserve
        for the table); None when less than 15 s would be left."""
        if self.a.cpu_smoke:
            want *= 4  # two shared CPU cores instead of a GPU
        left = self.clock.left() - reserve
        return None if left < 15 else min(want, left)

    # --------------------------------------------------------------------------------- data

    def write_data(self):
        os.makedirs(self.data, exist_ok=True)
        sets = [("nih", self.a.nih_count), ("rsna", self.a.rsna_count), ("cifar", self.a.cifar_count)]
        for name, count in sets:
            marker = os.path.join(self.data, f".{name}-{count}-{self.a.size}")
            if os.path.exists(marker):
                continue
            shutil.rmtree(os.path.join(self.data, name), ignore_errors=True)
            timeout = self.budget(180)
            if timeout is None:
                raise SystemExit("gpu_bench: no time left to write the data")
            cmd = [self.writer, "--out", self.data, "--count", str(count), "--sets", name,
                   "--size", str(self.a.size), "--threads", str(os.cpu_count())]
            status, lines, _ = run_timed(cmd, os.path.join(self.logs, f"write-{name}.log"), timeout)
            if status != 0:
                raise SystemExit(f"gpu_bench: writing the {name} data failed: {tail(lines)}")
            self.say(tail(lines, 1))
            open(marker, "w").close()

    # ----------------------------------------------------------------------------- ssl-host

    def dataset_args(self, kind):
        if kind == "nih":
            return ["--model=NIH_RSNA_BYOL", f"--local_dataset={self.data}/nih",
                    f"--extra_local_dataset_paths={self.data}/rsna", f"--ssl_training_batch_size={self.a.nih_batch}"]
        return ["--model=CIFAR10BYOL", "--ssl_encoder=resnet18", f"--local_dataset={self.data}/cifar",
                f"--ssl_training_batch_size={self.a.cifar_batch}"]

    def place_args(self, kind, place):
        extra = [f"--augment_on={place}"]
        if place == "device" and kind == "nih":
            extra.append(f"--device_input_size={self.a.size}")
        return extra

    def bench_data(self, kind, place):
        name = f"bench-data {kind} {place}"
        timeout = self.budget(40)
        if timeout is None:
            return self.record(part=name, skipped="no time left")
        batches = 12 if kind == "nih" else 40
        if self.a.cpu_smoke:
            batches = 3
        cmd = [self.host, "bench-data", *self.dataset_args(kind), *self.place_args(kind, place),
               f"--num_workers={self.a.workers}", f"--batches={batches}", f"--device={self.a.device}"]
        status, lines, _ = run_timed(cmd, os.path.join(self.logs, f"bench-data-{kind}-{place}.log"), timeout)
        rec = json_line(lines, "bench-data")
        if status != 0 or rec is None:
            self.say(f"{name}: failed: {tail(lines)}")
            return self.record(part=name, error=tail(lines))
        dev = rec.get("device_seconds") or 0.0
        rec["device_images_per_s"] = rec["samples"] / dev if dev > 0 else None
        self.say(f"{name}: {rec['images_per_s']:.0f} images/s ({rec['images_per_s_per_worker']:.1f} per worker)")
        return self.record(part=name, kind=kind, place=place, bench_data=rec)

    def train(self, kind, place):
        name = f"ssl-host {kind} {place}"
        timeout = self.budget(100 if kind == "nih" else 75)
        if timeout is None:
            return self.record(part=name, skipped="no time left")
        run_dir = os.path.join(self.runs, f"{kind}-{place}")
        shutil.rmtree(run_dir, ignore_errors=True)
        cmd = [self.host, *self.dataset_args(kind), *self.place_args(kind, place),
               f"--num_workers={self.a.workers}", f"--num_epochs={self.a.epochs}", f"--output_dir={run_dir}",
               f"--device={self.a.device}", f"--use_mixed_precision={'false' if self.a.cpu_smoke else 'true'}"]
        if self.a.cpu_smoke and kind == "nih":
            cmd.append("--ssl_encoder=resnet18")
        status, lines, sampler = run_timed(cmd, os.path.join(self.logs, f"ssl-host-{kind}-{place}.log"), timeout,
                                           sample_gpu=shutil.which("nvidia-smi") is not None)
        epochs = []  # (epoch, time of its line, images/s)
        for t, line in lines:
            m = EPOCH_LINE.match(line)
            if m:
                epochs.append((int(m.group(1)), t, float(m.group(3))))
        measured = [e for e in epochs if e[0] >= 2]
        if not measured:
            why = "stopped by its time budget" if status is None else f"exit status {status}"
            self.say(f"{name}: no epoch after the first finished ({why}): {tail(lines)}")
            return self.record(part=name, error=f"no epoch after the first ({why}): {tail(lines)}",
                               epochs=[(e, ips) for e, _, ips in epochs])
        images_per_s = sum(e[2] for e in measured) / len(measured)
        busy = None
        if sampler is not None and sampler.samples:
            # Epoch k's training pass starts when epoch k-1's line is printed (after its
            # checkpoint) and lasts (training images) / (its throughput).
            n = self.a.nih_count if kind == "nih" else 5 * -(-self.a.cifar_count // 5)
            batch = self.a.nih_batch if kind == "nih" else self.a.cifar_batch
            train_images = (n - int(0.1 * n)) // batch * batch
            times = {e: t for e, t, _ in epochs}
            values = []
            for e, _, ips in measured:
                t0 = times.get(e - 1)
                if t0 is not None and ips > 0:
                    values += [v for t, v in sampler.samples if t0 <= t <= t0 + train_images / ips]
            busy = sum(values) / len(values) if values else None
        note = "" if status == 0 else (" (stopped by its time budget)" if status is None else f" (exit status {status})")
        self.say(f"{name}: {images_per_s:.0f} images/s over epochs {measured[0][0]}-{measured[-1][0]}, GPU busy "
                 f"{'n/a' if busy is None else f'{busy:.0f}%'}{note}")
        return self.record(part=name, kind=kind, place=place, images_per_s=images_per_s, gpu_busy=busy,
                           epochs=[(e, ips) for e, _, ips in epochs], status=status,
                           gpu_error=sampler.error if sampler else None)

    # ---------------------------------------------------------------------------- reference

    def reference(self, kind):
        name = f"reference {kind}"
        want = 110 if kind == "nih" else 75
        timeout = self.budget(want)
        if timeout is None:
            return self.record(part=name, skipped="no time left")
        # Timed seconds: what is left after start-up and warm-up (about a third of the budget).
        seconds = max(5.0, min(45.0 if kind == "nih" else 30.0, timeout * 0.55))
        cmd = [sys.executable, os.path.join(HERE, "gpu_reference.py"), "--dataset", kind,
               "--data", f"{self.data}/{kind}", "--workers", str(self.a.workers), "--seconds", f"{seconds:.0f}"]
        if kind == "nih":
            cmd += ["--lh-data", f"{self.data}/rsna", "--batch", str(self.a.nih_batch)]
        else:
            cmd += ["--batch", str(self.a.cifar_batch)]
        if self.a.cpu_smoke:
            cmd.append("--cpu-smoke")
        status, lines, _ = run_timed(cmd, os.path.join(self.logs, f"reference-{kind}.log"), timeout)
        rec = json_line(lines, "gpu-reference")
        if rec is None:
            why = "stopped by its time budget" if status is None else f"exit status {status}"
            self.say(f"{name}: failed ({why}): {tail(lines)}")
            return self.record(part=name, error=f"{why}: {tail(lines)}")
        self.say(f"{name}: {rec['images_per_s']:.0f} images/s, GPU busy "
                 f"{'n/a' if rec['gpu_busy'] is None else str(rec['gpu_busy']) + '%'}")
        return self.record(part=name, kind=kind, images_per_s=rec["images_per_s"], gpu_busy=rec["gpu_busy"],
                           reference=rec)

    # -------------------------------------------------------------------------------- table

    def table(self):
        parts = {p["part"]: p for p in self.results["parts"]}

        def fig(p, key="images_per_s"):
            if p is None:
                return "not run"
            if "skipped" in p:
                return "skipped: " + p["skipped"]
            if "error" in p:
                return "failed"
            return f"{p[key]:.0f}"

        def busy(p):
            if p is None or p.get("gpu_busy") is None:
                return "n/a"
            return f"{p['gpu_busy']:.0f}%"

        rows = [("end to end (training images/s)", "images/s", "GPU busy", "vs reference")]
        for kind, title in (("nih", "BYOL ResNet-50 224 px, NIH-like 1024 px PNGs, batch %d" % self.a.nih_batch),
                            ("cifar", "BYOL ResNet-18 CIFAR, batch %d" % self.a.cifar_batch)):
            ref = parts.get(f"reference {kind}")
            rows.append((title, "", "", ""))
            for place in ("workers", "device"):
                p = parts.get(f"ssl-host {kind} {place}")
                ratio = "-"
                if p and ref and "images_per_s" in p and "images_per_s" in ref and ref["images_per_s"] > 0:
                    ratio = f"{p['images_per_s'] / ref['images_per_s']:.2f}x"
                rows.append((f"  ssl-host, augment_on={place}", fig(p), busy(p), ratio))
            amp = "fp32 on the CPU" if self.a.cpu_smoke else "AMP"
            rows.append((f"  PyTorch reference (original transforms, {amp})", fig(ref), busy(ref), ""))
        rows.append(("", "", "", ""))
        rows.append((f"bench-data (data path alone, on {self.a.device})", "images/s", "per worker",
                     "decode | device alone"))
        for kind in ("nih", "cifar"):
            for place in ("workers", "device"):
                p = parts.get(f"bench-data {kind} {place}")
                if p is None or "bench_data" not in p:
                    rows.append((f"  {kind} augment_on={place}", fig(p), "", ""))
                    continue
                r = p["bench_data"]
                dev = r.get("device_images_per_s")
                rows.append((f"  {kind} augment_on={place}", f"{r['images_per_s']:.0f}",
                             f"{r['images_per_s_per_worker']:.1f}",
                             f"{r.get('decode_share', 0):.0%} | " + ("-" if dev is None else f"{dev:.0f}/s")))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        print()
        print(f"== GPU benchmark ({self.gpu_name}, {os.cpu_count()} cores, {self.a.workers} workers) ==")
        for r in rows:
            print("  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
        print("images = source images per second (each with its 2 views); GPU busy = mean nvidia-smi "
              "utilization.gpu over the timed training; 'device alone' = samples / (transfer + device "
              "augmentation time)")
        for p in self.results["parts"]:
            if "error" in p:
                print(f"  {p['part']}: {p['error'][:300]}")

    # ---------------------------------------------------------------------------------- run

    def run(self):
        for d in (self.data, self.logs, self.runs):
            os.makedirs(d, exist_ok=True)
        for binary in (self.host, self.writer):
            if not os.access(binary, os.X_OK):
                raise SystemExit(f"gpu_bench: {binary} is missing; run `scripts/bench/gpu --prepare` on the "
                                 "build machine and carry bench-carry/")
        try:
            self.gpu_name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            self.gpu_name = "no nvidia-smi"
        try:
            shm = f"{shutil.disk_usage('/dev/shm').free / 2**30:.1f} GiB free in /dev/shm"
        except OSError:
            shm = "no /dev/shm"
        self.say(f"GPU: {self.gpu_name}; {os.cpu_count()} cores; {shm}; budget {self.a.budget:.0f} s; "
                 f"work folder {self.a.work}")
        self.write_data()
        only = self.a.only
        if "bench-data" in only:
            for kind in ("nih", "cifar"):
                for place in ("workers", "device"):
                    self.bench_data(kind, place)
        for kind in ("nih", "cifar"):
            if f"ssl-host-{kind}" in only:
                for place in ("workers", "device"):
                    self.train(kind, place)
            if f"reference-{kind}" in only:
                self.reference(kind)
        self.results["seconds"] = self.clock.elapsed()
        path = os.path.join(self.a.work, "results.json")
        with open(path, "w") as f:
            json.dump(self.results, f, indent=1, default=str)
        self.table()
        print(f"total {self.clock.elapsed():.0f} s; records in {path}, logs in {self.logs}/")


def main():
    Bench(parse_args()).run()


if __name__ == "__main__":
    main()
