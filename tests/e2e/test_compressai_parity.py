"""`evaluate` agrees with CompressAI's own eval_model on the same checkpoint and images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from compressor import checkpoint
from compressor.codec import TorchCodec
from compressor.data import load_folder, load_images
from compressor.evaluate import evaluate
from compressor.train import TrainConfig, train
from tests.conftest import tiny_model, write_images


@pytest.mark.parametrize("arch", ["bmshj2018-hyperprior", "bmshj2018-factorized"])
def test_evaluate_matches_compressai_eval_model(arch: str, tmp_path: Path) -> None:
    train_dir = write_images(tmp_path / "train", [(128, 128)] * 4, seed=10)
    eval_dir = write_images(tmp_path / "eval", [(320, 384), (352, 416)], seed=20)
    ckpt = tmp_path / "m.pt"
    cfg = TrainConfig(
        max_steps=30,
        eval_every=30,
        lr=1e-3,
        crop=64,
        val_crop=64,
        batch_size=2,
        val_fraction=0.25,
        threads=1,
    )
    train(tiny_model(arch), load_folder(train_dir), cfg, ckpt)

    model = checkpoint.load(ckpt)
    model.net.update(force=True)  # CompressAI's own 64-level scale table, as eval_model uses
    ours = evaluate(TorchCodec(model), load_images(eval_dir)).summary()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "compressai.utils.eval_model",
            "checkpoint",
            str(eval_dir),
            "-a",
            arch,
            "-p",
            str(ckpt),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    theirs = json.loads(proc.stdout)["results"]
    assert abs(ours["psnr"] - theirs["psnr-rgb"][0]) < 0.01
    assert abs(ours["ms_ssim"] - theirs["ms-ssim-rgb"][0]) < 0.0005
    # our stream also carries the image size and string lengths (about 9 bytes per image)
    assert abs(ours["bpp"] - theirs["bpp"][0]) < 0.001
    assert ours["bpp"] > theirs["bpp"][0]
    # our default, finer scale table (compressai_zoo.SCALE_TABLE_LEVELS) changes only the
    # coder's rounding of the scales: the same reconstruction, a bpp within a couple of percent
    # (it saves bits on trained models; on this 30-step one rounding up happens to help)
    finer = evaluate(TorchCodec(checkpoint.load(ckpt)), load_images(eval_dir)).summary()
    assert finer["psnr"] == ours["psnr"]
    assert abs(finer["bpp"] / ours["bpp"] - 1) < 0.02
