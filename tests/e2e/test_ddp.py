"""Data parallelism through the CLI and a recipe: too many processes for the cores is one-line
bad input (exit 2) before any work; `cli.py train --processes 2` starts torchrun itself."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from compressor import checkpoint
from compressor.cli import main
from compressor.errors import RecipeError
from compressor.recipe import parse_recipe
from compressor.steps import STEPS
from compressor.threads import available_cores


def invoke(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stderr.strip()


def test_more_processes_than_cores_is_one_line_exit_2(images_dir: Path, tmp_path: Path) -> None:
    n = available_cores() + 1
    args = ["train", "--arch", "bmshj2018-hyperprior", "--config", "N=8,M=12", "--data"]
    code, err = invoke(*args, images_dir, "--out", tmp_path / "o.pt", "--processes", n)
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert f"--processes {n} x 1 thread(s)" in err
    assert f"allowed processes x threads <= {available_cores()}" in err
    assert "--allow-oversubscribe" in err
    assert not list(tmp_path.glob("o*"))


def test_a_recipe_asking_for_more_processes_than_cores_fails_at_plan_time(
    images_dir: Path,
) -> None:
    n = available_cores() + 1
    spec = STEPS.get("finetune")
    params = spec.params.model_validate({"processes": n})
    recipe = parse_recipe(
        {
            "name": "ddp",
            "model": "bundled",
            "data": {"train": str(images_dir)},
            "steps": [{"finetune": {"processes": n}}],
        }
    )
    assert spec.check is not None
    with pytest.raises(RecipeError, match=r"step finetune: processes \d+ x 1 thread"):
        spec.check(params, recipe)
    allowed = spec.params.model_validate({"processes": n, "allow_oversubscribe": True})
    spec.check(allowed, recipe)  # no error


@pytest.mark.slow
def test_cli_train_with_processes_starts_torchrun(images_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    code, err = invoke(
        "train", "--arch", "bmshj2018-hyperprior", "--config", "N=8,M=12",
        "--data", images_dir, "--out", out, "--processes", 2, "--allow-oversubscribe",
        "--threads", 1, "--max-steps", 3, "--eval-every", 1, "--crop", 64, "--val-crop", 64,
        "--batch-size", 1, "--val-fraction", 0.25,
    )  # fmt: skip
    assert code == 0, err
    model = checkpoint.load(out)
    assert model.meta["train"]["processes"] == 2
    assert model.meta["train"]["steps"] == 3
    assert [h["step"] for h in model.meta["history"]] == [1, 2, 3]
