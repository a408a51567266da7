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
SIM_COEFF = 25.0
STD_COEFF = 25.0
COV_COEFF = 1.0
MUTATIONS = ("biased_variance", "std_summed", "cov_with_diagonal")


class VICReg(nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.encoder = torchvision.models.resnet18(weights=None)
        self.encoder.fc = nn.Identity()
        sizes = [512] + dims
        layers = []
        for i in range(len(sizes) - 2):
            layers += [
                nn.Linear(sizes[i], sizes[i + 1]),
                nn.BatchNorm1d(sizes[i + 1]),
                nn.ReLU(),
            ]
        layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
        self.projector = nn.Sequential(*layers)

    def forward(self, x):
        return self.projector(self.encoder(x))


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

    model = VICReg(PROJECTOR_DIMS)
    perturb_batch_norm(model, gen)
    model.train()
    v1 = torch.rand(BATCH, 3, SIZE, SIZE, generator=gen)
    v2 = torch.rand(BATCH, 3, SIZE, SIZE, generator=gen)
    save_file(tensors_of(model), os.path.join(out_dir, "initial.safetensors"))
    save_file({"v1": v1, "v2": v2}, os.path.join(out_dir, "views.safetensors"))

    loss = vicreg_loss(model(v1), model(v2), mutation)
    loss.backward()

    expected = {"loss": loss.detach().reshape(1).clone()}
    for name, p in model.named_parameters():
        expected["grad." + name] = p.grad.detach().clone().contiguous()
    for name, b in model.named_buffers():
        if not name.endswith("num_batches_tracked"):
            expected["after_forward." + name] = b.detach().clone()
    model.eval()
    with torch.no_grad():
        val_loss = vicreg_loss(model(v1), model(v2), mutation)
    expected["val_loss"] = val_loss.reshape(1).clone()
    save_file(expected, os.path.join(out_dir, "expected.safetensors"))

    decay_names = [n for n, p in model.named_parameters() if p.ndim > 1]
    with open(os.path.join(out_dir, "decay_names.txt"), "w") as f:
        f.write("\n".join(decay_names) + "\n")
    print(
        f"reference VICReg step: loss {loss.item():.8f}, validation loss "
        f"{val_loss.item():.8f}" + (f" (MUTATION {mutation})" if mutation else "")
    )


if __name__ == "__main__":
    main()
