"""`cli.py distill`: a student checkpoint and a summary on success; exit 2 on bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from compressor import checkpoint
from compressor.cli import main

BUDGET = ["--max-steps", "4", "--eval-every", "2", "--crop", "64", "--val-crop", "64"]
BUDGET += ["--batch-size", "2", "--threads", "1"]


def test_distill_writes_a_half_width_student(
    tiny_ckpt: Path, images_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "s.pt"
    args = ["distill", "--teacher", str(tiny_ckpt), "--data", str(images_dir), "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--width", "0.5", *BUDGET])
    assert result.exit_code == 0, result.stderr
    student = checkpoint.load(out)
    assert student.config == {"N": 4, "M": 6}
    assert student.meta["train"]["steps"] == 4
    assert "stopped by max_steps after 4 steps" in " ".join(result.output.split())
    assert "encoder" in result.output  # the MACs table


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--width", "1.5"], "allowed: 0 < width <= 1"),
        (["--config", "N=16,M=6"], "student N=16 is wider than the teacher's N=8"),
        (["--losses", "distortion=1,kl=2"], "unknown loss 'kl'; allowed: distortion, output"),
        (["--losses", "distortion"], "expected NAME=WEIGHT pairs"),
        (["--student", "mimic"], "cannot learn from a bmshj2018-hyperprior teacher"),
        (["--student", "nope"], "unknown model arch 'nope'"),
    ],
)
def test_bad_input_exits_2(
    extra: list[str], message: str, tiny_ckpt: Path, images_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "s.pt"
    args = ["distill", "--teacher", str(tiny_ckpt), "--data", str(images_dir), "--out", str(out)]
    result = CliRunner().invoke(main, [*args, *extra, *BUDGET])
    assert result.exit_code == 2, (result.output, result.stderr)
    assert message in " ".join(result.stderr.split())
    assert result.stderr.count("\n") == 1  # one line, no traceback
    assert not out.exists()


def test_recipe_step_refuses_bad_losses(tiny_ckpt: Path, images_dir: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: bad\nmodel: {tiny_ckpt}\ndata: {{eval: {images_dir}, train: {images_dir}}}\n"
        "steps:\n  - distill: {losses: {perceptual: 1.0}}\n"
    )
    result = CliRunner().invoke(main, ["run", str(recipe), "--output", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert (
        "steps[0].distill.losses" in result.stderr and "unknown loss 'perceptual'" in result.stderr
    )
    assert not (tmp_path / "run").exists()  # refused at plan time, before any weights load
