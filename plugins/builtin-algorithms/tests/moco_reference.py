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

import torch
import torch.nn.functional as F
from torch import nn

from parity_common import (
    adam,
    arguments,
    copies,
    paired_parameters,
    perturb,
    prefixed,
    resnet18_trunk,
    save,
    seeded,
    step,
    tensors_of,
    two_views,
)

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
        self.encoder = resnet18_trunk()
        self.head = nn.Sequential(nn.Linear(512, 2048), nn.ReLU(), nn.Linear(2048, DIM))

    def forward(self, x):
        return self.head(self.encoder(x))


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
    out_dir, seed, options = arguments()
    symmetric = "symmetric" in options
    mutations = [o for o in options if o != "symmetric"]
    assert all(m in MUTATIONS for m in mutations) and len(mutations) <= 1, options
    mutation = mutations[0] if mutations else None
    gen = seeded(seed)
    query_name, key_name = prefixed("query."), prefixed("key.")

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

    v1, v2 = two_views(gen)

    initial = tensors_of(query, query_name)
    initial.update(tensors_of(key, key_name))
    initial["moco.queue"] = queue.clone()
    initial["moco.queue_ptr"] = torch.tensor(ptr, dtype=torch.int64)
    save(out_dir, "initial.safetensors", initial)
    save(out_dir, "views.safetensors", {"v1": v1, "v2": v2})

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

    optimizer, _ = adam(query.named_parameters())
    # update(f_q), then f_k = m f_k + (1 - m) f_q (parameters only), then enqueue(k).
    expected = step(loss, optimizer, query, query_name)
    expected.update(copies(key.named_buffers(), "after_forward.", key_name))
    with torch.no_grad():
        for k, q in paired_parameters(key, query):
            if mutation == "momentum_swap":
                k.copy_((1 - MOMENTUM) * k + MOMENTUM * q)
            else:
                k.copy_(MOMENTUM * k + (1 - MOMENTUM) * q)
    expected.update(copies(key.named_parameters(), "after_momentum.", key_name))
    if mutation != "enqueue_first":
        ptr = enqueue(queue, ptr, keys)
    expected["after.moco.queue"] = queue.clone()
    expected["after.moco.queue_ptr"] = torch.tensor(ptr, dtype=torch.int64)

    save(out_dir, "expected.safetensors", expected)
    print(
        f"reference MoCo step: loss {loss.item():.8f}, {len(initial)} initial tensors"
        + (" (symmetric)" if symmetric else "")
        + (f" (MUTATION {mutation})" if mutation else "")
    )


if __name__ == "__main__":
    main()
