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

import os
import sys

import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from torch import nn

BATCH = 8
SIZE = 32
PROJECTOR_DIMS = [96, 80, 64]
LAMBD = 0.0051
SCALE_LOSS = 1.0
MUTATIONS = ("lambda_on_diagonal", "unbiased_std", "lambd_inverse_d")


class BarlowTwins(nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.encoder = torchvision.models.resnet18(weights=None)
        self.encoder.fc = nn.Identity()
        sizes = [512] + dims
        layers = []
        for i in range(len(sizes) - 2):
            layers += [
                nn.Linear(sizes[i], sizes[i + 1], bias=False),
                nn.BatchNorm1d(sizes[i + 1]),
                nn.ReLU(),
            ]
        layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
        self.projector = nn.Sequential(*layers)

    def forward(self, x):
        return self.projector(self.encoder(x))


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


def perturb_batch_norm(module, generator):
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                m.weight.copy_(1 + 0.2 * torch.randn(n, generator=generator))
                m.bias.copy_(0.2 * torch.randn(n, generator=generator))
                m.running_mean.copy_(0.3 * torch.randn(n, generator=generator))
                m.running_var.copy_(0.5 + torch.rand(n, generator=generator))


def tensors_of(module):
    out = {}
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if name.endswith("num_batches_tracked"):
            continue
        out[name] = t.detach().clone().contiguous()
    return out


def main():
    out_dir = sys.argv[1]
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    mutation = sys.argv[3] if len(sys.argv) > 3 else None
    assert mutation in (None,) + MUTATIONS, mutation
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(seed)

    model = BarlowTwins(PROJECTOR_DIMS)
    perturb_batch_norm(model, gen)
    model.train()
    v1 = torch.rand(BATCH, 3, SIZE, SIZE, generator=gen)
    v2 = torch.rand(BATCH, 3, SIZE, SIZE, generator=gen)
    save_file(tensors_of(model), os.path.join(out_dir, "initial.safetensors"))
    save_file({"v1": v1, "v2": v2}, os.path.join(out_dir, "views.safetensors"))

    lambd = 1.0 / PROJECTOR_DIMS[-1] if mutation == "lambd_inverse_d" else LAMBD
    loss = barlow_twins_loss(model(v1), model(v2), lambd, SCALE_LOSS, mutation)
    loss.backward()

    expected = {"loss": loss.detach().reshape(1).clone()}
    for name, p in model.named_parameters():
        expected["grad." + name] = p.grad.detach().clone().contiguous()
    for name, b in model.named_buffers():
        if not name.endswith("num_batches_tracked"):
            expected["after_forward." + name] = b.detach().clone()
    model.eval()
    with torch.no_grad():
        val_loss = barlow_twins_loss(model(v1), model(v2), lambd, SCALE_LOSS, mutation)
    expected["val_loss"] = val_loss.reshape(1).clone()
    save_file(expected, os.path.join(out_dir, "expected.safetensors"))

    decay_names = [n for n, p in model.named_parameters() if p.ndim > 1]
    with open(os.path.join(out_dir, "decay_names.txt"), "w") as f:
        f.write("\n".join(decay_names) + "\n")
    print(
        f"reference Barlow Twins step: loss {loss.item():.8f}, validation loss "
        f"{val_loss.item():.8f}" + (f" (MUTATION {mutation})" if mutation else "")
    )


if __name__ == "__main__":
    main()
