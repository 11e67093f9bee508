"""Images in, tensors out: folders, odd formats, padding to the codec's multiple, training crops."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from compressor.errors import DataError
from compressor.imageio import padding, read_rgb8
from compressor.metrics.ssim import SSIM_MIN_SIDE

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".webp")
#: files that may sit beside images without being one (attribution, checksums)
IGNORED_NAMES = {"README.md", "README.txt", "SHA256SUMS", "LICENSE", ".DS_Store"}
#: smallest image side accepted anywhere: SSIM's 11x11 window must fit at least once (the
#: codec pads to its own multiple, so the model needs nothing more; MS-SSIM's 161 px is
#: optional: smaller images report it as n/a)
MIN_SIDE = SSIM_MIN_SIDE


def list_images(folder: Path, minimum: int = 1) -> list[Path]:
    """The images of a folder, sorted; a stray non-image file is an error, not skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist or is not a folder")
    images: list[Path] = []
    strays: list[Path] = []
    for p in sorted(folder.iterdir()):
        if p.is_dir() or p.name in IGNORED_NAMES or p.name.startswith("."):
            continue
        (images if p.suffix.lower() in IMAGE_SUFFIXES else strays).append(p)
    if strays:
        raise DataError(
            f"{strays[0]} is not an image file ({len(strays)} such in {folder}); allowed "
            f"suffixes: {', '.join(IMAGE_SUFFIXES)}"
        )
    if len(images) < minimum:
        raise DataError(
            f"image folder {folder} has {len(images)} images; at least {minimum} needed "
            f"({', '.join(IMAGE_SUFFIXES)})"
        )
    return images


def to_tensor(rgb8: np.ndarray) -> torch.Tensor:
    """1x3xHxW float in [0, 1] from HxWx3 uint8 (what CompressAI's ToTensor gives)."""
    return torch.from_numpy(np.array(rgb8, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255.0


def to_rgb8_array(x: torch.Tensor) -> np.ndarray:
    """HxWx3 uint8 from 1x3xHxW float in [0, 1]: clamp, scale, round (CompressAI's eval rule)."""
    return (x[0].clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()


@dataclass(frozen=True)
class Padding:
    """Centred zero padding to a multiple, as compressai.ops.compute_padding does it."""

    left: int
    right: int
    top: int
    bottom: int

    @classmethod
    def to_multiple(cls, h: int, w: int, multiple: int) -> Padding:
        top, bottom, left, right = padding(h, w, multiple)
        return cls(left, right, top, bottom)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (self.left, self.right, self.top, self.bottom), mode="constant", value=0)

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return x[..., self.top : h - self.bottom, self.left : w - self.right]


class CropDataset(torch.utils.data.Dataset):
    """Random crops with flips (torchvision.transforms.v2) of images held in memory as uint8."""

    def __init__(self, images: list[np.ndarray], crop: int, train: bool) -> None:
        small = [a.shape[:2] for a in images if min(a.shape[:2]) < crop]
        if small:
            raise DataError(f"training crop {crop} is larger than an image of size {small[0]}")
        self.images = [torch.from_numpy(np.array(a)).permute(2, 0, 1).contiguous() for a in images]
        ops: list[v2.Transform] = [v2.RandomCrop(crop) if train else v2.CenterCrop(crop)]
        if train:
            ops += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
        ops.append(v2.ToDtype(torch.float32, scale=True))
        self.transform = v2.Compose(ops)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(self.images[index])


def read_checked(path: Path) -> np.ndarray:
    """The HxWx3 uint8 image at `path`; a DataError when it is smaller than MIN_SIDE."""
    rgb = read_rgb8(path)
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise DataError(
            f"image {path} is {w}x{h} pixels; images must be at least {MIN_SIDE}x{MIN_SIDE} "
            "(the SSIM window)"
        )
    return rgb


def load_folder(folder: Path, minimum: int = 1) -> list[np.ndarray]:
    return [read_checked(p) for p in image_paths(folder, minimum)]


def training_images(folder: Path, exclude: list[str] | None = None) -> list[np.ndarray]:
    """The images a train loop may use: the folder's, less the named ones (held out)."""
    held = set(exclude or ())
    paths = [p for p in image_paths(folder) if p.name not in held]
    if len(paths) < 2:
        raise DataError(
            f"training needs at least 2 images; {folder} has {len(paths)} once "
            f"{len(held)} held-out images are left out"
        )
    return [read_checked(p) for p in paths]


#: scikit-image's bundled colour photos (no download): the embedded default's evaluation set,
#: and a disjoint set for calibration, so nothing is calibrated on the images it is judged on
SKIMAGE_SETS = {
    "skimage": ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "ihc.png"),
    "skimage-calibration": (
        "motorcycle_left.png",
        "motorcycle_right.png",
        "hubble_deep_field.jpg",
        "retina.jpg",
    ),
}


def image_paths(source: str | Path, minimum: int = 1) -> list[Path]:
    """Paths of an image source: a folder, or 'skimage' / 'skimage-calibration' for
    scikit-image's sample photos."""
    if str(source) in SKIMAGE_SETS:
        import skimage

        folder = Path(skimage.__file__).parent / "data"
        return [folder / name for name in SKIMAGE_SETS[str(source)]]
    return list_images(Path(source), minimum)


def load_images(source: str | Path, minimum: int = 1) -> list[tuple[str, np.ndarray]]:
    """(name, HxWx3 uint8) of every image of a source, in a stable order."""
    return [(p.name, read_checked(p)) for p in image_paths(source, minimum)]
