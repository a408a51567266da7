"""scikit-learn's answers for the evaluation's unit tests (host/src/evaluate/{probe,stats}.rs).

Usage: python evaluate_reference.py OUT_DIR

Writes the test data as .npy files into OUT_DIR and, in OUT_DIR/reference.json, what
scikit-learn computes on them:
  - the linear probe protocol (StandardScaler + LogisticRegression per C of the grid, C chosen
    on validation, ties to the smaller C, refit on train + validation, scored on test) on
    scikit-learn's digits (10 classes), on two Gaussian clusters (binary) and on a synthetic
    multi-label set with unknown (-1) entries (one problem per finding on its known samples,
    one C for all findings by the mean validation AUROC over the findings);
  - roc_auc_score, average_precision_score and top_k_accuracy_score on scores with ties.
Splits are by row index: test = i % 5 == 0, validation = i % 5 == 1, train = the rest.
"""
import json
import os
import sys
import warnings

import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score, top_k_accuracy_score
from sklearn.preprocessing import StandardScaler

GRID = [10.0**e for e in range(-4, 4)]
MAX_ITER = 10000
TOL = 1e-8
warnings.simplefilter("error", ConvergenceWarning)


def parts(n):
    i = np.arange(n)
    return i[i % 5 >= 2], i[i % 5 == 1], i[i % 5 == 0]


def fit(x, y, c):
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(C=c, tol=TOL, max_iter=MAX_ITER).fit(scaler.transform(x), y)
    return lambda z: model.predict_proba(scaler.transform(z))


def choose(scores):
    best = max(scores)
    return next(i for i, s in enumerate(scores) if s == best)


def single_label(x, y):
    """The protocol for classes: accuracy (more than 2 classes) or AUROC (2) on validation."""
    train, val, test = parts(len(y))
    k = int(y.max()) + 1

    def score(p, labels):
        if k == 2:
            return roc_auc_score(labels, p[:, 1])
        return float(np.mean(p.argmax(1) == labels))

    val_scores = [score(fit(x[train], y[train], c)(x[val]), y[val]) for c in GRID]
    best = choose(val_scores)
    both = np.concatenate([train, val])
    p = fit(x[both], y[both], GRID[best])(x[test])
    return {
        "validation": val_scores,
        "chosen": best,
        "test_accuracy": float(np.mean(p.argmax(1) == y[test])),
        "test_top5": top_k_accuracy_score(y[test], p, k=5, labels=range(k)) if k > 5 else None,
        "test_aurocs": [roc_auc_score(y[test] == j, p[:, j]) for j in range(k)],
        "test_scores": p.ravel().tolist(),
    }


def multi_label(x, f):
    """The protocol for findings: one problem per finding on its known samples."""
    train, val, test = parts(len(f))
    both = np.concatenate([train, val])

    def finding_aurocs(rows_fit, rows_score, c):
        out = []
        for j in range(f.shape[1]):
            fit_rows = rows_fit[f[rows_fit, j] >= 0]
            score_rows = rows_score[f[rows_score, j] >= 0]
            p = fit(x[fit_rows], f[fit_rows, j], c)(x[score_rows])[:, 1]
            out.append(roc_auc_score(f[score_rows, j], p))
        return out

    val_scores = [float(np.mean(finding_aurocs(train, val, c))) for c in GRID]
    best = choose(val_scores)
    return {
        "validation": val_scores,
        "chosen": best,
        "test_aurocs": finding_aurocs(both, test, GRID[best]),
    }


def main(out):
    digits = load_digits()
    x, y = digits.data.astype(np.float64), digits.target.astype(np.int64)
    np.save(os.path.join(out, "digits_x.npy"), x)
    np.save(os.path.join(out, "digits_y.npy"), y)

    # Two overlapping Gaussian clusters with correlated noise and 10% of the labels flipped
    # (the best C lies inside the grid).
    rng = np.random.RandomState(7)
    n, d = 600, 40
    yb = (rng.rand(n) < 0.4).astype(np.int64)
    mix = rng.randn(d, d) / np.sqrt(d)
    xb = rng.randn(n, d) @ mix + np.outer(yb, rng.randn(d) * 0.15) + 3.0
    yb = np.where(rng.rand(n) < 0.1, 1 - yb, yb)
    np.save(os.path.join(out, "binary_x.npy"), xb)
    np.save(os.path.join(out, "binary_y.npy"), yb)

    # Findings from a latent logistic model, 5% unknown entries.
    rng = np.random.RandomState(7)
    n, d, k = 800, 48, 4
    latent = rng.randn(n, 6)
    xm = latent @ rng.randn(6, d) + 2.0 * rng.randn(n, d)
    logits = latent @ rng.randn(6, k) + np.array([-2.0, -1.0, 0.0, -1.5])
    fm = (rng.rand(n, k) < 1.0 / (1.0 + np.exp(-logits))).astype(np.int64)
    fm[rng.rand(n, k) < 0.05] = -1
    np.save(os.path.join(out, "multi_x.npy"), xm)
    np.save(os.path.join(out, "multi_f.npy"), fm)

    # Scores with ties for the metrics.
    s = np.round(rng.rand(500), 2)
    l = (rng.rand(500) < 0.3 + 0.4 * s).astype(np.int64)
    p = rng.dirichlet(np.ones(8), size=300)
    c = rng.randint(0, 8, size=300).astype(np.int64)
    np.save(os.path.join(out, "metric_s.npy"), s)
    np.save(os.path.join(out, "metric_l.npy"), l)
    np.save(os.path.join(out, "metric_p.npy"), p)
    np.save(os.path.join(out, "metric_c.npy"), c)

    reference = {
        "digits": single_label(x, y),
        "binary": single_label(xb, yb),
        "multi": multi_label(xm, fm),
        "metrics": {
            "auroc": roc_auc_score(l, s),
            "average_precision": average_precision_score(l, s),
            "top1": top_k_accuracy_score(c, p, k=1, labels=range(8)),
            "top5": top_k_accuracy_score(c, p, k=5, labels=range(8)),
        },
    }
    with open(os.path.join(out, "reference.json"), "w") as fh:
        json.dump(reference, fh)


if __name__ == "__main__":
    main(sys.argv[1])
