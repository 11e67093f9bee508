"""Shared fixtures: tiny models (N=8, M=12), small images, the data folders beside the repo."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compressor import checkpoint
from compressor.models import MODELS, CodecAdapter

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
KODAK = SHARED / "kodak"
WIKI = SHARED / "wikipedia-photos"
BUNDLED = REPO / "compressor" / "assets" / "bmshj2018-hyperprior-q2.pt"

torch.set_num_threads(int(os.environ.get("COMPRESSOR_TEST_THREADS", "1")))


def need(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (it lives beside the repo; CI has it)")
    return path


def tiny_model(arch: str = "bmshj2018-hyperprior", seed: int = 0) -> CodecAdapter:
    torch.manual_seed(seed)
    family = MODELS.get(arch)
    config = {"N": 8} if arch.startswith("cheng2020") else {"N": 8, "M": 12}
    if "N" not in family.default_config(arch, 1):  # no widths to shrink (jpeg's two tables)
        config = family.default_config(arch, 1)
    model = family.build(arch, config)
    model.finalize()
    return model.eval()


def smooth_image(h: int, w: int, seed: int) -> np.ndarray:
    """A photo-like test image: gradients, a few discs, mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([xx, yy, 1 - (xx + yy) / 2], axis=-1) * 200 + 20
    for _ in range(4):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(8, max(9, h // 4))
        mask = (np.mgrid[0:h, 0:w][0] - cy) ** 2 + (np.mgrid[0:h, 0:w][1] - cx) ** 2 < r**2
        img[mask] = rng.integers(0, 255, 3)
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_images(folder: Path, sizes: list[tuple[int, int]], seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(smooth_image(h, w, seed + i)).save(folder / f"img{i}.png")
    return folder


@pytest.fixture
def images_dir(tmp_path: Path) -> Path:
    return write_images(tmp_path / "images", [(96, 128), (128, 96), (112, 144), (96, 96)])


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    checkpoint.save(tiny_model(), path)
    return path


def _default_sigint() -> None:
    # A suite started in the background (`make test &`) inherits SIGINT ignored, and Python
    # then never raises KeyboardInterrupt: the child gets what a user's Ctrl-C meets.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli_process(*args: str) -> subprocess.Popen[str]:
    """`cli.py ARGS` in its own process (for tests that kill or interrupt it)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(REPO / "cli.py"), *args],
        cwd=REPO,
        env=env,
        preexec_fn=_default_sigint,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
