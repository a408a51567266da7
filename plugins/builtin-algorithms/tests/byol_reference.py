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
import functools

import torch
import torch.nn.functional as F
from torch import nn

from parity_common import (
    SSLEncoder,
    adam,
    copies,
    paired_parameters,
    perturb,
    save,
    start,
    step,
    tensors_of,
    two_views,
    write_decay_names,
)

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


def main():
    out_dir, _, gen = start()

    online = SiameseArm()
    perturb(online, gen, 0.0)
    target = copy.deepcopy(online)
    perturb(target, gen, 0.1)
    online.train()
    target.train()

    v1, v2 = two_views(gen)

    online_name = functools.partial(our_name, "online.")
    target_name = functools.partial(our_name, "target.")
    initial = tensors_of(online, online_name)
    initial.update(tensors_of(target, target_name, skip=("predictor.",)))
    save(out_dir, "initial.safetensors", initial)
    save(out_dir, "views.safetensors", {"v1": v1, "v2": v2})

    # BYOLInnerEye.shared_step
    h1 = online(v1)
    h2 = online(v2)
    with torch.no_grad():
        z1 = target.forward_until_predictor(v1)
        z2 = target.forward_until_predictor(v2)
    loss = 0.5 * (cosine_loss(h1, z2) + cosine_loss(h2, z1))

    # BYOLInnerEye.configure_optimizers: substring rule on online_network.named_parameters().
    optimizer, decay_names = adam(online.named_parameters(), no_decay=("bias", "bn"))
    decay_names = [online_name(n) for n in decay_names]
    expected = step(loss, optimizer, online, online_name)
    expected.update(
        copies(target.named_buffers(), "after_forward.", target_name, skip=("predictor.",))
    )

    # ByolMovingAverageWeightUpdate.update_weights: parameters only, tau 0.99 first.
    with torch.no_grad():
        for t, o in paired_parameters(target, online):
            t.copy_(TAU * t + (1 - TAU) * o)
    expected.update(
        copies(target.named_parameters(), "after_ema.", target_name, skip=("predictor.",))
    )

    save(out_dir, "expected.safetensors", expected)
    write_decay_names(out_dir, decay_names)
    print(f"reference BYOL step: loss {loss.item():.8f}, {len(initial)} initial tensors")


if __name__ == "__main__":
    main()
