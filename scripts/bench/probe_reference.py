"""scikit-learn's time on the probe benchmark's data (scripts/bench/probe), for comparison.

Usage: probe_reference.py DIR [--findings K] [--max_iter N]

DIR holds what `bench_probe --write DIR` wrote: train/val/test features and findings (.npy) and
probe.json (ssl-host's seconds, validation scores, chosen C and test AUROCs). For the first K
findings (default 1) this fits make_pipeline(StandardScaler(), LogisticRegression(C, tol=1e-4,
max_iter=1000)) for every C of the grid on the training part (scikit-learn fits one finding and
one C at a time), scores validation AUROC, refits the finding on train + validation with
ssl-host's chosen C and scores the test part. The full protocol's time is extrapolated from
the K findings: standardise + (grid fits × all findings / K) + (refits × all findings / K).
"""
import argparse
import json
import os
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--findings", type=int, default=1)
    ap.add_argument("--max_iter", type=int, default=1000)
    a = ap.parse_args()
    load = lambda name: np.load(os.path.join(a.dir, name + ".npy"))
    ours = json.load(open(os.path.join(a.dir, "probe.json")))
    train_x, val_x, test_x = load("train_x"), load("val_x"), load("test_x")
    train_y, val_y, test_y = load("train_y"), load("val_y"), load("test_y")
    total_findings = train_y.shape[1]
    k = min(a.findings, total_findings)
    grid = ours["penalties"]
    print(f"scikit-learn reference: {train_x.shape[0]} training samples x {train_x.shape[1]}, "
          f"{k} of {total_findings} findings, {len(grid)} penalties")

    t = time.time()
    scaler = StandardScaler().fit(train_x)
    train_s, val_s = scaler.transform(train_x), scaler.transform(val_x)
    standardise = time.time() - t

    grid_seconds = 0.0
    not_converged = 0
    for j in range(k):
        known = train_y[:, j] >= 0
        vknown = val_y[:, j] >= 0
        line = []
        for c in grid:
            t = time.time()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                model = LogisticRegression(C=c, tol=1e-4, max_iter=a.max_iter)
                model.fit(train_s[known], train_y[known, j])
            grid_seconds += time.time() - t
            not_converged += any(issubclass(w.category, ConvergenceWarning) for w in caught)
            auc = roc_auc_score(val_y[vknown, j], model.predict_proba(val_s[vknown])[:, 1])
            line.append(f"C={c:g}: {auc:.4f} ({model.n_iter_[0]} it, {time.time() - t:.1f} s)")
        print(f"  finding {j} validation AUROC: " + ", ".join(line), flush=True)

    both_x = np.concatenate([train_x, val_x])
    both_y = np.concatenate([train_y, val_y])
    refit_seconds = 0.0
    for j in range(k):
        t = time.time()
        known = both_y[:, j] >= 0
        scaler = StandardScaler().fit(both_x)
        model = LogisticRegression(C=ours["chosen"], tol=1e-4, max_iter=a.max_iter)
        model.fit(scaler.transform(both_x[known]), both_y[known, j])
        refit_seconds += time.time() - t
        tknown = test_y[:, j] >= 0
        p = model.predict_proba(scaler.transform(test_x[tknown]))[:, 1]
        auc = roc_auc_score(test_y[tknown, j], p)
        print(f"  finding {j} test AUROC at C={ours['chosen']:g}: scikit-learn {auc:.4f}, "
              f"ssl-host {ours['test_aurocs'][j]:.4f}")

    scale = total_findings / k
    s = ours["seconds"]
    rows = [
        ("standardise", s["standardise"], standardise, ""),
        ("grid fit", s["grid"], grid_seconds * scale,
         f"({grid_seconds:.1f} s for {k} finding(s) x {len(grid)} C, x {scale:g})"),
        ("refit", s["refit"], refit_seconds * scale,
         f"({refit_seconds:.1f} s for {k} finding(s), x {scale:g})"),
    ]
    print(f"  {'step':<12} {'ssl-host':>10} {'scikit-learn':>14}")
    for name, mine, theirs, note in rows:
        print(f"  {name:<12} {mine:>8.1f} s {theirs:>12.1f} s  {note}")
    theirs_total = sum(r[2] for r in rows)
    print(f"  {'total':<12} {s['total']:>8.1f} s {theirs_total:>12.1f} s  "
          f"(scikit-learn extrapolated; {not_converged} of its {k * len(grid)} grid fits hit "
          f"max_iter={a.max_iter})")


if __name__ == "__main__":
    main()
