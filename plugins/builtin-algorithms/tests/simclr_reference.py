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
TEMPERATURE = 0.1


class SSLEncoder(nn.Module):
    """InnerEye's `SSLEncoder`: a ResNet-18 (7x7 stem, max-pool kept) without its `fc`."""

    def __init__(self):
        super().__init__()
        self.cnn_model = torchvision.models.resnet18(weights=None)
        self.cnn_model.fc = nn.Identity()

    def forward(self, x):
        return self.cnn_model(x)


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
        out[our_name(name)] = t.detach().clone().contiguous()
    return out


def main():
    out_dir = sys.argv[1]
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    mutation = sys.argv[3] if len(sys.argv) > 3 else None
    assert mutation in (None, "temperature", "swap_views", "no_self_sub"), mutation
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(seed)

    model = SimCLR()
    perturb_batch_norm(model, gen)
    model.train()

    v1 = torch.rand(BATCH, 3, SIZE, SIZE, generator=gen)
    v2 = torch.rand(BATCH, 3, SIZE, SIZE, generator=gen)

    initial = tensors_of(model)
    save_file(initial, os.path.join(out_dir, "initial.safetensors"))
    save_file({"v1": v1, "v2": v2}, os.path.join(out_dir, "views.safetensors"))

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
    optimizer.zero_grad()
    loss.backward()

    expected = {"loss": loss.detach().reshape(1).clone()}
    for name, p in model.named_parameters():
        expected["grad." + our_name(name)] = p.grad.detach().clone().contiguous()
    for name, b in model.named_buffers():
        if name.endswith("num_batches_tracked"):
            continue
        expected["after_forward." + our_name(name)] = b.detach().clone()

    optimizer.step()
    for name, p in model.named_parameters():
        expected["after_step." + our_name(name)] = p.detach().clone().contiguous()

    save_file(expected, os.path.join(out_dir, "expected.safetensors"))
    with open(os.path.join(out_dir, "decay_names.txt"), "w") as f:
        f.write("\n".join(decay_names) + "\n")
    print(
        f"reference SimCLR step: loss {loss.item():.8f}, {len(initial)} initial tensors"
        + (f" (MUTATION {mutation})" if mutation else "")
    )


if __name__ == "__main__":
    main()
