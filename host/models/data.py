"""Datasets for training and search: what ``--dataset`` names, loaded into train/val splits.

``digits`` (scikit-learn's bundled 8×8 handwritten digits, no download: the offline default),
``digits-hard`` (the same digits, each drawn several times with a random affine distortion on
clutter cut from scikit-learn's two sample photographs, plus noise: generated offline,
deterministic, and far from saturated: the digits CNN reaches about 80 % where it reaches 98 %
on ``digits``, so pruning choices show in accuracy),
``cifar10:PATH`` (the standard python-pickle folder, ``cifar-10-batches-py``) and
``imagefolder:PATH`` (one sub-folder per class, read with torchvision's ImageFolder; a
``train``/``val`` pair of such folders is used as given). Splits are deterministic: they
depend on the data only, never on ``--seed``, so runs with different seeds are scored on the
same validation images.

Small datasets are held in memory as tensors (``TensorData``); batches are cut from them
directly, which is much faster than a DataLoader for 8×8 digits.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SPLIT_SEED = 0  # the train/val split never depends on --seed
VAL_FRACTION = 0.2


class DataSpecError(ValueError):
    """A ``--dataset`` that cannot be loaded; the message names the spec and the fix."""


@dataclass
class TensorData:
    """Images (uint8 or float, [N, C, H, W]) and labels in memory; ``prepare`` turns a batch of
    raw images into the model's float input (scaling, normalising, resizing)."""

    x: torch.Tensor
    y: torch.Tensor
    prepare: Callable[[torch.Tensor], torch.Tensor]

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Dataset:
    name: str
    train: TensorData | torch.utils.data.Dataset
    val: TensorData | torch.utils.data.Dataset
    num_classes: int
    input_shape: tuple[int, int, int]  # C, H, W of one image as the model sees it
    classes: tuple[str, ...] = ()
    task: str = "classify"  # or "sr": x low-resolution images, y high-resolution (sr.py)

    def describe(self) -> str:
        c, h, w = self.input_shape
        if self.task == "sr":
            vh, vw = self.val.y.shape[-2:]
            return (f"{self.name}: {len(self.train)} training patches ({c}×{h}×{w} → ×2), "
                    f"{len(self.val)} validation images ({vw}×{vh})")
        return (f"{self.name}: {len(self.train)} train / {len(self.val)} val images, "
                f"{c}×{h}×{w}, {self.num_classes} classes")


def batches(data: TensorData | torch.utils.data.Dataset, batch_size: int,
            generator: torch.Generator | None = None, shuffle: bool = True
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One pass over ``data`` in batches (shuffled with ``generator`` when asked)."""
    if isinstance(data, TensorData):
        n = len(data)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            yield data.prepare(data.x[idx]), data.y[idx]
        return
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=shuffle,
                                         generator=generator, num_workers=0)
    yield from loader


def _stratified_split(y: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): per class, a fixed-seed permutation, the first share to val."""
    rng = np.random.default_rng(SPLIT_SEED)
    tr, va = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        k = max(1, round(len(idx) * val_fraction))
        va.append(idx[:k])
        tr.append(idx[k:])
    return np.sort(np.concatenate(tr)), np.sort(np.concatenate(va))


def _resizer(size: int | None, channels: int, mean: torch.Tensor, std: torch.Tensor,
             scale: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def prepare(x: torch.Tensor) -> torch.Tensor:
        x = x.float() / scale
        x = (x - mean) / std
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        if x.shape[1] != channels:
            x = x.expand(-1, channels, -1, -1) if x.shape[1] == 1 else x[:, :channels]
        return x.contiguous()
    return prepare


def load_digits(image_size: int | None = 16, channels: int = 1) -> Dataset:
    """scikit-learn's digits (1797 images, 8×8, values 0..16), upscaled to ``image_size``
    (bilinear; the default 16 gives the convolutions something to do)."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None]  # [N, 1, 8, 8], 0..16
    y = torch.tensor(d.target, dtype=torch.long)
    tr, va = _stratified_split(d.target, VAL_FRACTION)
    mean, std = x[tr].mean() / 16.0, x[tr].std() / 16.0
    prep = _resizer(image_size, channels, mean, std, 16.0)
    size = image_size or 8
    return Dataset("digits", TensorData(x[tr], y[tr], prep), TensorData(x[va], y[va], prep),
                   10, (channels, size, size), tuple(str(i) for i in range(10)))


HARD_COPIES = (3, 4)  # drawings per training / validation digit
HARD_SEEDS = (1, 2)  # the distortions' generators (train, val): fixed, like the split


def distort_digits(x: torch.Tensor, copies: int, seed: int, size: int = 16) -> torch.Tensor:
    """``copies`` distorted drawings of each image of ``x`` ([N, 1, h, w], values 0..1) at
    ``size``×``size``, copy-major ([copies·N, 1, size, size], floats): rotation up to ±30°,
    scale 0.75..1.25, shear up to 0.3, a shift up to an eighth of the image; a grey patch of
    one of scikit-learn's sample photographs blended under it (weight 0.3..0.8), contrast
    0.5..1.5, Gaussian noise σ 0.15, and three drawings in ten inverted."""
    import math

    from sklearn.datasets import load_sample_images

    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.repeat(copies, 1, 1, 1)
    m = x.shape[0]
    ang = (torch.rand(m, generator=g) * 2 - 1) * math.radians(30)
    scale = 0.75 + torch.rand(m, generator=g) * 0.5
    shear = (torch.rand(m, generator=g) * 2 - 1) * 0.3
    shift = (torch.rand(m, 2, generator=g) * 2 - 1) * 0.25
    c, s = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([c, shear - s, shift[:, 0]], 1),
                         torch.stack([s, c, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, [m, 1, size, size], align_corners=False)
    x = F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
    photos = [torch.tensor(i, dtype=torch.float32).mean(-1) / 255
              for i in load_sample_images().images]
    which = torch.randint(len(photos), (m,), generator=g)
    side = torch.randint(size, 4 * size, (m,), generator=g)
    corner = torch.rand(m, 2, generator=g)
    clutter = torch.empty(m, 1, size, size)
    for i in range(m):
        im, k = photos[int(which[i])], int(side[i])
        y0 = int(corner[i, 0] * (im.shape[0] - k))
        x0 = int(corner[i, 1] * (im.shape[1] - k))
        clutter[i] = F.interpolate(im[y0:y0 + k, x0:x0 + k][None, None], size=(size, size),
                                   mode="bilinear", align_corners=False)[0]
    weight = 0.3 + torch.rand(m, 1, 1, 1, generator=g) * 0.5
    contrast = 0.5 + torch.rand(m, 1, 1, 1, generator=g)
    x = (x * contrast + weight * clutter).clamp(0, 2)
    x = x + 0.15 * torch.randn(x.shape, generator=g)
    inverted = torch.rand(m, generator=g) < 0.3
    x[inverted] = 1.5 - x[inverted]
    return x


def load_digits_hard(image_size: int | None = 16, channels: int = 1) -> Dataset:
    """``digits-hard``: the digits' train/val split kept (no drawing of a validation digit is
    trained on), each digit drawn ``HARD_COPIES`` times by ``distort_digits``."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    tr, va = _stratified_split(d.target, VAL_FRACTION)
    size = image_size or 16
    (ct, cv), (st, sv) = HARD_COPIES, HARD_SEEDS
    xt, xv = distort_digits(x[tr], ct, st, size), distort_digits(x[va], cv, sv, size)
    prep = _resizer(None, channels, xt.mean(), xt.std(), 1.0)
    return Dataset("digits-hard", TensorData(xt, y[tr].repeat(ct), prep),
                   TensorData(xv, y[va].repeat(cv), prep), 10, (channels, size, size),
                   tuple(str(i) for i in range(10)))


CIFAR_MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
CIFAR_STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)


def load_cifar10(path: Path, image_size: int | None = None, channels: int = 3) -> Dataset:
    """The python-pickle CIFAR-10 folder: data_batch_1..5 (train) and test_batch (val)."""
    folder = Path(path)
    if not folder.is_dir():
        raise DataSpecError(f"dataset cifar10:{path}: no such folder; give the python-pickle "
                            f"folder (cifar-10-batches-py, with data_batch_1..5 and test_batch)")
    if (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)]
    missing = [n for n in (*names, "test_batch") if not (folder / n).is_file()]
    if missing:
        raise DataSpecError(f"dataset cifar10:{path}: {', '.join(missing)} missing in {folder}; "
                            f"expected the python-pickle batches (data_batch_1..5, test_batch)")

    def read(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            with open(folder / name, "rb") as f:
                d = pickle.load(f, encoding="bytes")
            x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            return torch.from_numpy(x.copy()), torch.tensor(d[b"labels"], dtype=torch.long)
        except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError) as e:
            raise DataSpecError(f"dataset cifar10:{path}: {name} is not a CIFAR-10 python "
                                f"batch ({e})") from e

    parts = [read(n) for n in names]
    xt, yt = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    xv, yv = read("test_batch")
    classes: tuple[str, ...] = ()
    meta = folder / "batches.meta"
    if meta.is_file():
        with open(meta, "rb") as f:
            classes = tuple(n.decode() for n in pickle.load(f, encoding="bytes")
                            [b"label_names"])
    prep = _resizer(image_size, channels, CIFAR_MEAN, CIFAR_STD, 255.0)
    size = image_size or 32
    return Dataset("cifar10", TensorData(xt, yt, prep), TensorData(xv, yv, prep), 10,
                   (channels, size, size), classes)


def load_imagefolder(path: Path, image_size: int | None = None, channels: int = 3) -> Dataset:
    """ImageFolder: PATH/<class>/<image>, or PATH/train/<class>/... and PATH/val/<class>/...;
    images resized to ``image_size`` (default 32) and centre-cropped."""
    from .compat import import_torchvision

    root = Path(path)
    if not root.is_dir():
        raise DataSpecError(f"dataset imagefolder:{path}: no such folder; give a folder with one "
                            f"sub-folder of images per class (or train/ and val/ such folders)")
    tv = import_torchvision()
    t = tv.transforms
    size = image_size or 32
    steps = [t.Resize(size), t.CenterCrop(size)]
    if channels == 1:
        steps.append(t.Grayscale(1))
    tf = t.Compose([*steps, t.ToTensor(), t.Normalize([0.5] * channels, [0.5] * channels)])

    def folder(p: Path):
        try:
            return tv.datasets.ImageFolder(str(p), transform=tf)
        except (FileNotFoundError, RuntimeError) as e:
            raise DataSpecError(f"dataset imagefolder:{path}: {e}") from e

    if (root / "train").is_dir() and (root / "val").is_dir():
        train, val = folder(root / "train"), folder(root / "val")
        if train.classes != val.classes:
            raise DataSpecError(f"dataset imagefolder:{path}: train/ and val/ have different "
                                f"class folders")
    else:
        full = folder(root)
        tr, va = _stratified_split(np.asarray(full.targets), VAL_FRACTION)
        train = torch.utils.data.Subset(full, tr.tolist())
        val = torch.utils.data.Subset(full, va.tolist())
        train.classes = full.classes  # type: ignore[attr-defined]
    classes = tuple(train.classes)  # type: ignore[attr-defined]
    if len(classes) < 2:
        raise DataSpecError(f"dataset imagefolder:{path}: {len(classes)} class folder(s); a "
                            f"classifier needs at least 2")
    return Dataset(f"imagefolder:{root.name}", train, val, len(classes), (channels, size, size),
                   classes)


def load_dataset(spec: str, image_size: int | None = None, channels: int | None = None
                 ) -> Dataset:
    """``digits`` | ``digits-hard`` | ``cifar10:PATH`` | ``imagefolder:PATH``. ``channels``
    adapts the images to a model's first convolution (grey digits repeated to 3 channels)."""
    kind, _, arg = spec.partition(":")
    if kind == "digits" and not arg:
        return load_digits(image_size if image_size is not None else 16, channels or 1)
    if kind == "digits-hard" and not arg:
        return load_digits_hard(image_size if image_size is not None else 16, channels or 1)
    if kind in ("cifar10", "imagefolder"):
        if not arg:
            raise DataSpecError(f"dataset {spec!r}: give the folder, e.g. {kind}:/data/{kind}")
        p = Path(arg).expanduser()
        if not p.exists():
            raise DataSpecError(f"dataset {spec}: {p} does not exist")
        loader = load_cifar10 if kind == "cifar10" else load_imagefolder
        return loader(p, image_size, channels or 3)
    raise DataSpecError(f"dataset {spec!r}: expected digits, digits-hard, cifar10:PATH or "
                        f"imagefolder:PATH")


def check_dataset_spec(spec: str) -> None:
    """Cheap validation (the path exists) before anything is loaded or started."""
    kind, _, arg = spec.partition(":")
    if kind in ("digits", "digits-hard") and not arg:
        return
    if kind not in ("cifar10", "imagefolder"):
        raise DataSpecError(f"dataset {spec!r}: expected digits, digits-hard, cifar10:PATH or "
                            f"imagefolder:PATH")
    if not arg:
        raise DataSpecError(f"dataset {spec!r}: give the folder, e.g. {kind}:/data/{kind}")
    p = Path(arg).expanduser()
    if not p.exists():
        raise DataSpecError(f"dataset {spec}: {p} does not exist")
