"""Reference SimSiam training step, written from the paper (Chen & He 2021: 3-layer projector
with BatchNorm on every layer and no ReLU at the output, bottleneck predictor 2048 -> 512 ->
2048, loss -1/2 (cos(p1, sg(z2)) + cos(p2, sg(z1)))), for the Rust parity test
`simsiam_parity.rs`.

Usage: simsiam_reference.py OUT_DIR [SEED] [MUTATION]

MUTATION (for checking that the parity test can fail; never used by the plain test):
`no_stopgrad` (gradients also flow through z), `output_relu` (a ReLU after the projector's
output BatchNorm), `one_side` (only the D(p1, z2) term, not halved).

Writes to OUT_DIR, with tensor names in ssl-host's scheme (`encoder.conv1.weight`,
`projector.model.{0,1,3,4,6,7}.*`, `predictor.model.{0,1,3}.*`):
- initial.safetensors: every parameter and BatchNorm running statistic;
- views.safetensors: `v1`, `v2` (two [8, 3, 32, 32] view batches);
- expected.safetensors: `loss`; `grad.<name>`; `after_forward.<buffer>`; `after_step.<name>`
  after one Adam step (no decay on names with bias/bn/norm/downsample.1, ssl-host's default
  hints).

BatchNorm weights, biases and running statistics are perturbed away from 1/0/0/1 so that a
swapped tensor cannot go unnoticed.
"""

import torch.nn.functional as F
from torch import nn

from parity_common import (
    adam,
    perturb_batch_norm,
    resnet18_trunk,
    save,
    start,
    step,
    tensors_of,
    two_views,
)

DIM = 2048
PRED = 512
MUTATIONS = ("no_stopgrad", "output_relu", "one_side")


class SimSiam(nn.Module):
    def __init__(self, output_relu=False):
        super().__init__()
        self.encoder = resnet18_trunk()
        layers = [
            nn.Linear(512, DIM, bias=False), nn.BatchNorm1d(DIM), nn.ReLU(),
            nn.Linear(DIM, DIM, bias=False), nn.BatchNorm1d(DIM), nn.ReLU(),
            nn.Linear(DIM, DIM, bias=False), nn.BatchNorm1d(DIM, affine=False),
        ]
        if output_relu:
            layers.append(nn.ReLU())
        self.projector = nn.Sequential(*layers)
        self.predictor = nn.Sequential(
            nn.Linear(DIM, PRED, bias=False), nn.BatchNorm1d(PRED), nn.ReLU(),
            nn.Linear(PRED, DIM),
        )


def our_name(name):
    """`projector.0.weight` -> `projector.model.0.weight` (ssl-host's heads keep PyTorch's
    `self.model = nn.Sequential(...)` naming)."""
    for head in ("projector.", "predictor."):
        if name.startswith(head):
            return head + "model." + name[len(head):]
    return name


def D(p, z):
    """Negative cosine similarity, averaged over the batch."""
    return -(F.normalize(p, dim=1) * F.normalize(z, dim=1)).sum(dim=1).mean()


def main():
    out_dir, mutation, gen = start(MUTATIONS)
    model = SimSiam(output_relu=mutation == "output_relu")
    perturb_batch_norm(model, gen)
    model.train()
    v1, v2 = two_views(gen)
    save(out_dir, "initial.safetensors", tensors_of(model, our_name))
    save(out_dir, "views.safetensors", {"v1": v1, "v2": v2})

    z1 = model.projector(model.encoder(v1))
    z2 = model.projector(model.encoder(v2))
    p1 = model.predictor(z1)
    p2 = model.predictor(z2)
    sg = (lambda z: z) if mutation == "no_stopgrad" else (lambda z: z.detach())
    if mutation == "one_side":
        loss = D(p1, sg(z2))
    else:
        loss = 0.5 * D(p1, sg(z2)) + 0.5 * D(p2, sg(z1))

    optimizer, _ = adam(model.named_parameters())
    expected = step(loss, optimizer, model, our_name)
    save(out_dir, "expected.safetensors", expected)
    print(
        f"reference SimSiam step: loss {loss.item():.8f}"
        + (f" (MUTATION {mutation})" if mutation else "")
    )


if __name__ == "__main__":
    main()
