"""Reference MoCo v2 training step, written from the papers (MoCo's Algorithm 1 with MoCo v2's
MLP head and temperature 0.2), for the Rust parity test `moco_parity.rs`.

Usage: moco_reference.py OUT_DIR [SEED] [OPTIONS...]

OPTIONS: `symmetric` (the symmetrised loss, both key batches queued) and at most one MUTATION
(for checking that the parity test can fail; never used by the plain test): `temperature`
(0.07, MoCo v1's, instead of 0.2), `enqueue_first` (the keys are queued before the loss, so
each query also meets its positive among the negatives), `unnormalized_keys` (keys not
L2-normalised), `momentum_swap` (key = (1 - m) key + m query).

Writes to OUT_DIR, with tensor names in ssl-host's scheme (`query.encoder.conv1.weight`,
`query.head.0.weight`, `key.encoder.bn1.running_mean`, `moco.queue`, `moco.queue_ptr`):
- initial.safetensors: every query/key parameter and BatchNorm running statistic, the queue
  [32, 128] (random unit rows) and its pointer (28, so that the 8 keys of a batch wrap around);
- views.safetensors: `v1`, `v2` (two [8, 3, 32, 32] view batches);
- expected.safetensors: `loss`; `grad.<query name>`; `after_forward.<buffer>`;
  `after_step.<query name>` after one Adam step (no decay on names with bias/bn/norm/
  downsample.1, ssl-host's default hints); `after_momentum.<key name>` after the momentum
  update with m = 0.999; `after.moco.queue`, `after.moco.queue_ptr` after enqueueing.

The networks are perturbed away from their textbook initialisation (BatchNorm; the key network
away from the query network, as after some training) so that a swapped tensor, view or network
cannot go unnoticed.
"""

import copy
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
MOMENTUM = 0.999
TEMPERATURE = 0.2
QUEUE = 32
QUEUE_PTR = 28
DIM = 128
MUTATIONS = ("temperature", "enqueue_first", "unnormalized_keys", "momentum_swap")


class Arm(nn.Module):
    """Encoder (ResNet-18, 7x7 stem, no fc) and MoCo v2's head Linear -> ReLU -> Linear."""

    def __init__(self):
        super().__init__()
        self.encoder = torchvision.models.resnet18(weights=None)
        self.encoder.fc = nn.Identity()
        self.head = nn.Sequential(nn.Linear(512, 2048), nn.ReLU(), nn.Linear(2048, DIM))

    def forward(self, x):
        return self.head(self.encoder(x))


def perturb(module, generator, scale):
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


def tensors_of(prefix, module):
    out = {}
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if name.endswith("num_batches_tracked"):
            continue
        out[prefix + name] = t.detach().clone().contiguous()
    return out


def info_nce(q, k, queue, temperature):
    """Cross-entropy of [q.k, q.queue] / T with the positive (index 0) as the label."""
    positive = (q * k).sum(dim=1, keepdim=True)
    negatives = q @ queue.t()
    logits = torch.cat([positive, negatives], dim=1) / temperature
    labels = torch.zeros(q.shape[0], dtype=torch.long)
    return F.cross_entropy(logits, labels)


def enqueue(queue, ptr, keys):
    """The ring: rows ptr, ptr + 1, ... (mod K) take the keys; returns the new pointer."""
    rows = (ptr + torch.arange(keys.shape[0])) % queue.shape[0]
    queue[rows] = keys
    return (ptr + keys.shape[0]) % queue.shape[0]


def main():
    out_dir = sys.argv[1]
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    options = sys.argv[3:]
    symmetric = "symmetric" in options
    mutations = [o for o in options if o != "symmetric"]
    assert all(m in MUTATIONS for m in mutations) and len(mutations) <= 1, options
    mutation = mutations[0] if mutations else None
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(seed)

    query = Arm()
    perturb(query, gen, 0.0)
    key = copy.deepcopy(query)
    perturb(key, gen, 0.1)
    for p in key.parameters():
        p.requires_grad = False
    query.train()
    key.train()
    queue = F.normalize(torch.randn(QUEUE, DIM, generator=gen), dim=1)
    ptr = QUEUE_PTR

    v1 = torch.rand(BATCH, 3, SIZE, SIZE, generator=gen)
    v2 = torch.rand(BATCH, 3, SIZE, SIZE, generator=gen)

    initial = tensors_of("query.", query)
    initial.update(tensors_of("key.", key))
    initial["moco.queue"] = queue.clone()
    initial["moco.queue_ptr"] = torch.tensor(ptr, dtype=torch.int64)
    save_file(initial, os.path.join(out_dir, "initial.safetensors"))
    save_file({"v1": v1, "v2": v2}, os.path.join(out_dir, "views.safetensors"))

    temperature = 0.07 if mutation == "temperature" else TEMPERATURE

    def key_of(x):
        with torch.no_grad():
            k = key(x)
            return k if mutation == "unnormalized_keys" else F.normalize(k, dim=1)

    # Algorithm 1: q = f_q(x_q), k = f_k(x_k).detach(), InfoNCE against the queue.
    q1 = F.normalize(query(v1), dim=1)
    k2 = key_of(v2)
    if symmetric:
        q2 = F.normalize(query(v2), dim=1)
        k1 = key_of(v1)
        keys = torch.cat([k2, k1])
    else:
        keys = k2
    if mutation == "enqueue_first":
        ptr = enqueue(queue, ptr, keys)
    if symmetric:
        loss = 0.5 * (info_nce(q1, k2, queue, temperature) + info_nce(q2, k1, queue, temperature))
    else:
        loss = info_nce(q1, k2, queue, temperature)

    decay, no_decay = [], []
    for name, p in query.named_parameters():
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
    for name, p in query.named_parameters():
        expected["grad.query." + name] = p.grad.detach().clone().contiguous()
    for prefix, module in (("query.", query), ("key.", key)):
        for name, b in module.named_buffers():
            if not name.endswith("num_batches_tracked"):
                expected["after_forward." + prefix + name] = b.detach().clone()

    # update(f_q), then f_k = m f_k + (1 - m) f_q (parameters only), then enqueue(k).
    optimizer.step()
    for name, p in query.named_parameters():
        expected["after_step.query." + name] = p.detach().clone().contiguous()
    with torch.no_grad():
        for (name, k), (name_q, q) in zip(key.named_parameters(), query.named_parameters()):
            assert name == name_q
            if mutation == "momentum_swap":
                k.copy_((1 - MOMENTUM) * k + MOMENTUM * q)
            else:
                k.copy_(MOMENTUM * k + (1 - MOMENTUM) * q)
    for name, k in key.named_parameters():
        expected["after_momentum.key." + name] = k.detach().clone().contiguous()
    if mutation != "enqueue_first":
        ptr = enqueue(queue, ptr, keys)
    expected["after.moco.queue"] = queue.clone()
    expected["after.moco.queue_ptr"] = torch.tensor(ptr, dtype=torch.int64)

    save_file(expected, os.path.join(out_dir, "expected.safetensors"))
    print(
        f"reference MoCo step: loss {loss.item():.8f}, {len(initial)} initial tensors"
        + (" (symmetric)" if symmetric else "")
        + (f" (MUTATION {mutation})" if mutation else "")
    )


if __name__ == "__main__":
    main()
