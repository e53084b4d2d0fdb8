"""Single-image super-resolution (``--task sr``): a small ×2 model, its data and its metrics.

``sr_net``: the search's default SR model, EDSR-style (a 3×3 head, residual blocks of two 3×3
convs with a ReLU between, a 3×3 tail to 3·r² channels, PixelShuffle), added to the bilinear
upscaled input, so the network learns the detail bilinear misses. Everything in it is an op the
code generator compiles (conv, ReLU, residual add, PixelShuffle, bilinear interpolate).

Data (``load_sr_dataset``): ``photos`` is scikit-learn's two bundled photographs
(``load_sample_images``: china.jpg and flower.jpg, 427×640, no download), the top three
quarters of each cut into overlapping training patches (and their mirror images), the bottom
quarter kept whole for validation; ``imagefolder:PATH`` is a folder of high-resolution images
(``train/`` and ``val/``, or every fifth image sorted by name to validation). Low-resolution
inputs are the high-resolution images downscaled by bicubic interpolation (antialiased, as
MATLAB's imresize), in [0, 1] RGB.

Metrics (the SR literature's): PSNR and SSIM on the Y channel (ITU-R BT.601, 16..235) of the
output clamped to [0, 1], ``scale`` pixels shaved off each border; the bicubic baseline is the
low-resolution input upscaled by bicubic interpolation, scored the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import Dataset, DataSpecError, TensorData

SCALE = 2
PATCH = 64  # high-resolution training patch side (--image-size)
STRIDE_FRACTION = 0.25  # training patches overlap by three quarters
VAL_EVERY = 5  # imagefolder without train/ and val/: every fifth image validates
VAL_SIDE = 256  # imagefolder: validation images centre-cropped to at most this side
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ResBlock(nn.Module):
    def __init__(self, c: int, k: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, k, padding=k // 2)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, k, padding=k // 2)

    def forward(self, x):
        return x + self.conv2(self.act(self.conv1(x)))


class SRNet(nn.Module):
    """head 3×3 → ``blocks`` residual blocks → tail 3×3 to 3·r² → PixelShuffle(r), plus the
    bilinear upscaled input."""

    def __init__(self, channels: int = 32, blocks: int = 2, scale: int = SCALE):
        super().__init__()
        self.scale = scale
        self.head = nn.Conv2d(3, channels, 3, padding=1)
        self.body = nn.Sequential(*[ResBlock(channels) for _ in range(blocks)])
        self.tail = nn.Conv2d(channels, 3 * scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)
        nn.init.zeros_(self.tail.weight)  # starts as bilinear upscaling
        nn.init.zeros_(self.tail.bias)

    def forward(self, x):
        up = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return self.shuffle(self.tail(self.body(self.head(x)))) + up


def sr_net() -> nn.Module:
    """The default SR model of ``npas-host search --task sr``: 32 channels, 2 blocks."""
    return SRNet()


def sr_tiny() -> nn.Module:
    """8 channels, 1 block: for tests."""
    return SRNet(channels=8, blocks=1)


# --- metrics -----------------------------------------------------------------------------------
def y_channel(rgb: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] RGB in [0, 1] → [N, 1, H, W] Y in 16..235 (BT.601, as MATLAB's rgb2ycbcr)."""
    r, g, b = rgb[:, 0:1], rgb[:, 1:2], rgb[:, 2:3]
    return 16.0 + 65.481 * r + 128.553 * g + 24.966 * b


def _shave(x: torch.Tensor, s: int) -> torch.Tensor:
    return x[..., s:-s, s:-s] if s > 0 else x


def psnr_y(out: torch.Tensor, hr: torch.Tensor, shave: int = SCALE) -> torch.Tensor:
    """PSNR (dB) of each image's Y channel, [N]."""
    a = _shave(y_channel(out.clamp(0, 1)), shave).double()
    b = _shave(y_channel(hr.clamp(0, 1)), shave).double()
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(255.0 ** 2 / mse)


def _gauss(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim_y(out: torch.Tensor, hr: torch.Tensor, shave: int = SCALE) -> torch.Tensor:
    """SSIM of each image's Y channel, [N] (Wang et al. 2004: 11×11 Gaussian window, σ 1.5,
    K1 0.01, K2 0.03, range 255; the mean over valid window positions)."""
    a = _shave(y_channel(out.clamp(0, 1)), shave).double()
    b = _shave(y_channel(hr.clamp(0, 1)), shave).double()
    w = _gauss().to(a.device)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = F.conv2d(a, w), F.conv2d(b, w)
    saa = F.conv2d(a * a, w) - mu_a ** 2
    sbb = F.conv2d(b * b, w) - mu_b ** 2
    sab = F.conv2d(a * b, w) - mu_a * mu_b
    m = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)
         / ((mu_a ** 2 + mu_b ** 2 + c1) * (saa + sbb + c2)))
    return m.flatten(1).mean(1)


def downscale(hr: torch.Tensor, scale: int = SCALE) -> torch.Tensor:
    """The degradation: bicubic, antialiased (as MATLAB's imresize), clamped to [0, 1]."""
    return F.interpolate(hr, scale_factor=1 / scale, mode="bicubic", antialias=True,
                         align_corners=False).clamp(0, 1)


def bicubic_up(lr: torch.Tensor, scale: int = SCALE) -> torch.Tensor:
    """The baseline every SR model has to beat."""
    return F.interpolate(lr, scale_factor=scale, mode="bicubic",
                         align_corners=False).clamp(0, 1)


@dataclass
class SRScores:
    psnr: float  # dB, mean over the validation images
    ssim: float

    def to_dict(self) -> dict:
        return {"psnr": self.psnr, "ssim": self.ssim}


@torch.no_grad()
def sr_scores(model: nn.Module | None, data: Dataset, device: str = "cpu",
              batch_size: int = 8, gate=None) -> SRScores:
    """PSNR and SSIM (Y channel) of ``model`` on ``data.val``; ``model=None`` scores the
    bicubic baseline."""
    import contextlib

    gate = gate if gate is not None else contextlib.nullcontext()
    dev = torch.device(device)
    if model is not None:
        model.to(dev).eval()
    ps, ss = [], []
    val = data.val
    for i in range(0, len(val), batch_size):
        lr, hr = val.x[i:i + batch_size], val.y[i:i + batch_size]
        with gate:
            out = bicubic_up(lr) if model is None else model(val.prepare(lr).to(dev)).cpu()
        ps.append(psnr_y(out, hr))
        ss.append(ssim_y(out, hr))
    return SRScores(float(torch.cat(ps).mean()), float(torch.cat(ss).mean()))


def sr_loss(out: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """Training loss: L1 (EDSR's)."""
    return F.l1_loss(out, hr)


# --- data --------------------------------------------------------------------------------------
def _to_tensor(img: np.ndarray) -> torch.Tensor:
    """HWC uint8 (grey or with alpha too) → [3, H, W] float in [0, 1]."""
    a = np.asarray(img)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    a = a[:, :, :3]
    return torch.from_numpy(np.array(a, dtype=np.uint8)).permute(2, 0, 1).float() / 255.0


def _patches(hr: torch.Tensor, patch: int) -> torch.Tensor:
    """Overlapping ``patch``×``patch`` crops of one [3, H, W] image and their mirror images."""
    step = max(SCALE, int(patch * STRIDE_FRACTION) // SCALE * SCALE)
    _, h, w = hr.shape
    out = [hr[:, y:y + patch, x:x + patch]
           for y in range(0, h - patch + 1, step) for x in range(0, w - patch + 1, step)]
    t = torch.stack(out)
    return torch.cat([t, t.flip(-1)])


def _even(hr: torch.Tensor, m: int) -> torch.Tensor:
    """Crop H and W down to multiples of ``m``."""
    _, h, w = hr.shape
    return hr[:, :h - h % m, :w - w % m]


def _pairs(hr: torch.Tensor) -> TensorData:
    return TensorData(downscale(hr), hr, lambda x: x)


def _dataset(name: str, train_hr: torch.Tensor, val_hr: torch.Tensor, patch: int) -> Dataset:
    lr_side = patch // SCALE
    return Dataset(name, _pairs(train_hr), _pairs(val_hr), 0, (3, lr_side, lr_side),
                   task="sr")


def _check_patch(patch: int) -> None:
    if patch < 8 * SCALE or patch % (2 * SCALE):
        raise DataSpecError(f"--image-size {patch}: the SR training patch side (high "
                            f"resolution) must be a multiple of {2 * SCALE} and at least "
                            f"{8 * SCALE}, e.g. {PATCH}")


def load_photos(patch: int = PATCH) -> Dataset:
    """scikit-learn's two photographs: the top 3/4 of each → training patches, the bottom 1/4
    (whole) → validation."""
    from sklearn.datasets import load_sample_images

    _check_patch(patch)
    imgs = [_to_tensor(i) for i in load_sample_images().images]
    cut = [(img.shape[1] * 3 // 4) // (2 * SCALE) * (2 * SCALE) for img in imgs]
    train = torch.cat([_patches(img[:, :c], patch) for img, c in zip(imgs, cut, strict=True)])
    val = torch.stack([_even(img[:, c:], 2 * SCALE) for img, c in zip(imgs, cut, strict=True)])
    return _dataset("photos", train, val, patch)


def _images(folder: Path, spec: str) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataSpecError(f"dataset {spec}: no images ({', '.join(IMAGE_SUFFIXES)}) under "
                            f"{folder}; give a folder of high-resolution images (e.g. DIV2K's "
                            f"DIV2K_train_HR)")
    return files


def _read(p: Path, spec: str, need: int) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as im:
            img = _to_tensor(np.asarray(im.convert("RGB")))
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataSpecError(f"dataset {spec}: cannot read {p} as an image ({e})") from e
    if min(img.shape[1:]) < need:
        raise DataSpecError(f"dataset {spec}: {p} is {img.shape[2]}×{img.shape[1]}, smaller "
                            f"than the {need}×{need} patches (lower --image-size, or leave "
                            f"the image out)")
    return img


def _centre(img: torch.Tensor, side: int) -> torch.Tensor:
    _, h, w = img.shape
    y, x = (h - side) // 2, (w - side) // 2
    return img[:, y:y + side, x:x + side]


def load_sr_folder(path: Path, patch: int = PATCH, spec: str = "") -> Dataset:
    """A folder of high-resolution images: ``train/`` and ``val/``, or every VAL_EVERY-th
    image (sorted by name) to validation. Training images are cut into patches; validation
    images centre-cropped to one square side (the smallest image's, at most VAL_SIDE)."""
    spec = spec or f"imagefolder:{path}"
    _check_patch(patch)
    root = Path(path)
    if not root.is_dir():
        raise DataSpecError(f"dataset {spec}: no such folder; give a folder of high-resolution "
                            f"images")
    if (root / "train").is_dir() and (root / "val").is_dir():
        tr_files, va_files = _images(root / "train", spec), _images(root / "val", spec)
    else:
        files = _images(root, spec)
        if len(files) < 2:
            raise DataSpecError(f"dataset {spec}: 1 image; an SR dataset needs at least 2 (one "
                                f"to train on, one to validate), or train/ and val/ folders")
        va_files = files[VAL_EVERY - 1::VAL_EVERY] or files[-1:]
        tr_files = [f for f in files if f not in va_files]
    train = torch.cat([_patches(_read(p, spec, patch), patch) for p in tr_files])
    vals = [_read(p, spec, patch) for p in va_files]
    side = min(VAL_SIDE, *(min(v.shape[1:]) for v in vals)) // (2 * SCALE) * (2 * SCALE)
    val = torch.stack([_centre(v, side) for v in vals])
    return _dataset(f"imagefolder:{root.name}", train, val, patch)


SR_DATASETS = "photos (scikit-learn's two photographs, offline) or imagefolder:PATH"


def check_sr_spec(spec: str) -> None:
    kind, _, arg = spec.partition(":")
    if kind == "photos" and not arg:
        return
    if kind != "imagefolder":
        raise DataSpecError(f"dataset {spec!r} for --task sr: expected {SR_DATASETS}")
    if not arg:
        raise DataSpecError(f"dataset {spec!r}: give the folder, e.g. imagefolder:/data/DIV2K")
    if not Path(arg).expanduser().exists():
        raise DataSpecError(f"dataset {spec}: {Path(arg).expanduser()} does not exist")


def load_sr_dataset(spec: str, patch: int | None = None) -> Dataset:
    """``photos`` | ``imagefolder:PATH``, LR/HR pairs (``patch``: the HR training side)."""
    check_sr_spec(spec)
    kind, _, arg = spec.partition(":")
    patch = PATCH if patch is None else patch
    if kind == "photos":
        return load_photos(patch)
    return load_sr_folder(Path(arg).expanduser(), patch, spec)


def frame_arg(text: str) -> tuple[int, int]:
    """'1280x720' → (1280, 720): the output frame latency is measured at (W×H, both even)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise DataSpecError(f"--frame {text!r}: WIDTHxHEIGHT of the output, e.g. "
                            f"1280x720") from None
    if w <= 0 or h <= 0 or w % SCALE or h % SCALE:
        raise DataSpecError(f"--frame {text}: width and height must be positive multiples of "
                            f"the scale {SCALE}")
    return w, h


def mean_psnr_gain(psnr: float, bicubic: float) -> str:
    return f"{psnr:.2f} dB ({psnr - bicubic:+.2f} dB over bicubic {bicubic:.2f} dB)"

