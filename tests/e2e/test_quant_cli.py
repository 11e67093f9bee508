"""`cli.py quantize --recipe`: overrides, exit 2 on bad input, exit 1 on a failed gate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from compressor.cli import main
from compressor.export import export_model
from tests.conftest import tiny_model, write_images


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_model(tiny_model(), tmp_path_factory.mktemp("q") / "fp32")


def recipe(tmp_path: Path, model: Path, quantize: dict[str, Any], **extra: Any) -> Path:
    evals = write_images(tmp_path / "eval", [(96, 96), (64, 80)], seed=1)
    cal = write_images(tmp_path / "cal", [(96, 128), (80, 96)], seed=5)
    data = {
        "name": "q",
        "model": str(model),
        "threads": 1,
        "data": {"eval": str(evals), "calibration": str(cal)},
        "steps": [
            {"quantize": {"calibration": {"images": 2, "crop": 64}, **quantize}},
            *extra.get("after", []),
        ],
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def invoke(*args: Any) -> Any:
    return CliRunner().invoke(main, ["quantize", *(str(a) for a in args)])


def assert_exit_2(result: Any, *fragments: str) -> None:
    err = result.stderr.strip()
    assert result.exit_code == 2, (result.output, err)
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    for fragment in fragments:
        assert fragment in err, err


def test_quantize_with_overrides(exported: Path, tmp_path: Path) -> None:
    path = recipe(tmp_path, tmp_path / "missing.pt", {"components": ["decoder"]})
    other = write_images(tmp_path / "cal2", [(64, 64)], seed=9)
    out = tmp_path / "run"
    result = invoke("--recipe", path, "--model", exported, "--data", other, "--output", out)
    assert result.exit_code == 0, result.stderr
    report = json.loads((out / "01_quantize" / "report.json").read_text())
    assert report["calibration_images"] == 1  # the --data folder holds one image
    assert [g["graph"] for g in report["graphs"]] == ["g_s"]
    assert report["graphs"][0]["float_convs"] == []
    assert "g_s" in result.output and "quick check" in result.output


def test_unknown_backend(exported: Path, tmp_path: Path) -> None:
    result = invoke("--recipe", recipe(tmp_path, exported, {"backend": "tflite"}))
    assert_exit_2(result, "unknown quantization backend 'tflite'", "allowed: ort-static")


def test_empty_calibration_folder(exported: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    path = recipe(tmp_path, exported, {})
    result = invoke("--recipe", path, "--data", tmp_path / "empty", "--output", tmp_path / "o")
    assert_exit_2(result, "has 0 images", "at least 1")
    assert not (tmp_path / "o").exists()


def test_node_that_does_not_exist(exported: Path, tmp_path: Path) -> None:
    path = recipe(tmp_path, exported, {"keep_float": ["decoder:/inner/inner.9/Conv"]})
    result = invoke("--recipe", path, "--output", tmp_path / "o")
    assert_exit_2(result, "no Conv node '/inner/inner.9/Conv'", "/inner/inner.6/conv/Conv")
    assert not (tmp_path / "o" / "01_quantize").exists()


def test_tolerance_of_the_wrong_sign(exported: Path, tmp_path: Path) -> None:
    path = recipe(tmp_path, exported, {"accuracy": {"max_psnr_drop_db": -0.3}})
    result = invoke("--recipe", path)
    assert_exit_2(result, "steps[0].quantize.accuracy.max_psnr_drop_db", "got -0.3")


def test_calibrating_on_the_eval_images_is_refused(exported: Path, tmp_path: Path) -> None:
    path = recipe(tmp_path, exported, {})
    result = invoke("--recipe", path, "--data", tmp_path / "eval")
    assert_exit_2(result, "data.calibration is the evaluation folder")


def test_recipe_without_quantize_step(exported: Path, tmp_path: Path) -> None:
    path = tmp_path / "v.yaml"
    path.write_text(
        yaml.safe_dump({"name": "v", "model": str(exported), "steps": [{"evaluate": {}}]})
    )
    assert_exit_2(invoke("--recipe", path), "has no quantize step", "cli.py run")


def test_impossible_gate_against_the_float_export_exits_1(tmp_path: Path) -> None:
    from compressor import checkpoint

    ckpt = tmp_path / "tiny.pt"
    checkpoint.save(tiny_model(), ckpt)
    gates = {"max_psnr_drop_db": 0.0, "min_decode_speedup": 1000.0}
    path = recipe(
        tmp_path,
        ckpt,
        {},
        after=[{"validate": {"baseline": "export", "repeats": 1, "gates": gates}}],
    )
    raw = yaml.safe_load(path.read_text())
    raw["steps"].insert(0, {"export": {}})
    path.write_text(yaml.safe_dump(raw))
    result = invoke("--recipe", path, "--output", tmp_path / "run")
    assert result.exit_code == 1, result.stderr
    report = json.loads((tmp_path / "run" / "03_validate" / "report.json").read_text())
    verdicts = {g["gate"]: g["passed"] for g in report["gates"]}
    assert verdicts == {"max_psnr_drop_db": False, "min_decode_speedup": False}
    assert report["deltas"]["psnr_drop_db"] != 0.0  # INT8 vs the FP32 export of the same model


def test_validate_baseline_must_be_a_step(exported: Path, tmp_path: Path) -> None:
    path = recipe(tmp_path, exported, {}, after=[{"validate": {"baseline": "distill"}}])
    assert_exit_2(invoke("--recipe", path), "validate baseline 'distill' is not an earlier step")


def test_qat_with_zero_budget(exported: Path, tmp_path: Path) -> None:
    path = recipe(tmp_path, exported, {"backend": "qat", "qat": {"max_minutes": 0}})
    result = invoke("--recipe", path, "--output", tmp_path / "o")
    assert_exit_2(result, "steps[0].quantize.qat.max_minutes", "greater than 0")
    assert not (tmp_path / "o").exists()


def test_qat_options_on_another_backend(exported: Path, tmp_path: Path) -> None:
    path = recipe(tmp_path, exported, {"backend": "ort-static", "qat": {"max_steps": 5}})
    assert_exit_2(invoke("--recipe", path), "qat: is an option of backend qat")


@pytest.mark.parametrize("backend", ["inc-static", "qat"])
def test_torch_backend_needs_a_checkpoint(exported: Path, tmp_path: Path, backend: str) -> None:
    path = recipe(tmp_path, exported, {"backend": backend})
    result = invoke("--recipe", path, "--output", tmp_path / "o")
    assert_exit_2(result, f"backend {backend} works on the torch model", "is an export")
    assert not (tmp_path / "o").exists()


def test_qat_end_to_end(tmp_path: Path) -> None:
    from compressor import checkpoint

    ckpt = tmp_path / "tiny.pt"
    checkpoint.save(tiny_model(), ckpt)
    qat = {"max_steps": 3, "max_minutes": None, "crop": 64, "val_crop": 64, "batch_size": 2}
    path = recipe(tmp_path, ckpt, {"backend": "qat", "qat": {**qat, "eval_every": 1}})
    raw = yaml.safe_load(path.read_text())
    raw["steps"].insert(0, {"export": {}})
    path.write_text(yaml.safe_dump(raw))
    result = invoke("--recipe", path, "--output", tmp_path / "run")
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "run" / "02_quantize" / "report.json").read_text())
    assert report["backend"] == "qat" and report["qat"]["steps"] == 3
    assert report["qat"]["train_images"] == 2  # no data.train: the calibration folder
    assert {g["graph"]: g["float_convs"] for g in report["graphs"]} == {"g_a": [], "g_s": []}
    assert "QAT: 3 steps" in result.output and "held-out RD loss" in result.output
