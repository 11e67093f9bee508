"""The train loop: loss falls, early stopping stops, resuming continues the same run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compressor import checkpoint
from compressor.data import load_folder
from compressor.train import TrainConfig, resume_path, train
from tests.conftest import tiny_model

SMALL = {"crop": 64, "val_crop": 64, "batch_size": 2, "val_fraction": 0.25, "threads": 1}


def test_training_lowers_the_rd_loss(images_dir: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(max_steps=60, eval_every=20, lr=1e-3, **SMALL)
    result = train(tiny_model(), load_folder(images_dir), cfg, tmp_path / "m.pt")
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 3
    assert losses[-1] < 0.8 * losses[0]
    saved = checkpoint.load(tmp_path / "m.pt")
    assert saved.meta["train"]["steps"] == 60


def test_early_stopping_stops(images_dir: Path, tmp_path: Path) -> None:
    # min_delta larger than any possible gain: every evaluation after the first is "no better"
    cfg = TrainConfig(max_steps=100, eval_every=5, patience=2, min_delta=1e9, **SMALL)
    result = train(tiny_model(), load_folder(images_dir), cfg, tmp_path / "m.pt")
    assert result.stopped == "early_stopping"
    assert result.steps == 15  # evals at 5 (best), 10, 15 (second without improvement)


def test_resumed_run_continues_the_same_steps(images_dir: Path, tmp_path: Path) -> None:
    images = load_folder(images_dir)
    full = TrainConfig(max_steps=8, eval_every=4, **SMALL)
    straight = tiny_model()
    train(straight, images, full, tmp_path / "a.pt")

    interrupted = tiny_model()
    first = train(interrupted, images, full.model_copy(update={"max_steps": 4}), tmp_path / "b.pt")
    assert first.steps == 4 and resume_path(tmp_path / "b.pt").exists()
    resumed = tiny_model()
    second = train(resumed, images, full, tmp_path / "b.pt")
    assert second.steps == 8
    assert [h["step"] for h in second.history] == [4, 8]
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_too_few_images_is_a_data_error(images_dir: Path, tmp_path: Path) -> None:
    from compressor.errors import DataError

    with pytest.raises(DataError, match="at least 2 images"):
        train(tiny_model(), load_folder(images_dir)[:1], TrainConfig(**SMALL), tmp_path / "m.pt")
