"""Reference SimCLR training step, built as InnerEye-DeepLearning builds it (SimCLRInnerEye on
top of pl_bolts 0.4.0's SimCLR: SSLEncoder, `_Projection`, `nt_xent_loss` at temperature 0.1,
Adam over every parameter with weight decay 1e-6), for the Rust parity test `simclr_parity.rs`.

Usage: simclr_reference.py OUT_DIR [SEED] [MUTATION]

Writes to OUT_DIR, with tensor names in ssl-host's scheme (`encoder.conv1.weight`,
`projection.model.0.bias`, `projection.model.1.running_mean`):
- initial.safetensors: every parameter and BatchNorm running statistic;
- views.safetensors: `v1`, `v2` (two [8, 3, 32, 32] view batches);
- expected.safetensors: `loss`; `grad.<name>` after `loss.backward()`;
  `after_forward.<buffer name>` (running statistics after the loss forward);
  `after_step.<name>` after one Adam step;
- decay_names.txt: the parameters in a weight-decay group, one per line.

MUTATION (for checking that the parity test can fail; never used by the test): `temperature`
(0.5 instead of 0.1), `swap_views` (v2 first), `no_self_sub` (the self-similarity not removed).

BatchNorm weights, biases and running statistics are perturbed away from 1/0/0/1 so that a
swapped tensor cannot go unnoticed.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from parity_common import (
    LR,
    WEIGHT_DECAY,
    SSLEncoder,
    perturb_batch_norm,
    save,
    start,
    step,
    tensors_of,
    two_views,
    write_decay_names,
)

TEMPERATURE = 0.1
MUTATIONS = ("temperature", "swap_views", "no_self_sub")


class Projection(nn.Module):
    """InnerEye's `_Projection`: Linear(bias) -> BatchNorm1d -> ReLU -> Linear(no bias), then
    L2-normalised rows."""

    def __init__(self, input_dim, hidden_dim=2048, output_dim=128):
        super().__init__()
        self.model = nn.Sequential(
            nn.Linear(input_dim, hidden_dim, bias=True),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, output_dim, bias=False),
        )

    def forward(self, x):
        return F.normalize(self.model(x), dim=1)


class SimCLR(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = SSLEncoder()
        self.projection = Projection(512, 2048, 128)

    def forward(self, x):
        return self.encoder(x)


def nt_xent(z1, z2, temperature, subtract_self=True, eps=1e-6):
    """pl_bolts 0.4.0's NT-Xent on one process: the denominator is the row sum of
    exp(similarity / T) over all 2B projections minus e^(1/T) (the self-similarity of a unit
    vector), clamped at eps; the positive pair stays in it."""
    both = torch.cat([z1, z2], dim=0)
    # One process: the "gathered" projections are the local ones.
    gathered = torch.cat([z1, z2], dim=0)
    similarity = torch.exp(both @ gathered.t().contiguous() / temperature)
    row_sums = similarity.sum(dim=-1)
    if subtract_self:
        row_sums = row_sums - torch.full_like(row_sums, math.e ** (1.0 / temperature))
    negatives = torch.clamp(row_sums, min=eps)
    positives = torch.exp((z1 * z2).sum(dim=-1) / temperature)
    positives = torch.cat([positives, positives], dim=0)
    return -torch.log(positives / (negatives + eps)).mean()


def our_name(name):
    """`encoder.cnn_model.conv1.weight` -> `encoder.conv1.weight`."""
    return name.replace("encoder.cnn_model.", "encoder.")


def main():
    out_dir, mutation, gen = start(MUTATIONS)
    model = SimCLR()
    perturb_batch_norm(model, gen)
    model.train()

    v1, v2 = two_views(gen)

    initial = tensors_of(model, our_name)
    save(out_dir, "initial.safetensors", initial)
    save(out_dir, "views.safetensors", {"v1": v1, "v2": v2})

    # SimCLRInnerEye.shared_step: ((img1, img2), y) = batch[ENCODER];
    # z1 = projection(encoder(img1)), z2 = projection(encoder(img2)).
    img1, img2 = (v2, v1) if mutation == "swap_views" else (v1, v2)
    h1 = model(img1)
    h2 = model(img2)
    z1 = model.projection(h1)
    z2 = model.projection(h2)
    temperature = 0.5 if mutation == "temperature" else TEMPERATURE
    loss = nt_xent(z1, z2, temperature, subtract_self=mutation != "no_self_sub")

    # bolts SimCLR.configure_optimizers with exclude_bn_bias=False, optimizer "adam":
    # one group, every parameter, weight decay 1e-6 (coupled L2).
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    decay_names = [our_name(n) for n, _ in model.named_parameters()]
    expected = step(loss, optimizer, model, our_name)
    save(out_dir, "expected.safetensors", expected)
    write_decay_names(out_dir, decay_names)
    print(
        f"reference SimCLR step: loss {loss.item():.8f}, {len(initial)} initial tensors"
        + (f" (MUTATION {mutation})" if mutation else "")
    )


if __name__ == "__main__":
    main()
