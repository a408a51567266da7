"""The original's data path (read, decode, two augmented views, collate) in Python, timed, for
`scripts/bench/augment`.

Usage: augment_reference.py --dataset nih|rsna|cifar --data DIR --workers K --samples N
                            [--batch B] [--warmup-batches W]

A torch DataLoader with `num_workers = K` over `DIR` (the layout `write_bench_data` writes: NIH
PNGs, RSNA JPEG DICOMs, CIFAR-10 binary) with the original's SSL encoder transform
(original_transforms.py), two views per sample. After `W` batches of warm-up (default: one per
worker, so every worker has started), times the next `N` samples (N rounded up to whole
batches). Prints a human line, then one last line:

    reference {"dataset": ..., "workers": K, "samples": N, "views_per_sample": 2, "seconds": S,
               "images_per_s": X, "images_per_s_per_worker": Y, "elastic": ..., "blur": ...}

where an image is one source sample with all its views (as `ssl-host bench-data` counts).
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import original_transforms as ot  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, choices=["nih", "rsna", "cifar"])
    p.add_argument("--data", required=True, help="the dataset folder (DIR/nih, DIR/rsna or DIR/cifar)")
    p.add_argument("--workers", type=int, required=True, help="DataLoader worker processes (0: in this process)")
    p.add_argument("--samples", type=int, required=True, help="samples to time (after the warm-up)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 8 for chest X-rays, 256 for CIFAR)")
    p.add_argument("--warmup-batches", type=int, default=None, help="batches before timing (default: max(1, workers))")
    args = p.parse_args(argv)
    if args.workers < 0 or args.samples < 1:
        p.error("--workers must be >= 0 and --samples >= 1")
    if args.batch is None:
        args.batch = 256 if args.dataset == "cifar" else 8
    if args.warmup_batches is None:
        args.warmup_batches = max(1, args.workers)
    return args


def measure(args):
    batches = -(-args.samples // args.batch)
    total = (batches + args.warmup_batches) * args.batch
    data = ot.dataset(args.dataset, args.data, views=2, length=total)
    loader = DataLoader(data, batch_size=args.batch, shuffle=False, num_workers=args.workers, drop_last=True)
    it = iter(loader)
    for _ in range(args.warmup_batches):
        next(it)
    started = time.perf_counter()
    samples = 0
    for _ in range(batches):
        v1, v2, _ = next(it)
        samples += v1.shape[0]
    seconds = time.perf_counter() - started
    del it
    per_s = samples / seconds
    result = {
        "dataset": args.dataset,
        "workers": args.workers,
        "samples": samples,
        "views_per_sample": 2,
        "view_shape": list(v1.shape[1:]),
        "seconds": round(seconds, 3),
        "images_per_s": round(per_s, 2),
        "images_per_s_per_worker": round(per_s / max(1, args.workers), 2),
    }
    result.update(ot.backends())
    return result


def main():
    args = parse_args()
    torch.set_num_threads(1)
    r = measure(args)
    print(
        f"reference {r['dataset']}: {r['samples']} samples x 2 views {r['view_shape']} with {r['workers']} workers "
        f"in {r['seconds']:.1f} s: {r['images_per_s']:.1f} samples/s, {r['images_per_s_per_worker']:.1f} per worker "
        f"(elastic: {r['elastic']}, blur: {r['blur']}, torch {torch.__version__})"
    )
    print("reference " + json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
