"""Reference Barlow Twins training step (Zbontar et al. 2021), written from the paper's formulas
with the official repository's module layout, for the Rust parity test `barlow_twins_parity.rs`.

Usage: barlow_twins_reference.py OUT_DIR [SEED] [MUTATION]

Model: torchvision ResNet-18 without `fc` (7x7 stem), projector Linear(512, 96, bias=False) ->
BatchNorm1d -> ReLU -> Linear(96, 80, bias=False) -> BatchNorm1d -> ReLU -> Linear(80, 64,
bias=False). Loss, for the embeddings z1, z2 of the two views ([N, d]):

    n(z) = (z - mean(z)) / sqrt(var(z) + 1e-5)       along the batch, biased variance
                                                     (BatchNorm1d(d, affine=False), training)
    C    = n(z1)^T n(z2) / N
    loss = scale_loss * (sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2)
    lambd = 0.0051, scale_loss = 1

Writes to OUT_DIR, with tensor names in ssl-host's scheme (`encoder.conv1.weight`,
`projector.1.running_mean`):
- initial.safetensors: every parameter and BatchNorm running statistic;
- views.safetensors: `v1`, `v2` (two [8, 3, 32, 32] view batches);
- expected.safetensors: `loss`; `grad.<name>` after `loss.backward()`;
  `after_forward.<buffer name>` (running statistics after the loss forward); `val_loss` (the
  loss in evaluation mode right after, before any optimizer step);
- decay_names.txt: the parameters that get weight decay and LARS adaptation (the repository's
  LARS excludes every 1-D tensor: biases and BatchNorm).

MUTATION (for checking that the parity test can fail; never used by the test):
`lambda_on_diagonal` (lambd weighs the diagonal term instead of the off-diagonal one),
`unbiased_std` (the batch normalisation divides by the unbiased standard deviation, as
solo-learn and lightly do, not BatchNorm's biased one), `lambd_inverse_d` (lambd = 1/d instead
of the paper's 0.0051).

BatchNorm weights, biases and running statistics are perturbed away from 1/0/0/1 so that a
swapped tensor cannot go unnoticed.
"""

import torch
import torch.nn.functional as F

from parity_common import EncoderProjector, batch_statistics_step, start

PROJECTOR_DIMS = [96, 80, 64]
LAMBD = 0.0051
SCALE_LOSS = 1.0
MUTATIONS = ("lambda_on_diagonal", "unbiased_std", "lambd_inverse_d")


def batch_normalise(z, unbiased=False):
    """BatchNorm1d(affine=False) in training mode, written out."""
    centred = z - z.mean(dim=0)
    return centred / torch.sqrt(z.var(dim=0, unbiased=unbiased) + 1e-5)


def barlow_twins_loss(z1, z2, lambd, scale_loss, mutation):
    n1 = batch_normalise(z1, unbiased=mutation == "unbiased_std")
    n2 = batch_normalise(z2, unbiased=mutation == "unbiased_std")
    if mutation is None:
        # The formula is the original's nn.BatchNorm1d(d, affine=False) in training mode.
        torch.testing.assert_close(n1, F.batch_norm(z1, None, None, training=True, eps=1e-5))
    c = n1.T @ n2 / z1.shape[0]
    d = c.shape[0]
    off_mask = ~torch.eye(d, dtype=torch.bool)
    on_diagonal = (1 - torch.diagonal(c)).pow(2).sum()
    off_diagonal = c[off_mask].pow(2).sum()
    if mutation == "lambda_on_diagonal":
        return scale_loss * (lambd * on_diagonal + off_diagonal)
    return scale_loss * (on_diagonal + lambd * off_diagonal)


def main():
    out_dir, mutation, gen = start(MUTATIONS)
    model = EncoderProjector(PROJECTOR_DIMS, hidden_bias=False)
    lambd = 1.0 / PROJECTOR_DIMS[-1] if mutation == "lambd_inverse_d" else LAMBD
    loss, val_loss = batch_statistics_step(
        out_dir,
        model,
        lambda z1, z2: barlow_twins_loss(z1, z2, lambd, SCALE_LOSS, mutation),
        gen,
    )
    print(
        f"reference Barlow Twins step: loss {loss.item():.8f}, validation loss "
        f"{val_loss.item():.8f}" + (f" (MUTATION {mutation})" if mutation else "")
    )


if __name__ == "__main__":
    main()
