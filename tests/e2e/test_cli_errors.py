"""Bad input through the CLI: one line naming the problem and what is allowed, exit 2,
and no output that looks complete."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from compressor import checkpoint
from compressor.cli import main
from tests.conftest import tiny_model


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stderr.strip()


def assert_user_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    for fragment in fragments:
        assert fragment in err, err


def test_unknown_arch(images_dir: Path, tmp_path: Path) -> None:
    code, err = invoke(
        "train", "--arch", "resnet50", "--data", images_dir, "--out", tmp_path / "o.pt"
    )
    assert_user_error(
        code, err, "unknown model arch 'resnet50'", "allowed:", "bmshj2018-hyperprior"
    )
    assert not list(tmp_path.glob("o*"))


def test_checkpoint_of_another_arch(images_dir: Path, tmp_path: Path) -> None:
    checkpoint.save(tiny_model("bmshj2018-factorized"), tmp_path / "f.pt")
    code, err = invoke(
        "evaluate",
        tmp_path / "f.pt",
        "--arch",
        "mbt2018-mean",
        "--data",
        images_dir,
        "--out",
        tmp_path / "rep",
    )
    assert_user_error(code, err, "is a bmshj2018-factorized model, not mbt2018-mean")
    assert not (tmp_path / "rep").exists()


def test_truncated_checkpoint(images_dir: Path, tmp_ckpt_copy: Path, tmp_path: Path) -> None:
    data = tmp_ckpt_copy.read_bytes()
    tmp_ckpt_copy.write_bytes(data[: len(data) * 2 // 3])
    code, err = invoke("evaluate", tmp_ckpt_copy, "--data", images_dir, "--out", tmp_path / "r")
    assert_user_error(code, err, "truncated or corrupt")
    assert not (tmp_path / "r").exists()


class _Payload:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path("/tmp/compressor-cli-pwned").touch, ())


def test_pickle_that_would_run_code(images_dir: Path, tmp_path: Path) -> None:
    marker = Path("/tmp/compressor-cli-pwned")
    marker.unlink(missing_ok=True)
    torch.save({"state_dict": tiny_model().state_dict(), "x": _Payload()}, tmp_path / "e.pt")
    code, err = invoke("evaluate", tmp_path / "e.pt", "--data", images_dir, "--out", tmp_path / "r")
    assert_user_error(code, err, "refused", "could run code", "weights-only")
    assert not marker.exists() and not (tmp_path / "r").exists()


def test_empty_image_folder(tiny_ckpt: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, err = invoke("evaluate", tiny_ckpt, "--data", tmp_path / "empty", "--out", tmp_path / "r")
    assert_user_error(code, err, "has 0 images", ".png")
    assert not (tmp_path / "r").exists()


def test_non_image_file_among_images(tiny_ckpt: Path, images_dir: Path, tmp_path: Path) -> None:
    (images_dir / "labels.json").write_text("{}")
    code, err = invoke("evaluate", tiny_ckpt, "--data", images_dir, "--out", tmp_path / "r")
    assert_user_error(code, err, "labels.json is not an image file", "allowed suffixes")
    assert not (tmp_path / "r").exists()


def _recipe(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(body)
    return path


def test_unknown_recipe_key(tiny_ckpt: Path, images_dir: Path, tmp_path: Path) -> None:
    r = _recipe(
        tmp_path,
        f"name: t\nmodel: {tiny_ckpt}\ndata: {{eval: {images_dir}}}\n"
        "steps:\n  - evaluate: {imagez: x}\n",
    )
    code, err = invoke("run", r, "--output", tmp_path / "run")
    assert_user_error(code, err, str(r), "steps[0].evaluate.imagez", "Extra inputs")
    assert not (tmp_path / "run").exists()
    r = _recipe(tmp_path, f"name: t\nmodel: {tiny_ckpt}\nmodle: x\nsteps:\n  - evaluate: {{}}\n")
    code, err = invoke("run", r, "--output", tmp_path / "run")
    assert_user_error(code, err, "modle")


@pytest.mark.parametrize(
    "field,value", [("max_bpp_increase", "'lots'"), ("max_psnr_drop_db", "[0.1]")]
)
def test_ratio_of_the_wrong_type(
    tiny_ckpt: Path, images_dir: Path, tmp_path: Path, field: str, value: str
) -> None:
    r = _recipe(
        tmp_path,
        f"name: t\nmodel: {tiny_ckpt}\ndata: {{eval: {images_dir}}}\n"
        f"steps:\n  - validate:\n      gates: {{{field}: {value}}}\n",
    )
    code, err = invoke("run", r, "--output", tmp_path / "run")
    assert_user_error(code, err, f"steps[0].validate.gates.{field}", "valid number")
    assert not (tmp_path / "run").exists()


def test_unknown_step_and_malformed_yaml(tiny_ckpt: Path, tmp_path: Path) -> None:
    r = _recipe(tmp_path, f"name: t\nmodel: {tiny_ckpt}\nsteps:\n  - squash: {{}}\n")
    code, err = invoke("run", r)
    assert_user_error(code, err, "unknown step 'squash'", "allowed:", "finetune")
    r = _recipe(tmp_path, "name: t\nsteps: [\n")
    code, err = invoke("run", r)
    assert_user_error(code, err, "not valid YAML")


@pytest.fixture
def tmp_ckpt_copy(tiny_ckpt: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy.pt"
    copy.write_bytes(tiny_ckpt.read_bytes())
    return copy
