"""Shared parts of the PyTorch references (`*_reference.py`) of the Rust parity tests
(`*_parity.rs`): the command line, the seeding, torchvision's ResNet-18 without `fc`, the
perturbation away from the textbook initialisation, copies of tensors under ssl-host's names,
Adam with ssl-host's default weight-decay groups and the files the tests read.

The tests run each reference as `python tests/<name>_reference.py OUT_DIR SEED [OPTIONS...]`,
so this module, beside them, is on Python's path. It holds only what is the same in every
reference; each reference keeps its own model, loss and step.
"""

import os
import sys

import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

BATCH = 8
SIZE = 32
LR = 1e-3
WEIGHT_DECAY = 1e-6
# ssl-host's default hints: no weight decay on names containing one of these.
NO_DECAY = ("bias", "bn", "norm", "downsample.1")


def arguments():
    """`OUT_DIR [SEED] [OPTIONS...]` -> (out_dir, seed (1 by default), options)."""
    out_dir = sys.argv[1]
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    return out_dir, seed, sys.argv[3:]


def seeded(seed):
    """Seeds torch, makes it deterministic and returns a generator seeded with `seed`."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    return torch.Generator().manual_seed(seed)


def start(mutations=()):
    """For `OUT_DIR [SEED] [MUTATION]`: (out_dir, the mutation (one of `mutations`) or None,
    the generator of [`seeded`])."""
    out_dir, seed, options = arguments()
    mutation = options[0] if options else None
    assert mutation is None or mutation in mutations, mutation
    return out_dir, mutation, seeded(seed)


def resnet18_trunk():
    """torchvision's ResNet-18 (7x7 stem, max-pool kept) without its `fc`."""
    model = torchvision.models.resnet18(weights=None)
    model.fc = nn.Identity()
    return model


class SSLEncoder(nn.Module):
    """InnerEye's `SSLEncoder`: a ResNet-18 (7x7 stem, max-pool kept) without its `fc`."""

    def __init__(self):
        super().__init__()
        self.cnn_model = resnet18_trunk()

    def forward(self, x):
        return self.cnn_model(x)


def two_views(generator):
    """Two [BATCH, 3, SIZE, SIZE] view batches."""
    v1 = torch.rand(BATCH, 3, SIZE, SIZE, generator=generator)
    v2 = torch.rand(BATCH, 3, SIZE, SIZE, generator=generator)
    return v1, v2


def perturb_batch_norm(module, generator):
    """Moves every BatchNorm away from 1/0/0/1 (weight and bias where it has them, running mean
    and variance), so that a swapped tensor cannot go unnoticed."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                if m.affine:
                    m.weight.copy_(1 + 0.2 * torch.randn(n, generator=generator))
                    m.bias.copy_(0.2 * torch.randn(n, generator=generator))
                m.running_mean.copy_(0.3 * torch.randn(n, generator=generator))
                m.running_var.copy_(0.5 + torch.rand(n, generator=generator))


def perturb(module, generator, scale, min_std=None):
    """[`perturb_batch_norm`], then moves every parameter of more than one entry by `scale` of
    its own spread (at least `min_std`, when given)."""
    perturb_batch_norm(module, generator)
    with torch.no_grad():
        for p in module.parameters():
            if p.numel() > 1:
                std = p.std() if min_std is None else p.std().clamp_min(min_std)
                p.add_(scale * std * torch.randn(p.shape, generator=generator))


def same(name):
    return name


def prefixed(prefix):
    """A renaming for [`copies`]: `name` -> `prefix + name`."""
    return lambda name: prefix + name


def copies(named, key="", rename=same, skip=()):
    """`{key + rename(name): a detached contiguous copy}` of the (name, tensor) pairs `named`,
    leaving out `num_batches_tracked` and the names starting with one of `skip`."""
    return {
        key + rename(name): t.detach().clone().contiguous()
        for name, t in named
        if not name.endswith("num_batches_tracked") and not name.startswith(skip)
    }


def tensors_of(module, rename=same, skip=()):
    """Every parameter and buffer of `module` ([`copies`]): what initial.safetensors holds."""
    named = list(module.named_parameters()) + list(module.named_buffers())
    return copies(named, rename=rename, skip=skip)


def trainable(module):
    """The (name, parameter) pairs of `module` that require a gradient."""
    return [(name, p) for name, p in module.named_parameters() if p.requires_grad]


def gradients(module, rename=same):
    """`grad.<name>`: the gradient of every trainable parameter after the backward pass."""
    return copies(((name, p.grad) for name, p in trainable(module)), "grad.", rename)


def adam(named_parameters, no_decay=NO_DECAY):
    """torch's Adam at LR with two groups: WEIGHT_DECAY on the trainable parameters whose names
    contain none of `no_decay`, none on the others. Returns it and the decayed names."""
    decay, excluded, decay_names = [], [], []
    for name, p in named_parameters:
        if not p.requires_grad:
            continue
        if any(s in name for s in no_decay):
            excluded.append(p)
        else:
            decay.append(p)
            decay_names.append(name)
    optimizer = torch.optim.Adam(
        [
            {"params": decay, "weight_decay": WEIGHT_DECAY},
            {"params": excluded, "weight_decay": 0.0},
        ],
        lr=LR,
    )
    return optimizer, decay_names


def paired_parameters(moving, source):
    """The parameters of `moving` (a moving average of `source`, same architecture) and of
    `source` side by side, names checked."""
    for (name, p), (name_source, q) in zip(moving.named_parameters(), source.named_parameters()):
        assert name == name_source
        yield p, q


def step(loss, optimizer, model, rename=same):
    """The backward pass of `loss` and one `optimizer` step on `model`, recorded as
    expected.safetensors holds them: `loss`; `grad.<name>` ([`gradients`]);
    `after_forward.<buffer>` (the running statistics after the loss forward); `after_step.<name>`
    (the trainable parameters after the step)."""
    optimizer.zero_grad()
    loss.backward()
    expected = loss_entry(loss)
    expected.update(gradients(model, rename))
    expected.update(copies(model.named_buffers(), "after_forward.", rename))
    optimizer.step()
    expected.update(copies(trainable(model), "after_step.", rename))
    return expected


def loss_entry(loss):
    """The `loss` entry of expected.safetensors (shape [1])."""
    return {"loss": loss.detach().reshape(1).clone()}


def save(out_dir, file_name, tensors):
    save_file(tensors, os.path.join(out_dir, file_name))


def write_decay_names(out_dir, names):
    """decay_names.txt: the parameters in the weight-decay group, one per line."""
    with open(os.path.join(out_dir, "decay_names.txt"), "w") as f:
        f.write("\n".join(names) + "\n")


class EncoderProjector(nn.Module):
    """ResNet-18 without `fc` and a projector 512 -> dims: Linear (with a bias where
    `hidden_bias`) -> BatchNorm1d -> ReLU per hidden layer, then Linear(bias=False)."""

    def __init__(self, dims, hidden_bias):
        super().__init__()
        self.encoder = resnet18_trunk()
        sizes = [512] + dims
        layers = []
        for i in range(len(sizes) - 2):
            layers += [
                nn.Linear(sizes[i], sizes[i + 1], bias=hidden_bias),
                nn.BatchNorm1d(sizes[i + 1]),
                nn.ReLU(),
            ]
        layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
        self.projector = nn.Sequential(*layers)

    def forward(self, x):
        return self.projector(self.encoder(x))


def batch_statistics_step(out_dir, model, loss_of, generator):
    """The step of the references of `twin_parity.rs` (Barlow Twins, VICReg): perturbs the
    BatchNorms, writes initial.safetensors and the views, then `loss_of(model(v1), model(v2))`
    in training mode with its gradients and running statistics, the same loss in evaluation
    mode right after (`val_loss`), and the decay group (every tensor of two or more dimensions,
    the repositories' LARS excluding biases and BatchNorm). Returns (loss, val_loss)."""
    perturb_batch_norm(model, generator)
    model.train()
    v1, v2 = two_views(generator)
    save(out_dir, "initial.safetensors", tensors_of(model))
    save(out_dir, "views.safetensors", {"v1": v1, "v2": v2})

    loss = loss_of(model(v1), model(v2))
    loss.backward()

    expected = loss_entry(loss)
    expected.update(gradients(model))
    expected.update(copies(model.named_buffers(), "after_forward."))
    model.eval()
    with torch.no_grad():
        val_loss = loss_of(model(v1), model(v2))
    expected["val_loss"] = val_loss.reshape(1).clone()
    save(out_dir, "expected.safetensors", expected)

    write_decay_names(out_dir, [n for n, p in model.named_parameters() if p.ndim > 1])
    return loss, val_loss
