"""The original system's augmentation pipelines and datasets, rebuilt for the benchmarks.

Written for `scripts/bench/augment` (augment_reference.py) and `scripts/bench/gpu`
(gpu_reference.py) from the description in `original-system.md` §4 (the InnerEye-DeepLearning
SSL module and pl_bolts 0.4.0), the way the original builds them:

- Chest X-rays (§4b, `cxr_ssl_encoder_augmentations.yaml`): PIL image -> `to_tensor` ->
  `[Z=1, C=1, H, W]` -> ExpandChannels (to 3 channels) -> RandomAffine(180, translate (0, 0),
  shear 40, nearest) -> RandomResizedCrop(256, scale (0.4, 1), bilinear on the tensor, no
  antialias as torchvision 0.11 did) -> RandomHorizontalFlip -> RandomGamma((0.5, 1.5)) ->
  ColorJitter(brightness .2, contrast .2) -> ElasticTransform(alpha 34, sigma 4, p .4) ->
  CenterCrop(224) -> RandomErasing((0.15, 0.4), (0.33, 3)) -> AddGaussianNoise(std .05, p .5)
  -> `[3, 224, 224]`. The linear head's pipeline (`cxr_linear_head_augmentations.yaml`) is
  `cxr_linear_head_transform`.
- CIFAR (§4c, bolts `SimCLRTrainDataTransform(32)`): RandomResizedCrop(32) -> flip ->
  RandomApply(ColorJitter(.8, .8, .8, .2), p .8) -> RandomGrayscale(.2) -> bolts' GaussianBlur
  (3x3, sigma U[0.1, 2], p .5, with cv2) -> ToTensor.

ExpandChannels, RandomGamma, ElasticTransform, AddGaussianNoise and the bolts blur are written
here from the formulas (InnerEye's own classes); the rest is torchvision's. Fallbacks, each
reported by `backends()`: without scipy the elastic field is smoothed with a separable Gaussian
convolution (zero padding, radius round(4 sigma), as scipy's `gaussian_filter(mode="constant")`)
and sampled with `grid_sample` (bilinear, zeros outside) instead of `map_coordinates(order=1)`;
without cv2 the 3x3 blur is torchvision's `gaussian_blur` (same kernel, reflect-101 border as
cv2's default).
"""

import glob
import os
import random

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

try:
    from scipy.ndimage import gaussian_filter, map_coordinates

    HAVE_SCIPY = True
except ImportError:  # the GPU machine may lack scipy
    HAVE_SCIPY = False

try:
    import cv2

    HAVE_CV2 = True
except ImportError:
    HAVE_CV2 = False

# Forced fallbacks (tests of the fallback paths on a machine that has both libraries).
USE_SCIPY = HAVE_SCIPY and os.environ.get("BENCH_NO_SCIPY") != "1"
USE_CV2 = HAVE_CV2 and os.environ.get("BENCH_NO_CV2") != "1"


def backends():
    """What the elastic transform and the CIFAR blur run on here."""
    return {
        "elastic": "scipy" if USE_SCIPY else "torch (scipy missing: conv + grid_sample)",
        "blur": "cv2" if USE_CV2 else "torchvision (cv2 missing)",
    }


# ---------------------------------------------------------------- chest X-ray transforms (§4b)


class ExpandChannels:
    """`[Z, 1, H, W]` -> `[Z, 3, H, W]` by repeating the channel (a copy, as the original)."""

    def __call__(self, x):
        if x.shape[1] != 1:
            raise ValueError(f"ExpandChannels expects [Z, 1, H, W], got {list(x.shape)}")
        return torch.repeat_interleave(x, 3, dim=1)


class RandomGamma:
    """One gamma ~ U(scale) (Python's `random`) for the whole tensor; `clamp(x ** gamma, 0, 1)`."""

    def __init__(self, scale=(0.5, 1.5)):
        self.scale = scale

    def __call__(self, x):
        gamma = random.uniform(*self.scale)
        return TF.adjust_gamma(x, gamma)


def _gaussian_kernel(sigma):
    radius = int(4.0 * sigma + 0.5)  # scipy's truncate=4.0
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).to(torch.float32), radius


class ElasticTransform:
    """With probability `p`: one displacement field for all z and c, `d = smooth(U(-1, 1)) * alpha`
    per axis (Gaussian of `sigma`, zeros outside), rows moved by `dx`, columns by `dy`; the
    data sampled there with linear interpolation, 0 outside."""

    def __init__(self, alpha=34.0, sigma=4.0, p=0.4):
        self.alpha, self.sigma, self.p = alpha, sigma, p

    def __call__(self, x):
        if np.random.random(1) > self.p:
            return x
        h, w = x.shape[-2:]
        if USE_SCIPY:
            return self._scipy(x, h, w)
        return self._torch(x, h, w)

    def _scipy(self, x, h, w):
        dx = gaussian_filter(np.random.random((h, w)) * 2 - 1, self.sigma, mode="constant", cval=0) * self.alpha
        dy = gaussian_filter(np.random.random((h, w)) * 2 - 1, self.sigma, mode="constant", cval=0) * self.alpha
        # Coordinates of every element of the 4-D array, the last two axes displaced.
        coords = np.indices(x.shape, dtype=np.float64)
        coords[-2] += dx
        coords[-1] += dy
        data = x.numpy()
        out = map_coordinates(data, coords.reshape(len(x.shape), -1), order=1)
        return torch.from_numpy(out.reshape(x.shape)).to(x.dtype)

    def _torch(self, x, h, w):
        kernel, radius = _gaussian_kernel(self.sigma)
        field = torch.from_numpy(np.random.random((2, 1, h, w)) * 2 - 1).to(torch.float32)
        field = F.conv2d(field, kernel.view(1, 1, -1, 1), padding=(radius, 0))
        field = F.conv2d(field, kernel.view(1, 1, 1, -1), padding=(0, radius)) * self.alpha
        rows = torch.arange(h, dtype=torch.float32).view(h, 1) + field[0, 0]
        cols = torch.arange(w, dtype=torch.float32).view(1, w) + field[1, 0]
        grid = torch.stack([cols * 2 / (w - 1) - 1, rows * 2 / (h - 1) - 1], dim=-1)
        flat = x.reshape(1, -1, h, w)
        out = F.grid_sample(flat, grid.unsqueeze(0), mode="bilinear", padding_mode="zeros", align_corners=True)
        return out.reshape(x.shape)


class AddGaussianNoise:
    """With probability `p`: one `randn(H, W) * std` field added to every z and c, the result
    clamped to the input's own minimum and maximum."""

    def __init__(self, p=0.5, std=0.05):
        self.p, self.std = p, std

    def __call__(self, x):
        if np.random.random(1) > self.p:
            return x
        noise = torch.randn(x.shape[-2:]) * self.std
        return torch.clamp(x + noise, x.min(), x.max())


class ImagePipeline:
    """InnerEye's ImageTransformationPipeline: PIL -> `[1, 1, H, W]` -> transforms -> `[C, H, W]`."""

    def __init__(self, transforms):
        self.compose = T.Compose(transforms)

    def __call__(self, image):
        x = TF.to_tensor(image).unsqueeze(0)
        x = self.compose(x)
        return x.transpose(0, 1).squeeze(1)


def cxr_ssl_encoder_transform():
    """The SSL encoder's pipeline of `cxr_ssl_encoder_augmentations.yaml` (one view per call)."""
    return ImagePipeline([
        ExpandChannels(),
        T.RandomAffine(degrees=180, translate=(0.0, 0.0), shear=40, interpolation=InterpolationMode.NEAREST),
        T.RandomResizedCrop(256, scale=(0.4, 1.0), antialias=False),
        T.RandomHorizontalFlip(0.5),
        RandomGamma((0.5, 1.5)),
        T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.0),
        ElasticTransform(alpha=34.0, sigma=4.0, p=0.4),
        T.CenterCrop(224),
        T.RandomErasing(p=0.5, scale=(0.15, 0.4), ratio=(0.33, 3.0), value=0),
        AddGaussianNoise(p=0.5, std=0.05),
    ])


def cxr_linear_head_transform():
    """The linear head's training pipeline of `cxr_linear_head_augmentations.yaml`."""
    return ImagePipeline([
        ExpandChannels(),
        T.RandomAffine(degrees=30, translate=(0.0, 0.0), shear=15, interpolation=InterpolationMode.NEAREST),
        T.RandomResizedCrop(256, scale=(0.8, 1.0), antialias=False),
        T.RandomHorizontalFlip(0.5),
        RandomGamma((0.5, 1.5)),
        T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.0),
        T.CenterCrop(224),
    ])


# -------------------------------------------------------------------- CIFAR transforms (§4c)


class BoltsGaussianBlur:
    """pl_bolts' GaussianBlur: to numpy always; with probability `p`, a `k x k` Gaussian blur of
    sigma ~ U[min, max] (cv2.GaussianBlur)."""

    def __init__(self, kernel_size=3, p=0.5, min=0.1, max=2.0):
        self.kernel_size, self.p, self.min, self.max = kernel_size, p, min, max

    def __call__(self, image):
        sample = np.array(image)
        if np.random.random_sample() < self.p:
            sigma = (self.max - self.min) * np.random.random_sample() + self.min
            k = self.kernel_size
            if USE_CV2:
                sample = cv2.GaussianBlur(sample, (k, k), sigma)
            else:
                sample = np.array(TF.gaussian_blur(image, [k, k], [sigma, sigma]))
        return sample


def cifar_ssl_transform(size=32):
    """bolts' SimCLRTrainDataTransform(32) train transform, no normalisation (one view per call)."""
    kernel = int(0.1 * size)
    kernel += 1 - kernel % 2
    return T.Compose([
        T.RandomResizedCrop(size),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
        T.RandomGrayscale(p=0.2),
        BoltsGaussianBlur(kernel_size=kernel, p=0.5, min=0.1, max=2.0),
        T.ToTensor(),
    ])


def cifar_linear_head_transform(size=32):
    """InnerEyeCIFARLinearHeadTransform(32)."""
    return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor()])


# ----------------------------------------------------------------------------------- datasets


def nih_paths(root):
    """The images of an NIH folder (`Data_Entry_2017.csv` order, found flat, in images/ or in
    images_*/images/)."""
    with open(os.path.join(root, "Data_Entry_2017.csv")) as f:
        names = [line.split(",", 1)[0] for line in f.read().splitlines()[1:] if line]
    where = {}
    for folder in [root, os.path.join(root, "images")] + sorted(glob.glob(os.path.join(root, "images_*", "images"))):
        if os.path.isdir(folder):
            for name in os.listdir(folder):
                where.setdefault(name, os.path.join(folder, name))
    missing = [n for n in names if n not in where]
    if missing:
        raise FileNotFoundError(f"{root}: {len(missing)} images listed in Data_Entry_2017.csv not found, e.g. {missing[0]}")
    return [where[n] for n in names]


def rsna_rows(root):
    """(path, label) of each row of an RSNA folder's `dataset.csv` (`subject,label`)."""
    rows = []
    with open(os.path.join(root, "dataset.csv")) as f:
        for line in f.read().splitlines()[1:]:
            if line:
                subject, label = line.split(",")[:2]
                rows.append((os.path.join(root, subject + ".dcm"), int(label)))
    return rows


def load_png(path):
    """An NIH image: PIL, 8-bit grey."""
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("L")


def load_dicom(path):
    """An RSNA image: pydicom's pixel array (JPEG baseline decoded through Pillow), as PIL grey."""
    import pydicom
    from PIL import Image

    return Image.fromarray(pydicom.dcmread(path).pixel_array).convert("L")


def read_cifar10(root):
    """The training images (`[N, 32, 32, 3]` uint8) and labels of a CIFAR-10 binary folder."""
    folder = os.path.join(root, "cifar-10-batches-bin")
    files = sorted(glob.glob(os.path.join(folder, "data_batch_*.bin")))
    if not files:
        raise FileNotFoundError(f"{folder}: no data_batch_*.bin")
    records = np.concatenate([np.fromfile(f, dtype=np.uint8).reshape(-1, 3073) for f in files])
    return records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), records[:, 0].astype(np.int64)


class ViewsDataset(torch.utils.data.Dataset):
    """`length` samples over `items` (cycled): `load(item)` -> PIL image, then `views` calls of
    `transform` on it; yields the views and the label."""

    def __init__(self, items, load, transform, views, length=None, labels=None):
        self.items, self.load, self.transform, self.views = items, load, transform, views
        self.length = length if length is not None else len(items)
        self.labels = labels

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        i %= len(self.items)
        image = self.load(self.items[i])
        label = 0 if self.labels is None else int(self.labels[i])
        return tuple(self.transform(image) for _ in range(self.views)) + (label,)


def cifar_image(array):
    from PIL import Image

    return Image.fromarray(array)


def dataset(kind, root, views=2, length=None, linear_head=False):
    """The benchmark dataset `kind` (nih, rsna or cifar) at `root`, with the original's SSL
    encoder transform (or the linear head's)."""
    if kind == "nih":
        tf = cxr_linear_head_transform() if linear_head else cxr_ssl_encoder_transform()
        return ViewsDataset(nih_paths(root), load_png, tf, views, length)
    if kind == "rsna":
        rows = rsna_rows(root)
        tf = cxr_linear_head_transform() if linear_head else cxr_ssl_encoder_transform()
        return ViewsDataset([p for p, _ in rows], load_dicom, tf, views, length, [l for _, l in rows])
    if kind == "cifar":
        images, labels = read_cifar10(root)
        tf = cifar_linear_head_transform() if linear_head else cifar_ssl_transform()
        return ViewsDataset(list(images), cifar_image, tf, views, length, labels)
    raise ValueError(f"unknown dataset kind `{kind}`; expected nih, rsna or cifar")
