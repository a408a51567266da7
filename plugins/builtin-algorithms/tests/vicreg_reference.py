"""Reference VICReg training step (Bardes et al. 2022), written from the paper's formulas with
the official repository's module layout and term weighting, for the Rust parity test
`vicreg_parity.rs`.

Usage: vicreg_reference.py OUT_DIR [SEED] [MUTATION]

Model: torchvision ResNet-18 without `fc` (7x7 stem), expander Linear(512, 96) -> BatchNorm1d ->
ReLU -> Linear(96, 80) -> BatchNorm1d -> ReLU -> Linear(80, 64, bias=False). Loss, for the
embeddings x, y of the two views ([N, d]):

    s    = mean((x - y)^2)
    v(z) = mean_j relu(1 - sqrt(Var(z_j) + 1e-4))          unbiased variance (torch.var)
    c(z) = sum_{i != j} Cov(z)_ij^2 / d,   Cov(z) = (z - mean z)^T (z - mean z) / (N - 1)
    loss = 25 s + 25 (v(x) + v(y)) / 2 + 1 (c(x) + c(y))

(the official code averages the two views' variance terms and sums their covariance terms).

Writes to OUT_DIR the same files as barlow_twins_reference.py (initial, views, expected with
`loss`, `grad.*`, `after_forward.*`, `val_loss`; decay_names.txt: every tensor of two or more
dimensions, the repository's LARS excluding biases and BatchNorm).

MUTATION (for checking that the parity test can fail; never used by the test):
`biased_variance` (the variance term uses the biased variance), `std_summed` (the two views'
variance terms summed, as the paper's equation, instead of averaged as the official code),
`cov_with_diagonal` (the covariance term keeps the diagonal, the variances).

BatchNorm weights, biases and running statistics are perturbed away from 1/0/0/1 so that a
swapped tensor cannot go unnoticed.
"""

import torch
import torch.nn.functional as F

from parity_common import EncoderProjector, batch_statistics_step, start

PROJECTOR_DIMS = [96, 80, 64]
SIM_COEFF = 25.0
STD_COEFF = 25.0
COV_COEFF = 1.0
MUTATIONS = ("biased_variance", "std_summed", "cov_with_diagonal")


def vicreg_loss(x, y, mutation):
    n, d = x.shape
    invariance = F.mse_loss(x, y)
    off_mask = ~torch.eye(d, dtype=torch.bool)
    if mutation == "cov_with_diagonal":
        off_mask = torch.ones(d, d, dtype=torch.bool)
    variance, covariance = [], []
    for z in (x, y):
        centred = z - z.mean(dim=0)
        std = torch.sqrt(centred.var(dim=0, unbiased=mutation != "biased_variance") + 1e-4)
        variance.append(F.relu(1 - std).mean())
        cov = centred.T @ centred / (n - 1)
        covariance.append(cov[off_mask].pow(2).sum() / d)
    variance = variance[0] + variance[1]
    if mutation != "std_summed":
        variance = variance / 2
    covariance = covariance[0] + covariance[1]
    return SIM_COEFF * invariance + STD_COEFF * variance + COV_COEFF * covariance


def main():
    out_dir, mutation, gen = start(MUTATIONS)
    model = EncoderProjector(PROJECTOR_DIMS, hidden_bias=True)
    loss, val_loss = batch_statistics_step(
        out_dir, model, lambda x, y: vicreg_loss(x, y, mutation), gen
    )
    print(
        f"reference VICReg step: loss {loss.item():.8f}, validation loss "
        f"{val_loss.item():.8f}" + (f" (MUTATION {mutation})" if mutation else "")
    )


if __name__ == "__main__":
    main()
