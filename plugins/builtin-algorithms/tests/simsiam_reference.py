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

import os
import sys

import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from torch import nn

BATCH = 8
SIZE = 32
LR = 1e-3
WEIGHT_DECAY = 1e-6
DIM = 2048
PRED = 512
MUTATIONS = ("no_stopgrad", "output_relu", "one_side")


class SimSiam(nn.Module):
    def __init__(self, output_relu=False):
        super().__init__()
        self.encoder = torchvision.models.resnet18(weights=None)
        self.encoder.fc = nn.Identity()
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


def perturb_batch_norm(module, generator):
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                if m.affine:
                    m.weight.copy_(1 + 0.2 * torch.randn(n, generator=generator))
                    m.bias.copy_(0.2 * torch.randn(n, generator=generator))
                m.running_mean.copy_(0.3 * torch.randn(n, generator=generator))
                m.running_var.copy_(0.5 + torch.rand(n, generator=generator))


def our_name(name):
    """`projector.0.weight` -> `projector.model.0.weight` (ssl-host's heads keep PyTorch's
    `self.model = nn.Sequential(...)` naming)."""
    for head in ("projector.", "predictor."):
        if name.startswith(head):
            return head + "model." + name[len(head):]
    return name


def tensors_of(module):
    return {
        our_name(name): t.detach().clone().contiguous()
        for name, t in list(module.named_parameters()) + list(module.named_buffers())
        if not name.endswith("num_batches_tracked")
    }


def D(p, z):
    """Negative cosine similarity, averaged over the batch."""
    return -(F.normalize(p, dim=1) * F.normalize(z, dim=1)).sum(dim=1).mean()


def main():
    out_dir = sys.argv[1]
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    mutation = sys.argv[3] if len(sys.argv) > 3 else None
    assert mutation is None or mutation in MUTATIONS, mutation
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(seed)

    model = SimSiam(output_relu=mutation == "output_relu")
    perturb_batch_norm(model, gen)
    model.train()
    v1 = torch.rand(BATCH, 3, SIZE, SIZE, generator=gen)
    v2 = torch.rand(BATCH, 3, SIZE, SIZE, generator=gen)
    save_file(tensors_of(model), os.path.join(out_dir, "initial.safetensors"))
    save_file({"v1": v1, "v2": v2}, os.path.join(out_dir, "views.safetensors"))

    z1 = model.projector(model.encoder(v1))
    z2 = model.projector(model.encoder(v2))
    p1 = model.predictor(z1)
    p2 = model.predictor(z2)
    sg = (lambda z: z) if mutation == "no_stopgrad" else (lambda z: z.detach())
    if mutation == "one_side":
        loss = D(p1, sg(z2))
    else:
        loss = 0.5 * D(p1, sg(z2)) + 0.5 * D(p2, sg(z1))

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        excluded = any(s in name for s in ("bias", "bn", "norm", "downsample.1"))
        (no_decay if excluded else decay).append(p)
    optimizer = torch.optim.Adam(
        [
            {"params": decay, "weight_decay": WEIGHT_DECAY},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=LR,
    )
    optimizer.zero_grad()
    loss.backward()
    expected = {"loss": loss.detach().reshape(1).clone()}
    for name, p in model.named_parameters():
        expected["grad." + our_name(name)] = p.grad.detach().clone().contiguous()
    for name, b in model.named_buffers():
        if not name.endswith("num_batches_tracked"):
            expected["after_forward." + our_name(name)] = b.detach().clone()
    optimizer.step()
    for name, p in model.named_parameters():
        expected["after_step." + our_name(name)] = p.detach().clone().contiguous()
    save_file(expected, os.path.join(out_dir, "expected.safetensors"))
    print(
        f"reference SimSiam step: loss {loss.item():.8f}"
        + (f" (MUTATION {mutation})" if mutation else "")
    )


if __name__ == "__main__":
    main()
