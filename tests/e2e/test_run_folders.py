"""Run folders never cost a user's files: only our folders are written, replaced only when
asked, a complete run survives a failing one, --resume continues a killed run, Ctrl-C is 130."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from compressor.cli import main
from tests.conftest import cli_process, write_images


def recipe(tmp_path: Path, model: Path, steps: list, name: str = "r", **extra: object) -> Path:
    images = tmp_path / "imgs"
    if not images.exists():
        write_images(images, [(64, 64), (64, 80)], seed=1)
    path = tmp_path / f"recipe-{len(list(tmp_path.glob('*.yaml')))}.yaml"
    body = {"name": name, "model": str(model), "data": {"eval": str(images)}, "threads": 1}
    path.write_text(yaml.safe_dump({**body, **extra, "steps": steps}))
    return path


def run(*args: str) -> object:
    return CliRunner().invoke(main, ["run", *args])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_output_dot_in_a_folder_with_files_is_refused(
    tiny_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    (home / "photos").mkdir()
    (home / "photos" / "a.jpg").write_bytes(b"\xff\xd8 jpeg")
    r = recipe(tmp_path, tiny_ckpt, [{"evaluate": {}}])
    before = snapshot(home)
    monkeypatch.chdir(home)
    result = run(str(r), "--output", ".")
    assert result.exit_code == 2, result.output
    assert "no compressor run made" in result.stderr and "\n" not in result.stderr.strip()
    assert snapshot(home) == before
    for flag in ("--overwrite", "--resume"):  # no flag makes a foreign folder ours
        assert run(str(r), "--output", ".", flag).exit_code == 2
        assert snapshot(home) == before


@pytest.mark.parametrize("name", ["..", ".", "../x", "a/b", ""])
def test_recipe_names_that_are_not_slugs_are_refused(
    name: str, tiny_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "exported").mkdir()
    (tmp_path / "exported" / "other-run").mkdir()
    (tmp_path / "keep.txt").write_text("x")
    r = recipe(tmp_path, tiny_ckpt, [{"evaluate": {}}], name=name)
    before = snapshot(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = run(str(r))
    assert result.exit_code == 2, result.output
    assert "name" in result.stderr
    assert snapshot(tmp_path) == before and (tmp_path / "exported" / "other-run").is_dir()


def test_output_that_is_a_file_is_refused(tiny_ckpt: Path, tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("keep")
    result = run(str(recipe(tmp_path, tiny_ckpt, [{"evaluate": {}}])), "--output", str(target))
    assert result.exit_code == 2 and "is a file" in result.stderr
    assert target.read_text() == "keep"


def test_a_complete_run_survives_a_later_failing_run(tiny_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    good = recipe(tmp_path, tiny_ckpt, [{"evaluate": {}}])
    assert run(str(good), "--output", str(out)).exit_code == 0
    mark = json.loads((out / "run.json").read_text())
    assert mark["status"] == "complete" and mark["steps"] == ["01_evaluate"]
    before = snapshot(out)
    # the same output again without a flag: refused, nothing touched
    again = run(str(good), "--output", str(out))
    assert again.exit_code == 2 and "--overwrite" in again.stderr
    # a replacing run whose first step fails (a corrupt checkpoint is found only when loaded)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 not a checkpoint")
    bad = recipe(tmp_path, corrupt, [{"evaluate": {}}])
    failed = run(str(bad), "--output", str(out), "--overwrite")
    assert failed.exit_code == 2, failed.output
    assert snapshot(out) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run")]  # no staging left
    # a replacing run that finishes takes the place of the old one
    replaced = run(str(good), "--output", str(out), "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert json.loads((out / "run.json").read_text())["started"] >= mark["started"]


def test_checks_that_plan_can_make_come_before_the_folder_is_touched(
    tiny_ckpt: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    cases = {
        "quantize before export": ([{"quantize": {}}, {"export": {}}], {}),
        "baseline names a later step": (
            [{"validate": {"baseline": "export"}}, {"export": {}}],
            {},
        ),
        "unavailable provider": ([{"evaluate": {}}], {"provider": "tensorrt"}),
        "threads beyond the cores": ([{"evaluate": {}}], {"threads": 10_000}),
        "negative threads": ([{"evaluate": {}}], {"threads": -1}),
        "trains on the evaluation images": (
            [{"finetune": {"max_steps": 1}}],
            {"data": {"eval": str(tmp_path / "imgs"), "train": str(tmp_path / "imgs")}},
        ),
    }
    for what, (steps, extra) in cases.items():
        r = recipe(tmp_path, tiny_ckpt, steps, **extra)
        if "calibration" not in yaml.safe_load(r.read_text())["data"]:
            data = yaml.safe_load(r.read_text())
            data["data"]["calibration"] = str(write_images(tmp_path / "cal", [(64, 64)], seed=5))
            r.write_text(yaml.safe_dump(data))
        result = run(str(r), "--output", str(out))
        assert result.exit_code == 2, (what, result.output)
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, what
        assert not out.exists(), what


def test_a_failed_run_says_so(tiny_ckpt: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    out = tmp_path / "run"
    result = run(str(recipe(tmp_path, corrupt, [{"evaluate": {}}])), "--output", str(out))
    assert result.exit_code == 2
    mark = json.loads((out / "run.json").read_text())
    assert mark["status"] == "failed" and "CheckpointError" in mark["error"]


def _wait_for(path_glob: Path, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not list(path_glob.parent.glob(path_glob.name)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the step never started"
        time.sleep(0.05)


KILLABLE = [
    {"evaluate": {}},
    {"evaluate": {"images": None}},
    # long enough to be killed in: the kill lands while its temporary folder exists
    {"finetune": {"max_steps": 200, "crop": 64, "val_crop": 64, "batch_size": 2}},
    {"evaluate": {}},
]


def killable_recipe(model: Path, tmp_path: Path) -> Path:
    """KILLABLE with its own training images (never the evaluation ones)."""
    r = recipe(tmp_path, model, KILLABLE)
    data = yaml.safe_load(r.read_text())
    data["data"]["train"] = str(write_images(tmp_path / "train", [(96, 96), (80, 96)], seed=7))
    r.write_text(yaml.safe_dump(data))
    return r


def test_resume_after_sigkill_in_step_3_reruns_only_step_3_on(
    tiny_ckpt: Path, tmp_path: Path
) -> None:
    r, out = killable_recipe(tiny_ckpt, tmp_path), tmp_path / "run"
    proc = cli_process("run", str(r), "--output", str(out))
    _wait_for(out / ".03_finetune.*.partial", proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    kept = {
        d: (out / d / "manifest.json").stat().st_mtime_ns for d in ("01_evaluate", "02_evaluate")
    }
    again = cli_process("run", str(r), "--output", str(out), "--resume")
    stdout, stderr = again.communicate(timeout=600)
    assert again.returncode == 0, stderr
    assert "kept 2 step(s)" in stdout
    for d, mtime in kept.items():
        assert (out / d / "manifest.json").stat().st_mtime_ns == mtime
    mark = json.loads((out / "run.json").read_text())
    assert mark["status"] == "complete"
    assert mark["steps"] == ["01_evaluate", "02_evaluate", "03_finetune", "04_evaluate"]
    assert not list(out.glob(".*.partial"))


def test_ctrl_c_exits_130_and_the_run_says_interrupted(tiny_ckpt: Path, tmp_path: Path) -> None:
    r, out = killable_recipe(tiny_ckpt, tmp_path), tmp_path / "run"
    proc = cli_process("run", str(r), "--output", str(out))
    _wait_for(out / ".03_finetune.*.partial", proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
