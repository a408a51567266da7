"""The original's data path (read, decode, two augmented views, collate) in Python, timed, for
`scripts/bench/augment`.

Usage: augment_reference.py --dataset nih|rsna|cifar --data DIR --workers K --samples N
                            [--batch B] [--warmup-batches W]
       augment_reference.py --table RESULTS.jsonl   (the table `scripts/bench/augment` prints)

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


NAMES = {"nih": "chest X-ray NIH PNG 1024", "rsna": "chest X-ray RSNA JPEG DICOM 1024", "cifar": "CIFAR 32"}


def print_table(path):
    """The table of `scripts/bench/augment` from its records (one JSON object a line: who,
    set, place, and record or error)."""
    rows = {}
    order = []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            workers = r["record"]["workers"] if "record" in r else r["workers"]
            key = (r["set"], workers)
            if key not in rows:
                rows[key] = {}
                order.append(key)
            rows[key][(r["who"], r["place"])] = r.get("record") or {"error": r["error"]}

    failures = []

    def failed(rec):
        """A footnote mark for a failed run: the last line of its log."""
        try:
            with open(rec["error"]) as f:
                last = [line.strip() for line in f if line.strip()][-1]
        except (OSError, IndexError):
            last = "(no log)"
        if (rec["error"], last) not in failures:
            failures.append((rec["error"], last))
        return f"n/a [{failures.index((rec['error'], last)) + 1}]"

    def cell(rec, ref):
        if rec is None:
            return ["-", "-", "-"]
        if "error" in rec:
            return [failed(rec), "", ""]
        per = rec["images_per_s_per_worker"]
        ratio = f"{per / ref['images_per_s_per_worker']:.1f}x" if ref and "error" not in ref else "-"
        return [f"{rec['images_per_s']:.1f}", f"{per:.1f}", ratio]

    header = ["data", "workers", "reference/s", "per core",
              "ssl-host workers/s", "per core", "ratio/core",
              "ssl-host device/s", "per core", "ratio/core", "decode share"]
    table = [header]
    for key in order:
        got = rows[key]
        ref = got.get(("reference", "workers"))
        ref_cells = ([failed(ref), ""] if ref and "error" in ref else
                     [f"{ref['images_per_s']:.1f}", f"{ref['images_per_s_per_worker']:.1f}"] if ref else ["-", "-"])
        host = got.get(("ssl-host", "workers"))
        device = got.get(("ssl-host", "device"))
        share = f"{host['decode_share']:.0%}" if host and "decode_share" in host else "-"
        table.append([NAMES.get(key[0], key[0]), str(key[1])] + ref_cells + cell(host, ref) + cell(device, ref) + [share])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    print("samples/s (a sample = one source image with its 2 views); per core = per worker; "
          "ratio = ssl-host / reference per core")
    for i, row in enumerate(table):
        print("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    notes = set()
    for got in rows.values():
        for (who, _), rec in got.items():
            if who == "reference" and "elastic" in rec:
                notes.add(f"reference elastic: {rec['elastic']}; CIFAR blur: {rec['blur']}")
    for n in sorted(notes):
        print(n)
    for i, (log, last) in enumerate(failures, 1):
        print(f"[{i}] {last} ({log})")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--table":
        print_table(sys.argv[2])
        return
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
