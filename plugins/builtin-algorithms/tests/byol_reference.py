"""Reference BYOL training step, built as InnerEye-DeepLearning builds it (BYOLInnerEye,
SiameseArm, _MLP, ByolMovingAverageWeightUpdate), for the Rust parity test `byol_parity.rs`.

Usage: byol_reference.py OUT_DIR [SEED]

Writes to OUT_DIR, with tensor names in ssl-host's scheme (`online.encoder.conv1.weight`,
`online.projector.model.0.weight`, `online.predictor.model.1.running_mean`, `target.*`):
- initial.safetensors: every online/target parameter and BatchNorm running statistic;
- views.safetensors: `v1`, `v2` (two [8, 3, 32, 32] view batches);
- expected.safetensors: `loss`; `grad.<online name>` after `loss.backward()`;
  `after_forward.<buffer name>` (running statistics after the loss forward);
  `after_step.<online name>` after one Adam step; `after_ema.<target name>` after the moving
  average with tau 0.99;
- decay_names.txt: the online parameters in the weight-decay group, one per line.

The networks are perturbed away from their textbook initialisation (BatchNorm weights, biases
and running statistics; the target away from the online network, as after some training) so
that a swapped tensor, view or network cannot go unnoticed.
"""

import copy
import os
import sys

import torch
import torchvision
from safetensors.torch import save_file
from torch import nn
import torch.nn.functional as F

BATCH = 8
SIZE = 32
LR = 1e-3
WEIGHT_DECAY = 1e-6
TAU = 0.99


class MLP(nn.Module):
    """InnerEye's `_MLP`: Linear(bias=False) -> BatchNorm1d -> ReLU -> Linear."""

    def __init__(self, input_dim, hidden_dim, output_dim):
        super().__init__()
        self.model = nn.Sequential(
            nn.Linear(input_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, output_dim, bias=True),
        )

    def forward(self, x):
        return self.model(x)


class SSLEncoder(nn.Module):
    """InnerEye's `SSLEncoder`: a ResNet-18 (7x7 stem, max-pool kept) without its `fc`."""

    def __init__(self):
        super().__init__()
        self.cnn_model = torchvision.models.resnet18(weights=None)
        self.cnn_model.fc = nn.Identity()

    def forward(self, x):
        return self.cnn_model(x)


class SiameseArm(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = SSLEncoder()
        self.projector = MLP(512, 2048, 128)
        self.predictor = MLP(128, 128, 128)

    def forward(self, x):
        return self.predictor(self.projector(self.encoder(x)))

    def forward_until_predictor(self, x):
        return self.projector(self.encoder(x))


def cosine_loss(a, b):
    return -(F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(dim=-1).mean()


def our_name(prefix, name):
    """`encoder.cnn_model.conv1.weight` -> `online.encoder.conv1.weight`."""
    return prefix + name.replace("encoder.cnn_model.", "encoder.")


def tensors_of(prefix, module, with_predictor):
    out = {}
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if name.endswith("num_batches_tracked"):
            continue
        if not with_predictor and name.startswith("predictor."):
            continue
        out[our_name(prefix, name)] = t.detach().clone().contiguous()
    return out


def perturb(module, generator, scale):
    """Moves every parameter by `scale` of its own spread and BatchNorm away from 1/0/0/1."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                m.weight.copy_(1 + 0.2 * torch.randn(n, generator=generator))
                m.bias.copy_(0.2 * torch.randn(n, generator=generator))
                m.running_mean.copy_(0.3 * torch.randn(n, generator=generator))
                m.running_var.copy_(0.5 + torch.rand(n, generator=generator))
        for p in module.parameters():
            if p.numel() > 1:
                p.add_(scale * p.std() * torch.randn(p.shape, generator=generator))


def main():
    out_dir = sys.argv[1]
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(seed)

    online = SiameseArm()
    perturb(online, gen, 0.0)
    target = copy.deepcopy(online)
    perturb(target, gen, 0.1)
    online.train()
    target.train()

    v1 = torch.rand(BATCH, 3, SIZE, SIZE, generator=gen)
    v2 = torch.rand(BATCH, 3, SIZE, SIZE, generator=gen)

    initial = tensors_of("online.", online, True)
    initial.update(tensors_of("target.", target, False))
    save_file(initial, os.path.join(out_dir, "initial.safetensors"))
    save_file({"v1": v1, "v2": v2}, os.path.join(out_dir, "views.safetensors"))

    # BYOLInnerEye.shared_step
    h1 = online(v1)
    h2 = online(v2)
    with torch.no_grad():
        z1 = target.forward_until_predictor(v1)
        z2 = target.forward_until_predictor(v2)
    loss = 0.5 * (cosine_loss(h1, z2) + cosine_loss(h2, z1))

    # BYOLInnerEye.configure_optimizers: substring rule on online_network.named_parameters().
    decay, no_decay, decay_names = [], [], []
    for name, p in online.named_parameters():
        if "bias" in name or "bn" in name:
            no_decay.append(p)
        else:
            decay.append(p)
            decay_names.append(our_name("online.", name))
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
    for name, p in online.named_parameters():
        expected["grad." + our_name("online.", name)] = p.grad.detach().clone().contiguous()
    for prefix, module in (("online.", online), ("target.", target)):
        for name, b in module.named_buffers():
            if name.endswith("num_batches_tracked"):
                continue
            if prefix == "target." and name.startswith("predictor."):
                continue
            expected["after_forward." + our_name(prefix, name)] = b.detach().clone()

    optimizer.step()
    for name, p in online.named_parameters():
        expected["after_step." + our_name("online.", name)] = p.detach().clone().contiguous()

    # ByolMovingAverageWeightUpdate.update_weights: parameters only, tau 0.99 first.
    with torch.no_grad():
        for (name, t), (name_o, o) in zip(target.named_parameters(), online.named_parameters()):
            assert name == name_o
            t.copy_(TAU * t + (1 - TAU) * o)
    for name, t in target.named_parameters():
        if name.startswith("predictor."):
            continue
        expected["after_ema." + our_name("target.", name)] = t.detach().clone().contiguous()

    save_file(expected, os.path.join(out_dir, "expected.safetensors"))
    with open(os.path.join(out_dir, "decay_names.txt"), "w") as f:
        f.write("\n".join(decay_names) + "\n")
    print(f"reference BYOL step: loss {loss.item():.8f}, {len(initial)} initial tensors")


if __name__ == "__main__":
    main()
