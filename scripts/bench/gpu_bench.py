"""The `--run` half of `scripts/bench/gpu`: on the GPU machine (no Rust, no network; `python3`
with torch, torchvision, numpy), with the binaries of `bench-carry/`, in one command of at most
8 minutes (standard library only here; the reference imports torch).

Usage: gpu_bench.py [--carry bench-carry] [--work DIR] [--budget 450] [--workers N]
                    [--nih-count 4096] [--cifar-count 50000] [--epochs 3] [--only PART,...]
                    [--precisions 16-mixed,bf16-mixed] [--cpu-smoke]

1. Writes the data with the carried `write_bench_data` (once per work folder): NIH-like 1024 px
   PNGs, 256 RSNA-like JPEG DICOMs (the online linear head of NIH_RSNA_BYOL), CIFAR-10 binary,
   and a small CIFAR-10 (10,240 images) for the two checks.
2. Runs, in this order, each part with a time budget (a part that no longer fits is skipped
   and says so, so the most important figures come first):
   - `sync-check`: CIFAR10BYOL ResNet-18, 2 short epochs of the small CIFAR, precision
     16-mixed, with SSL_HOST_DEBUG_SYNC=1, augment_on workers and device: passes when every
     epoch reports 0 host reads of device values in its training steps and, on a GPU, CUDA's
     own synchronisation check ("error" mode) was on during the steps and caught nothing;
     on failure the record keeps ssl-host's error lines (libtorch names the operation);
   - `nccl`: the same run in one process under torchrun (`python3 -m torch.distributed.run
     --nproc_per_node=1 --no-python ssl-host ... --dist_backend=nccl`); under --cpu-smoke
     NCCL cannot work (it needs CUDA), so the part runs the same code path with gloo; a
     world of one is distributed (its gradient all-reduce runs), so the part passes when
     the run ends and its epoch line reports the all-reduce;
   - per precision of `--precisions`, in its order: ssl-host end to end on the NIH images
     (BYOL ResNet-50 224 px, NIH_RSNA_BYOL, batch 256, all cores, `--epochs` epochs) with
     augment_on workers, the PyTorch reference (gpu_reference.py), ssl-host with augment_on
     device; then the same for CIFAR (CIFAR10BYOL, ResNet-18, batch 512). images/s is the
     training throughput of the epochs after the first (the first pays for start-up), GPU busy
     the mean `nvidia-smi` utilisation over those epochs' training passes (sampled every
     0.2 s), peak MiB the largest `peak device memory` of those epochs (the reference: the
     peak allocated over its timed steps);
   - `bench-data` (after the first precision's end-to-end parts): NIH_RSNA_BYOL (batch 256)
     and CIFAR10BYOL (batch 512), augment_on workers and device, all cores, on the GPU.
3. Prints a table (one row per part, model, augment_on and precision); all records go to
   WORK/results-PRECISIONS.json, logs to WORK/logs/.

Both precisions with every part take longer than one 8-minute command: with a tight budget
run `--precisions 16-mixed` (everything, the default parts) and then `--precisions bf16-mixed
--only ssl-host-nih,reference-nih,ssl-host-cifar,reference-cifar` as two commands (the second
reuses the data of the first when the work folder is still there).

`--cpu-smoke`: the same flow on the CPU with tiny sizes (128 px images, ResNet-18, small
batches, 2 epochs, precision bf16-mixed, the nccl part with gloo), to check the scripts on a
machine without a GPU; its figures mean nothing.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gpu_monitor import GpuSampler  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
# ssl-host's epoch line: `epoch E/N: ..., X images/s, Ys`, then optional parts, each `; ...`
# (a distributed run's `; gradient all-reduce A MB per optimizer step in T ms`, a CUDA run's
# `; peak device memory N MiB`).
EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+): .* ([0-9.]+|NaN|inf) images/s, ([0-9.]+)s((?:; .*)?)$")
PEAK_PART = re.compile(r"; peak device memory ([0-9.]+) MiB")
ALL_REDUCE_PART = re.compile(r"; gradient all-reduce ([0-9.]+) MB per optimizer step in ([0-9.]+) ms")
# SSL_HOST_DEBUG_SYNC=1: the count of each epoch, and the line saying CUDA's check is on.
HOST_READS = re.compile(r"^host reads of device values in epoch (\d+): (\d+) in (\d+) training steps, (\d+) at checks$")
SYNC_CHECK_ON = "SSL_HOST_DEBUG_SYNC=1: CUDA's synchronisation check is on"
SYNC_FAILED = "SSL_HOST_DEBUG_SYNC=1: a training step synchronised with the GPU"
PARTS = ["sync-check", "nccl", "bench-data", "ssl-host-nih", "reference-nih", "ssl-host-cifar", "reference-cifar"]
PRECISIONS = ["32-true", "16-mixed", "bf16-mixed"]
# The checks' small CIFAR: about 18 steps of batch 512 per epoch.
CHECK_CIFAR_COUNT = 10240


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--carry", default="bench-carry", help="folder with ssl-host and write_bench_data")
    p.add_argument("--work", default=None, help="data, runs and logs (default /tmp/ssl-host-bench)")
    p.add_argument("--budget", type=float, default=None, help="seconds for everything (default 450; smoke 1500)")
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: all cores; smoke 2)")
    p.add_argument("--nih-count", type=int, default=None, help="NIH images (default 4096; smoke 24)")
    p.add_argument("--cifar-count", type=int, default=None, help="CIFAR training images (default 50000; smoke 100)")
    p.add_argument("--epochs", type=int, default=None, help="ssl-host epochs (default 3; smoke 2)")
    p.add_argument("--only", default=",".join(PARTS), help="comma-separated parts: " + ", ".join(PARTS))
    p.add_argument("--precisions", default=None,
                   help="comma-separated precisions of the end-to-end parts, in the order they run: "
                        + ", ".join(PRECISIONS) + " (default 16-mixed,bf16-mixed; smoke bf16-mixed)")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU (checks the scripts)")
    a = p.parse_args(argv)
    smoke = a.cpu_smoke
    a.work = a.work or ("/tmp/ssl-host-bench-smoke" if smoke else "/tmp/ssl-host-bench")
    a.budget = a.budget or (1500.0 if smoke else 450.0)
    a.workers = a.workers or (2 if smoke else os.cpu_count())
    a.nih_count = a.nih_count or (24 if smoke else 4096)
    a.cifar_count = a.cifar_count or (100 if smoke else 50000)
    a.check_cifar_count = min(a.cifar_count, CHECK_CIFAR_COUNT)
    a.epochs = a.epochs or (2 if smoke else 3)
    a.rsna_count = 24 if smoke else 256
    a.size = 128 if smoke else 1024
    a.nih_batch, a.cifar_batch = (4, 16) if smoke else (256, 512)
    a.device = "cpu" if smoke else "cuda"
    # The checks' precision: 16-mixed (autocast and the loss scaler: the path with most to
    # synchronise) on the GPU; bf16-mixed on the CPU, where float16 training is slow.
    a.check_precision = "bf16-mixed" if smoke else "16-mixed"
    a.dist_backend = "gloo" if smoke else "nccl"
    a.only = [x.strip() for x in a.only.split(",") if x.strip()]
    bad = [x for x in a.only if x not in PARTS]
    if bad:
        p.error(f"--only: unknown part(s) {', '.join(bad)}; expected some of {', '.join(PARTS)}")
    a.precisions = [x.strip() for x in (a.precisions or ("bf16-mixed" if smoke else "16-mixed,bf16-mixed")).split(",")
                    if x.strip()]
    bad = [x for x in a.precisions if x not in PRECISIONS]
    if bad or not a.precisions or len(set(a.precisions)) < len(a.precisions):
        p.error(f"--precisions: expected distinct names of {', '.join(PRECISIONS)}, got {','.join(a.precisions)}")
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


def error_lines(lines, n=25):
    """The lines that say why a run failed: its SSL_HOST_DEBUG_SYNC lines and everything from
    its first `error:` line on (the error and its causes, libtorch's reason among them), at
    most `n`; its last lines when it printed no error. Under torchrun, what the agent printed
    after the process failed is left out but its line naming the exit code."""
    texts = [line for _, line in lines]
    agent = next((i for i, line in enumerate(texts) if "failed (exitcode" in line), None)
    if agent is not None:
        texts = texts[:agent] + [texts[agent]]
    first = next((i for i, line in enumerate(texts) if line.startswith("error")), None)
    if first is None:
        return texts[-n:]
    sync = [line for line in texts[:first] if "SSL_HOST_DEBUG_SYNC" in line]
    return (sync + texts[first:])[:n]


def print_rows(rows):
    """Prints a table: the first column left-aligned, the others right-aligned; a row with only
    a first cell (a section title) spans the columns, so the widths come from the other rows."""
    widths = [max([len(r[0]) for r in rows if any(r[1:])] + [0])]
    widths += [max(len(r[i]) for r in rows) for i in range(1, len(rows[0]))]
    for r in rows:
        cells = [c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)]
        print("  ".join(cells).rstrip())


class Epoch:
    """One epoch line of ssl-host."""

    def __init__(self, t, m):
        self.time = t
        self.number = int(m.group(1))
        self.images_per_s = float(m.group(3))
        self.seconds = float(m.group(4))
        rest = m.group(5)
        peak = PEAK_PART.search(rest)
        self.peak_mib = float(peak.group(1)) if peak else None
        reduce = ALL_REDUCE_PART.search(rest)
        self.all_reduce = (float(reduce.group(1)), float(reduce.group(2))) if reduce else None
        self.line = m.group(0)


def epochs_of(lines):
    """The epoch lines of a run's output, in order."""
    return [Epoch(t, m) for t, m in ((t, EPOCH_LINE.match(line)) for t, line in lines) if m]


def stop_note(status):
    return "stopped by its time budget" if status is None else f"exit status {status}"


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
        if self.check_cifar() != f"{self.data}/cifar":
            sets.append(("check/cifar", self.a.check_cifar_count))
        for name, count in sets:
            out, set_name = os.path.split(os.path.join(self.data, name))
            marker = os.path.join(out, f".{set_name}-{count}-{self.a.size}")
            if os.path.exists(marker):
                continue
            os.makedirs(out, exist_ok=True)
            shutil.rmtree(os.path.join(out, set_name), ignore_errors=True)
            timeout = self.budget(180)
            if timeout is None:
                raise SystemExit("gpu_bench: no time left to write the data")
            cmd = [self.writer, "--out", out, "--count", str(count), "--sets", set_name,
                   "--size", str(self.a.size), "--threads", str(os.cpu_count())]
            status, lines, _ = run_timed(cmd, os.path.join(self.logs, f"write-{name.replace('/', '-')}.log"), timeout)
            if status != 0:
                raise SystemExit(f"gpu_bench: writing the {name} data failed: {tail(lines)}")
            self.say(tail(lines, 1))
            open(marker, "w").close()

    def check_cifar(self):
        """The CIFAR folder of the checks: a small one unless the benchmark's is as small."""
        if self.a.check_cifar_count >= self.a.cifar_count:
            return f"{self.data}/cifar"
        return f"{self.data}/check/cifar"

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

    def check_args(self, place, run_dir):
        """The checks' run: CIFAR10BYOL ResNet-18 on the small CIFAR, 2 epochs."""
        return ["--model=CIFAR10BYOL", "--ssl_encoder=resnet18", f"--local_dataset={self.check_cifar()}",
                f"--ssl_training_batch_size={self.a.cifar_batch}", f"--augment_on={place}",
                f"--num_workers={self.a.workers}", "--num_epochs=2", f"--output_dir={run_dir}",
                f"--device={self.a.device}", f"--precision={self.a.check_precision}"]

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

    def sync_check(self, place):
        """ssl-host with SSL_HOST_DEBUG_SYNC=1: every epoch must report 0 host reads in its
        training steps, and on a GPU CUDA's synchronisation check must be on and catch nothing."""
        name = f"sync-check {place}"
        timeout = self.budget(45)
        if timeout is None:
            return self.record(part=name, skipped="no time left")
        run_dir = os.path.join(self.runs, f"sync-check-{place}")
        shutil.rmtree(run_dir, ignore_errors=True)
        env = dict(os.environ, SSL_HOST_DEBUG_SYNC="1")
        status, lines, _ = run_timed([self.host, *self.check_args(place, run_dir)],
                                     os.path.join(self.logs, f"sync-check-{place}.log"), timeout, env=env)
        counts = [(int(m.group(1)), int(m.group(2)), int(m.group(3)), int(m.group(4)))
                  for m in (HOST_READS.match(line) for _, line in lines) if m]
        reads = sum(c[1] for c in counts)
        steps = sum(c[2] for c in counts)
        at_checks = sum(c[3] for c in counts)
        cuda_check = any(line.startswith(SYNC_CHECK_ON) for _, line in lines)
        caught = any(SYNC_FAILED in line for _, line in lines)
        problems = []
        if status != 0:
            problems.append(stop_note(status))
        if caught:
            problems.append("a training step synchronised with the GPU (CUDA's check)")
        if reads:
            problems.append(f"{reads} host reads in training steps")
        if not counts:
            problems.append("no epoch reported its host reads")
        if self.a.device == "cuda" and not cuda_check:
            problems.append("CUDA's synchronisation check was not confirmed on")
        rec = dict(part=name, place=place, precision=self.a.check_precision, passed=not problems,
                   host_reads=reads, steps=steps, reads_at_checks=at_checks, epochs=counts,
                   cuda_sync_check=cuda_check if self.a.device == "cuda" else None, status=status)
        if problems:
            rec["error"] = "; ".join(problems)
            rec["stderr"] = error_lines(lines)
            self.say(f"{name}: FAILED: {rec['error']}")
            for line in rec["stderr"]:
                self.say(f"    {line}")
        else:
            check = ", CUDA's synchronisation check on" if cuda_check else ""
            self.say(f"{name}: passed: {reads} host reads in {steps} training steps ({at_checks} at checks){check}")
        return self.record(**rec)

    def nccl(self):
        """The checks' run in one process under torchrun with the NCCL backend (gloo under
        --cpu-smoke: NCCL needs CUDA)."""
        backend = self.a.dist_backend
        name = f"nccl ({backend})" if backend != "nccl" else "nccl"
        if backend != "nccl":
            self.say(f"{name}: NCCL needs CUDA: under --cpu-smoke this part runs the same torchrun path "
                     f"with --dist_backend={backend}")
        timeout = self.budget(45)
        if timeout is None:
            return self.record(part=name, skipped="no time left")
        run_dir = os.path.join(self.runs, "nccl")
        shutil.rmtree(run_dir, ignore_errors=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", f"--master_port={port}",
               "--no-python", self.host, *self.check_args("workers", run_dir), f"--dist_backend={backend}"]
        status, lines, _ = run_timed(cmd, os.path.join(self.logs, "nccl.log"), timeout)
        epochs = epochs_of(lines)
        rec = dict(part=name, backend=backend, precision=self.a.check_precision, status=status,
                   epoch_lines=[e.line for e in epochs], passed=status == 0 and len(epochs) == 2)
        if not rec["passed"]:
            rec["error"] = f"{stop_note(status)}, {len(epochs)} of 2 epochs"
            rec["stderr"] = error_lines(lines, 15)
            self.say(f"{name}: FAILED ({rec['error']})")
            for line in rec["stderr"]:
                self.say(f"    {line}")
            return self.record(**rec)
        last = epochs[-1]
        rec.update(images_per_s=last.images_per_s, peak_mib=last.peak_mib, all_reduce=last.all_reduce)
        if last.all_reduce is None:
            rec["passed"] = False
            rec["error"] = "no gradient all-reduce in the epoch line: the world of one ran no collective"
            self.say(f"{name}: FAILED ({rec['error']}): {last.line}")
        else:
            self.say(f"{name}: passed: {last.line}")
        return self.record(**rec)

    def train(self, kind, place, precision):
        name = f"ssl-host {kind} {place} {precision}"
        timeout = self.budget(100 if kind == "nih" else 75)
        if timeout is None:
            return self.record(part=name, skipped="no time left")
        run_dir = os.path.join(self.runs, f"{kind}-{place}-{precision}")
        shutil.rmtree(run_dir, ignore_errors=True)
        cmd = [self.host, *self.dataset_args(kind), *self.place_args(kind, place),
               f"--num_workers={self.a.workers}", f"--num_epochs={self.a.epochs}", f"--output_dir={run_dir}",
               f"--device={self.a.device}", f"--precision={precision}"]
        if self.a.cpu_smoke and kind == "nih":
            cmd.append("--ssl_encoder=resnet18")
        status, lines, sampler = run_timed(cmd, os.path.join(self.logs, f"ssl-host-{kind}-{place}-{precision}.log"),
                                           timeout, sample_gpu=shutil.which("nvidia-smi") is not None)
        epochs = epochs_of(lines)
        measured = [e for e in epochs if e.number >= 2]
        if not measured:
            why = stop_note(status)
            self.say(f"{name}: no epoch after the first finished ({why}): {tail(lines)}")
            return self.record(part=name, error=f"no epoch after the first ({why}): {tail(lines)}",
                               epochs=[(e.number, e.images_per_s) for e in epochs])
        images_per_s = sum(e.images_per_s for e in measured) / len(measured)
        peaks = [e.peak_mib for e in measured if e.peak_mib is not None]
        peak = max(peaks) if peaks else None
        busy = None
        if sampler is not None and sampler.samples:
            # Epoch k's training pass starts when epoch k-1's line is printed (after its
            # checkpoint) and lasts (training images) / (its throughput).
            n = self.a.nih_count if kind == "nih" else 5 * -(-self.a.cifar_count // 5)
            batch = self.a.nih_batch if kind == "nih" else self.a.cifar_batch
            train_images = (n - int(0.1 * n)) // batch * batch
            times = {e.number: e.time for e in epochs}
            values = []
            for e in measured:
                t0 = times.get(e.number - 1)
                if t0 is not None and e.images_per_s > 0:
                    values += [v for t, v in sampler.samples if t0 <= t <= t0 + train_images / e.images_per_s]
            busy = sum(values) / len(values) if values else None
        note = "" if status == 0 else f" ({stop_note(status)})"
        self.say(f"{name}: {images_per_s:.0f} images/s over epochs {measured[0].number}-{measured[-1].number}, "
                 f"GPU busy {'n/a' if busy is None else f'{busy:.0f}%'}, peak "
                 f"{'n/a' if peak is None else f'{peak:.0f} MiB'}{note}")
        return self.record(part=name, kind=kind, place=place, precision=precision, images_per_s=images_per_s,
                           gpu_busy=busy, peak_mib=peak,
                           epochs=[(e.number, e.images_per_s, e.peak_mib) for e in epochs], status=status,
                           gpu_error=sampler.error if sampler else None)

    # ---------------------------------------------------------------------------- reference

    def reference(self, kind, precision):
        name = f"reference {kind} {precision}"
        want = 110 if kind == "nih" else 75
        timeout = self.budget(want)
        if timeout is None:
            return self.record(part=name, skipped="no time left")
        # Timed seconds: what is left after start-up and warm-up (about a third of the budget).
        seconds = max(5.0, min(45.0 if kind == "nih" else 30.0, timeout * 0.55))
        cmd = [sys.executable, os.path.join(HERE, "gpu_reference.py"), "--dataset", kind,
               "--data", f"{self.data}/{kind}", "--workers", str(self.a.workers), "--seconds", f"{seconds:.0f}",
               "--precision", precision]
        if kind == "nih":
            cmd += ["--lh-data", f"{self.data}/rsna", "--batch", str(self.a.nih_batch)]
        else:
            cmd += ["--batch", str(self.a.cifar_batch)]
        if self.a.cpu_smoke:
            cmd.append("--cpu-smoke")
        status, lines, _ = run_timed(cmd, os.path.join(self.logs, f"reference-{kind}-{precision}.log"), timeout)
        rec = json_line(lines, "gpu-reference")
        if rec is None:
            why = stop_note(status)
            self.say(f"{name}: failed ({why}): {tail(lines)}")
            return self.record(part=name, error=f"{why}: {tail(lines)}")
        peak = rec.get("peak_mib")
        self.say(f"{name}: {rec['images_per_s']:.0f} images/s, GPU busy "
                 f"{'n/a' if rec['gpu_busy'] is None else str(rec['gpu_busy']) + '%'}, peak "
                 f"{'n/a' if peak is None else f'{peak:.0f} MiB'}")
        return self.record(part=name, kind=kind, precision=precision, images_per_s=rec["images_per_s"],
                           gpu_busy=rec["gpu_busy"], peak_mib=peak, reference=rec)

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

        def opt(p, key, form):
            if p is None or p.get(key) is None:
                return "n/a"
            return form.format(p[key])

        checks = []
        for p in self.results["parts"]:
            if not p["part"].startswith(("sync-check", "nccl")):
                continue
            if "skipped" in p:
                result = "skipped: " + p["skipped"]
            elif p["part"].startswith("sync-check"):
                result = (f"{'pass' if p['passed'] else 'FAIL'}: {p['host_reads']} host reads in "
                          f"{p['steps']} training steps ({p['reads_at_checks']} at checks)")
                if p.get("cuda_sync_check"):
                    result += ", CUDA's synchronisation check on"
            elif p["passed"]:
                result = f"pass: {p['images_per_s']:.0f} images/s"
                if p.get("all_reduce"):
                    result += f", all-reduce {p['all_reduce'][0]:.1f} MB in {p['all_reduce'][1]:.1f} ms per step"
                if p.get("peak_mib") is not None:
                    result += f", peak {p['peak_mib']:.0f} MiB"
            else:
                result = "FAIL (below)"
            label = f"sync-check, augment_on={p['place']}" if "place" in p else f"{p['part']}: torchrun, 1 process"
            checks.append((label, result))
        print()
        print(f"== GPU benchmark ({self.gpu_name}, {os.cpu_count()} cores, {self.a.workers} workers) ==")
        if checks:
            print(f"checks (CIFAR10BYOL ResNet-18, {self.a.check_cifar_count} images, 2 epochs, "
                  f"{self.a.check_precision})")
            width = max(len(label) for label, _ in checks)
            for label, result in checks:
                print(f"  {label.ljust(width)}  {result}")
            print()
        rows = []
        rows.append(("end to end (training images/s)", "images/s", "GPU busy", "peak MiB", "vs reference"))
        for kind, title in (("nih", "BYOL ResNet-50 224 px, NIH-like 1024 px PNGs, batch %d" % self.a.nih_batch),
                            ("cifar", "BYOL ResNet-18 CIFAR, batch %d" % self.a.cifar_batch)):
            rows.append((title, "", "", "", ""))
            for precision in self.a.precisions:
                ref = parts.get(f"reference {kind} {precision}")
                for place in ("workers", "device"):
                    p = parts.get(f"ssl-host {kind} {place} {precision}")
                    ratio = "-"
                    if p and ref and "images_per_s" in p and "images_per_s" in ref and ref["images_per_s"] > 0:
                        ratio = f"{p['images_per_s'] / ref['images_per_s']:.2f}x"
                    rows.append((f"  {precision:<10}  ssl-host, augment_on={place}", fig(p),
                                 opt(p, "gpu_busy", "{:.0f}%"), opt(p, "peak_mib", "{:.0f}"), ratio))
                rows.append((f"  {precision:<10}  PyTorch reference (original transforms)", fig(ref),
                             opt(ref, "gpu_busy", "{:.0f}%"), opt(ref, "peak_mib", "{:.0f}"), ""))
        print_rows(rows)
        print()
        rows = []
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
        print_rows(rows)
        print("images = source images per second (each with its 2 views); GPU busy = mean nvidia-smi "
              "utilization.gpu over the timed training; peak MiB = peak allocated device memory (ssl-host: "
              "the largest of the epochs after the first; reference: over its timed steps); 'device alone' = "
              "samples / (transfer + device augmentation time)")
        for p in self.results["parts"]:
            if "error" in p:
                print(f"  {p['part']}: {p['error'][:300]}")
                for line in p.get("stderr", []):
                    print(f"      {line[:300]}")

    # ---------------------------------------------------------------------------------- run

    def plan(self):
        """The parts to run, most important first: the checks, then per precision ssl-host
        against the reference on the X-rays and on CIFAR, bench-data after the first precision."""
        only = self.a.only
        steps = []
        if "sync-check" in only:
            steps += [(self.sync_check, place) for place in ("workers", "device")]
        if "nccl" in only:
            steps.append((self.nccl,))
        for i, precision in enumerate(self.a.precisions):
            for kind in ("nih", "cifar"):
                if f"ssl-host-{kind}" in only:
                    steps.append((self.train, kind, "workers", precision))
                if f"reference-{kind}" in only:
                    steps.append((self.reference, kind, precision))
                if f"ssl-host-{kind}" in only:
                    steps.append((self.train, kind, "device", precision))
            if i == 0 and "bench-data" in only:
                steps += [(self.bench_data, kind, place) for kind in ("nih", "cifar") for place in ("workers", "device")]
        return steps

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
                 f"precisions {','.join(self.a.precisions)}; work folder {self.a.work}")
        self.write_data()
        for step in self.plan():
            step[0](*step[1:])
        self.results["seconds"] = self.clock.elapsed()
        path = os.path.join(self.a.work, f"results-{'+'.join(self.a.precisions)}.json")
        with open(path, "w") as f:
            json.dump(self.results, f, indent=1, default=str)
        self.table()
        print(f"total {self.clock.elapsed():.0f} s; records in {path}, logs in {self.logs}/")


def main():
    Bench(parse_args()).run()


if __name__ == "__main__":
    main()
