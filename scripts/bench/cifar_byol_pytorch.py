"""One BYOL training epoch in PyTorch, built as the original builds it, for `scripts/bench/cifar-byol`.

Usage: cifar_byol_pytorch.py CIFAR_DIR BATCH NUM_WORKERS

Reads the CIFAR-10 binary layout (`CIFAR_DIR/cifar-10-batches-bin/data_batch_*.bin`), keeps the
first 90% as the training split (val_split 0.1), and runs one epoch of what ssl-host's
`CIFAR10BYOL` with `--ssl_encoder=resnet18` does per step:
- two views per image with the CIFAR SSL transform of the original (RandomResizedCrop(32),
  flip, ColorJitter(0.8, 0.8, 0.8, 0.2) with p 0.8, grayscale p 0.2, 3x3 Gaussian blur p 0.5);
- BYOL: ResNet-18 with the 3x3 CIFAR stem (max-pool kept), projector 512-2048-128 and
  predictor 128-128-128 MLPs, target network, symmetric cosine loss, Adam with the two
  weight-decay groups, the moving average of the target after the step;
- the online linear head on a batch of 16 linear-head images (RandomResizedCrop + flip):
  encoder forward without gradients, dropout 0.2 + linear, cross-entropy, Adam.
Prints `pytorch: N images in S s: R images/s` for the training loop, timed as ssl-host times
its `throughput/train_images_per_second` (from the first batch request to the last step).
"""

import copy
import glob
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T


def read_cifar(folder):
    records = [np.fromfile(f, dtype=np.uint8).reshape(-1, 3073)
               for f in sorted(glob.glob(os.path.join(folder, "cifar-10-batches-bin", "data_batch_*.bin")))]
    records = np.concatenate(records)
    labels = records[:, 0].astype(np.int64)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels


class Views(Dataset):
    def __init__(self, images, labels, transform, views):
        self.images, self.labels, self.transform, self.views = images, labels, transform, views

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image
        img = Image.fromarray(self.images[i])
        if self.views == 2:
            return self.transform(img), self.transform(img), self.labels[i]
        return self.transform(img), self.labels[i]


def mlp(inp, hidden, out):
    return nn.Sequential(nn.Linear(inp, hidden, bias=False), nn.BatchNorm1d(hidden),
                         nn.ReLU(inplace=True), nn.Linear(hidden, out))


class Arm(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torchvision.models.resnet18(weights=None)
        self.encoder.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.encoder.fc = nn.Identity()
        self.projector = mlp(512, 2048, 128)
        self.predictor = mlp(128, 128, 128)


def cosine_loss(a, b):
    return -(F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(dim=-1).mean()


def main():
    folder, batch, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.manual_seed(1)
    images, labels = read_cifar(folder)
    n_train = len(images) - int(round(0.1 * len(images)))
    images, labels = images[:n_train], labels[:n_train]

    ssl_tf = T.Compose([
        T.RandomResizedCrop(32),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([T.GaussianBlur(3, sigma=(0.1, 2.0))], p=0.5),
        T.ToTensor(),
    ])
    lh_tf = T.Compose([T.RandomResizedCrop(32), T.RandomHorizontalFlip(), T.ToTensor()])
    ssl_loader = DataLoader(Views(images, labels, ssl_tf, 2), batch_size=batch, shuffle=True,
                            drop_last=True, num_workers=workers)
    lh_loader = DataLoader(Views(images, labels, lh_tf, 1), batch_size=16, shuffle=True,
                           drop_last=True, num_workers=(workers + 1) // 2)

    online = Arm()
    target = copy.deepcopy(online)
    for p in target.parameters():
        p.requires_grad_(False)
    decay = [p for n, p in online.named_parameters() if not ("bias" in n or "bn" in n)]
    no_decay = [p for n, p in online.named_parameters() if "bias" in n or "bn" in n]
    optimizer = torch.optim.Adam([{"params": decay, "weight_decay": 1e-6},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=1e-4)
    head = nn.Sequential(nn.Dropout(0.2), nn.Linear(512, 10))
    head_optimizer = torch.optim.Adam(head.parameters(), lr=1e-4)

    steps = len(ssl_loader)
    images_done = 0
    lh_iter = iter(lh_loader)
    ssl_iter = iter(ssl_loader)
    started = time.perf_counter()
    for step in range(steps):
        v1, v2, _ = next(ssl_iter)
        online.train()
        target.train()
        h1 = online.predictor(online.projector(online.encoder(v1)))
        h2 = online.predictor(online.projector(online.encoder(v2)))
        with torch.no_grad():
            z1 = target.projector(target.encoder(v1))
            z2 = target.projector(target.encoder(v2))
        loss = 0.5 * (cosine_loss(h1, z2) + cosine_loss(h2, z1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        images_done += v1.shape[0]

        try:
            x, y = next(lh_iter)
        except StopIteration:
            lh_iter = iter(lh_loader)
            x, y = next(lh_iter)
        with torch.no_grad():
            emb = online.encoder(x)
        head.train()
        lh_loss = F.cross_entropy(head(emb), y)
        head_optimizer.zero_grad()
        lh_loss.backward()
        head_optimizer.step()

        tau = 1 - (1 - 0.99) * (np.cos(np.pi * (step + 1) / steps) + 1) / 2
        with torch.no_grad():
            for t, o in zip(target.parameters(), online.parameters()):
                t.mul_(tau).add_(o, alpha=1 - tau)
    seconds = time.perf_counter() - started
    print(f"pytorch: {images_done} images in {seconds:.1f} s: {images_done / seconds:.1f} images/s "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads, {workers} workers)")


if __name__ == "__main__":
    main()
