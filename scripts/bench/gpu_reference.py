"""BYOL training in PyTorch, built as the original builds it, timed: the reference of
`scripts/bench/gpu`.

Usage: gpu_reference.py --dataset nih|cifar --data DIR [--lh-data DIR] [--batch B]
                        [--workers K] [--seconds S] [--warmup-steps W] [--max-steps N]
                        [--encoder resnet50|resnet18] [--device cuda|cpu]
                        [--precision 32-true|16-mixed|bf16-mixed] [--cpu-smoke]

Per training step, as the original (original-system.md §4-§7) with the options of the
benchmark:
- data: a torch DataLoader with K worker processes (default: all cores) reading and decoding
  the generated data (NIH PNGs, or CIFAR-10 binary) and applying the original's SSL encoder
  transform twice per sample (original_transforms.py); the loader's batches are chunks
  (16 X-rays, 64 CIFAR images) and a training batch is B of them concatenated, so every worker
  is busy from the first step even with a few thousand images (a worker building whole
  batches of 256 would leave most workers idle on a small data set);
- BYOL (§6a): online network = encoder (torchvision ResNet-50, or ResNet-18 with the 3x3
  stride-1 CIFAR stem and the max-pool kept) + projector (2048 -> 2048 -> 128, BN, ReLU) +
  predictor (128 -> 128 -> 128); target = a copy; loss 0.5 * (cos(h1, z2) + cos(h2, z1)) with
  cos(a, b) = -mean(<a/|a|, b/|b|>); targets in train mode under no_grad; Adam lr 1e-4 with
  weight decay 1e-6 except on parameters named *bias* / *bn*; after the step, the target
  moves to tau * target + (1 - tau) * online, tau = 1 - 0.01 * (cos(pi k / K) + 1) / 2;
- the online linear head (§7): a batch of 16 linear-head images (its own loader, 2 workers:
  RSNA DICOMs when pydicom is installed, else the NIH PNGs with made-up labels; CIFAR for
  CIFAR), embedded by the target encoder without gradients, dropout 0.2 + linear,
  cross-entropy, Adam;
- precision as Lightning names it (ssl-host's `--precision`): 16-mixed (the default, the
  original's precision 16) = autocast to float16 and a GradScaler; bf16-mixed = autocast to
  bfloat16, no scaler; 32-true = neither.

Timing starts after W warm-up steps (worker start-up, cuDNN, allocator) and runs for S seconds
or N steps; a background thread samples `nvidia-smi` utilisation every 0.2 s over the timed
steps, and on a GPU the peak allocated memory (`torch.cuda.max_memory_allocated`, its
statistics reset after the warm-up) is the timed steps' own. Prints a human line, then one last
line:

    gpu-reference {"dataset": ..., "images_per_s": X, "gpu_busy": U (mean %, or null),
                   "peak_mib": M (or null off a GPU), ...}

`--cpu-smoke`: a few steps on the CPU (ResNet-18, batch 4, bf16-mixed unless --precision says
otherwise) to check that everything runs, for a machine without a GPU.
"""

import argparse
import copy
import importlib.util
import json
import math
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import original_transforms as ot  # noqa: E402
from gpu_monitor import GpuSampler  # noqa: E402

# Lightning's precision names and the dtype each autocasts to (None: no autocast).
AUTOCAST = {"32-true": None, "16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}
PRECISIONS = list(AUTOCAST)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, choices=["nih", "cifar"])
    p.add_argument("--data", required=True, help="DIR/nih or DIR/cifar of write_bench_data")
    p.add_argument("--lh-data", default=None, help="linear-head data: DIR/rsna (nih only; default: --data)")
    p.add_argument("--batch", type=int, default=None, help="SSL batch size (default 256 X-ray, 512 CIFAR)")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="SSL loader workers (default: all cores)")
    p.add_argument("--seconds", type=float, default=45.0, help="time budget of the timed steps")
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--max-steps", type=int, default=10_000)
    p.add_argument("--encoder", choices=["resnet50", "resnet18"], default=None,
                   help="default: resnet50 for nih, resnet18 for cifar")
    p.add_argument("--device", default=None, help="default: cuda when available")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="16-mixed (float16 autocast + GradScaler; default), bf16-mixed (bfloat16 autocast), "
                        "32-true (float32); smoke default bf16-mixed")
    p.add_argument("--cpu-smoke", action="store_true", help="a few tiny steps on the CPU")
    args = p.parse_args(argv)
    if args.cpu_smoke:
        args.device = "cpu"
        args.precision = args.precision or "bf16-mixed"
        args.batch = args.batch or 4
        args.encoder = args.encoder or "resnet18"
        args.workers = min(args.workers, 2)
        args.warmup_steps, args.max_steps = 1, min(args.max_steps, 2)
    args.precision = args.precision or "16-mixed"
    if args.batch is None:
        args.batch = 512 if args.dataset == "cifar" else 256
    if args.encoder is None:
        args.encoder = "resnet50" if args.dataset == "nih" else "resnet18"
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.batch < 1 or args.workers < 0 or args.seconds <= 0:
        p.error("--batch must be >= 1, --workers >= 0 and --seconds > 0")
    return args


# ------------------------------------------------------------------------------- the model


def encoder(name, cifar_stem):
    """A torchvision ResNet without its classifier (the original's bolts ResNet has the same
    layers; its unused fc is left out), optionally with the 3x3 stride-1 CIFAR stem."""
    net = getattr(torchvision.models, name)(weights=None)
    if cifar_stem:
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


def mlp(inp, hidden, out):
    return nn.Sequential(nn.Linear(inp, hidden, bias=False), nn.BatchNorm1d(hidden),
                         nn.ReLU(inplace=True), nn.Linear(hidden, out))


class SiameseArm(nn.Module):
    def __init__(self, name, cifar_stem):
        super().__init__()
        self.encoder, dim = encoder(name, cifar_stem)
        self.projector = mlp(dim, 2048, 128)
        self.predictor = mlp(128, 128, 128)
        self.dim = dim

    def until_predictor(self, x):
        return self.projector(self.encoder(x))

    def forward(self, x):
        return self.predictor(self.until_predictor(x))


def cosine_loss(a, b):
    """-mean_i <a_i / |a_i|, b_i / |b_i|>."""
    return -(F.normalize(a.float(), dim=-1) * F.normalize(b.float(), dim=-1)).sum(dim=-1).mean()


def tau_after(step, max_steps, initial=0.99):
    """BYOL's target decay after optimizer step `step` (1-based) of `max_steps`."""
    return 1 - (1 - initial) * (math.cos(math.pi * step / max_steps) + 1) / 2


# ---------------------------------------------------------------------------------- the data


def forever(loader):
    """The loader's batches, epoch after epoch (an empty loader is an error, not a hang)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise SystemExit(f"gpu_reference: {len(loader.dataset)} samples give no full batch of {loader.batch_size}")


def loaders(args, cuda):
    chunk = 64 if args.dataset == "cifar" else 16
    chunk = min(chunk, args.batch)
    if args.batch % chunk:
        raise SystemExit(f"--batch must be a multiple of {chunk} (the loader's chunk), got {args.batch}")
    ssl = ot.dataset(args.dataset, args.data, views=2)
    common = dict(pin_memory=cuda, drop_last=True, shuffle=True)
    extra = dict(persistent_workers=True) if args.workers > 0 else {}
    # Worker processes hand batches over through /dev/shm: 2 chunks in flight per worker.
    view_bytes = 4 * 3 * (32 * 32 if args.dataset == "cifar" else 224 * 224)
    need = 2 * max(1, args.workers) * chunk * 2 * view_bytes
    try:
        free = shutil.disk_usage("/dev/shm").free
        if free < 2 * need:
            print(f"gpu_reference: warning: /dev/shm has {free / 2**20:.0f} MiB free, the loader may need "
                  f"{need / 2**20:.0f} MiB; DataLoader workers may fail with 'No space left on device'",
                  file=sys.stderr, flush=True)
    except OSError:
        pass
    ssl_loader = DataLoader(ssl, batch_size=chunk, num_workers=args.workers, **common, **extra)
    lh_note = "CIFAR"
    if args.dataset == "cifar":
        lh = ot.dataset("cifar", args.data, views=1, linear_head=True)
    else:
        have_pydicom = importlib.util.find_spec("pydicom") is not None
        if args.lh_data and have_pydicom:
            lh = ot.dataset("rsna", args.lh_data, views=1, linear_head=True)
            lh_note = "RSNA DICOMs"
        else:
            lh = ot.dataset("nih", args.data, views=1, linear_head=True)
            lh.labels = [int(i % 4 == 1) for i in range(len(lh.items))]
            lh_note = "NIH PNGs with made-up labels" + ("" if have_pydicom else " (pydicom missing)")
    lh_workers = min(2, args.workers)
    lh_loader = DataLoader(lh, batch_size=16, num_workers=lh_workers, **common,
                           **(dict(persistent_workers=True) if lh_workers > 0 else {}))
    return forever(ssl_loader), args.batch // chunk, forever(lh_loader), lh_note


def next_batch(chunks, count, device):
    parts = [next(chunks) for _ in range(count)]
    v1 = torch.cat([p[0] for p in parts]).to(device, non_blocking=True)
    v2 = torch.cat([p[1] for p in parts]).to(device, non_blocking=True)
    return v1, v2


# ------------------------------------------------------------------------------------ the run


def main():
    args = parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    autocast_dtype = AUTOCAST[args.precision]
    amp = autocast_dtype is not None
    torch.manual_seed(1)
    chunks, per_batch, lh_batches, lh_note = loaders(args, cuda)

    online = SiameseArm(args.encoder, cifar_stem=args.dataset == "cifar").to(device)
    target = copy.deepcopy(online)
    named = list(online.named_parameters())
    decay = [p for n, p in named if not ("bias" in n or "bn" in n)]
    no_decay = [p for n, p in named if "bias" in n or "bn" in n]
    optimizer = torch.optim.Adam([{"params": decay, "weight_decay": 1e-6},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=1e-4)
    num_classes = 10 if args.dataset == "cifar" else 2
    head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(online.dim, num_classes)).to(device)
    head_optimizer = torch.optim.Adam(head.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "16-mixed")
    max_steps = args.warmup_steps + args.max_steps
    pairs = list(zip(target.parameters(), online.parameters()))

    def step(k):
        v1, v2 = next_batch(chunks, per_batch, device)
        online.train()
        target.train()
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=amp):
            h1, h2 = online(v1), online(v2)
            with torch.no_grad():
                z1, z2 = target.until_predictor(v1), target.until_predictor(v2)
            loss = 0.5 * (cosine_loss(h1, z2) + cosine_loss(h2, z1))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        # The online linear head on the target encoder's embeddings (the original's forward).
        x, y = next(lh_batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype, enabled=amp):
            embeddings = target.encoder(x)
        head.train()
        lh_loss = F.cross_entropy(head(embeddings.float()), y)
        head_optimizer.zero_grad(set_to_none=True)
        lh_loss.backward()
        head_optimizer.step()
        # The moving average of the target, parameter by parameter.
        tau = tau_after(k, max_steps)
        with torch.no_grad():
            for t, o in pairs:
                t.mul_(tau).add_(o, alpha=1 - tau)
        return v1.shape[0]

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    started = time.perf_counter()
    for k in range(1, args.warmup_steps + 1):
        step(k)
    sync()
    warm_seconds = time.perf_counter() - started
    sampler = GpuSampler(period=0.2)
    if cuda:
        sampler.start()
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    images = steps = 0
    while steps < args.max_steps and (steps == 0 or time.perf_counter() - started < args.seconds):
        images += step(args.warmup_steps + steps + 1)
        steps += 1
    sync()
    seconds = time.perf_counter() - started
    busy = sampler.stop() if cuda else None
    peak_mib = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    result = {
        "dataset": args.dataset,
        "encoder": args.encoder,
        "device": str(device),
        "precision": args.precision,
        "batch": args.batch,
        "workers": args.workers,
        "linear_head_data": lh_note,
        "warmup_steps": args.warmup_steps,
        "warmup_seconds": round(warm_seconds, 2),
        "steps": steps,
        "images": images,
        "seconds": round(seconds, 3),
        "images_per_s": round(images / seconds, 2),
        "gpu_busy": None if busy is None else round(busy, 1),
        "gpu_samples": sampler.count,
        "peak_mib": None if peak_mib is None else round(peak_mib, 1),
    }
    result.update(ot.backends())
    busy_text = "n/a" if busy is None else f"{busy:.0f}%"
    peak_text = "" if peak_mib is None else f", peak {peak_mib:.0f} MiB"
    print(f"gpu-reference {args.dataset} BYOL {args.encoder}, batch {args.batch}, {args.workers} workers, "
          f"{args.precision} on {device}: {images} images in {seconds:.1f} s after {args.warmup_steps} "
          f"warm-up steps ({warm_seconds:.1f} s): {images / seconds:.1f} images/s, GPU busy {busy_text}{peak_text} "
          f"(linear head: {lh_note}; elastic: {result['elastic']}; blur: {result['blur']})", flush=True)
    print("gpu-reference " + json.dumps(result), flush=True)
    # Persistent DataLoader workers can keep the interpreter waiting at exit: leave now.
    os._exit(0)


if __name__ == "__main__":
    main()
