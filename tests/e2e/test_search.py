"""cli.py search: a resumable Optuna search over a recipe's choices, checked before weights
load, with a best-effort report (exit 1) when nothing meets the constraints."""

from __future__ import annotations

import csv
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from compressor.cli import main
from tests.conftest import REPO, cli_process, write_images

PRUNE = {"ratio": {"encoder": 0.25}, "round_to": 1, "report_size": [64, 64]}


def search_recipe(
    tmp_path: Path, model: Path, search: dict[str, Any], steps: list | None = None
) -> Path:
    """A recipe over the tiny model: prune, validate; eval and calibration images disjoint."""
    ev = tmp_path / "eval"
    if not ev.exists():
        write_images(ev, [(64, 64), (64, 80)], seed=1)
        write_images(tmp_path / "cal", [(64, 64), (80, 64)], seed=11)
    body = {
        "name": "s",
        "model": str(model),
        "data": {"eval": str(ev), "calibration": str(tmp_path / "cal")},
        "threads": 1,
        "steps": steps
        or [{"prune": {**PRUNE, "latency_repeats": 0}}, {"validate": {"repeats": 1}}],
        "search": search,
    }
    path = tmp_path / f"search-{len(list(tmp_path.glob('search-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


SPACE = {"steps.prune.ratio.encoder": [0.25, 0.5, 0.75], "steps.prune.importance": ["l1", "l2"]}


def search(*args: str) -> Any:
    return CliRunner().invoke(main, ["search", *args])


def test_search_writes_its_report_and_a_runnable_best_recipe(
    tiny_ckpt: Path, tmp_path: Path
) -> None:
    limits = {"max_psnr_drop_db": 100.0}
    spec = {
        "space": SPACE,
        "max_trials": 3,
        "constraints": limits,
        "max_images": 1,
        "crop": [48, 40],
    }
    r = search_recipe(tmp_path, tiny_ckpt, spec)
    out = tmp_path / "search"
    result = search(str(r), "--output", str(out))
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "search.json").read_text())
    assert summary["goal_met"] is True and summary["trials"] == 3
    assert summary["final_check"]["passed"] is True
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) == 3 and all(float(row["latency"]) > 0 for row in rows)
    assert (
        len({(row["steps.prune.ratio.encoder"], row["steps.prune.importance"]) for row in rows})
        == 3
    )
    assert (out / "pareto.png").stat().st_size > 1000
    assert json.loads((out / "pareto.json").read_text())["front"]
    # the trials measured the calibration images, never the evaluation ones
    # ... and only the first max_images of them (a trial's cost grows with its images)
    for manifest in out.glob("trials/*/02_validate/manifest.json"):
        params = json.loads(manifest.read_text())["params"]
        assert params["images"] == str(tmp_path / "cal") and params["max_images"] == 1
        # ... at their 48 x 40 centre (img0 is 64 x 64)
        measured = json.loads((manifest.parent / "report.json").read_text())["images"]
        assert [row["image"] for row in measured["candidate"]] == ["img0.png"]
        row = measured["candidate"][0]
        assert params["crop"] == [48, 40] and (row["width"], row["height"]) == (48, 40)
    final = json.loads((out / "final" / "02_validate" / "manifest.json").read_text())
    assert final["params"]["images"] is None and final["params"]["max_images"] is None
    assert final["params"]["crop"] is None
    final_rows = json.loads((out / "final" / "02_validate" / "report.json").read_text())
    assert len(final_rows["images"]["candidate"]) == 2  # every evaluation image
    best = yaml.safe_load((out / "best.yaml").read_text())
    chosen = summary["chosen"]["values"]
    assert best["steps"][0]["prune"]["ratio"]["encoder"] == chosen["steps.prune.ratio.encoder"]
    assert "images" not in best["steps"][1]["validate"] and "search" not in best
    rerun = CliRunner().invoke(
        main, ["run", str(out / "best.yaml"), "--output", str(tmp_path / "b")]
    )
    assert rerun.exit_code == 0, rerun.output


def test_impossible_constraints_report_the_best_effort_and_exit_1(
    tiny_ckpt: Path, tmp_path: Path
) -> None:
    limits = {"max_psnr_drop_db": 0.0, "min_speedup": 100.0}
    r = search_recipe(tmp_path, tiny_ckpt, {"space": SPACE, "max_trials": 2, "constraints": limits})
    out = tmp_path / "search"
    result = search(str(r), "--output", str(out))
    assert result.exit_code == 1, result.output
    assert "goal_met: false" in result.output and "best effort" in result.output
    summary = json.loads((out / "search.json").read_text())
    assert summary["goal_met"] is False and summary["best_effort"] is True
    assert summary["trials"] == 2 and summary["chosen"]["latency"] > 0
    speed = next(g for g in summary["chosen"]["gates"] if g["gate"] == "min_speedup")
    assert speed["passed"] is False and speed["value"] < 100
    assert (out / "best.yaml").is_file() and (out / "pareto.png").is_file()
    assert len(list(csv.DictReader((out / "trials.csv").open()))) == 2
    assert json.loads((out / "run.json").read_text())["status"] == "gate-failed"


@pytest.mark.parametrize(
    ("space", "constraints", "needle"),
    [
        ({"steps.prune.nonsense": [1, 2]}, None, "nonsense"),
        ({"steps.prune.importance": []}, None, "empty choice list"),
        ({"steps.prune.ratio.encoder": [0.2, 1.0]}, None, "outside [0, 1)"),
        ({"steps.prune.ratio.encoder": {"low": 0.1, "high": 1.5}}, None, "outside [0, 1)"),
        ({"steps.quantize.backend": ["ort-static"]}, None, "'quantize' is not a step"),
        ({"steps.prune.importance": ["l1"]}, {"max_psnr": 0.3}, "not a validate gate"),
        ({"steps.prune.importance": ["l1", "magic"]}, None, "importance"),
    ],
)
def test_bad_search_spaces_are_one_line_errors_before_any_work(
    space: dict[str, Any],
    constraints: dict[str, float] | None,
    needle: str,
    tiny_ckpt: Path,
    tmp_path: Path,
) -> None:
    block: dict[str, Any] = {"space": space, "max_trials": 2}
    if constraints:
        block["constraints"] = constraints
    out = tmp_path / "search"
    result = search(str(search_recipe(tmp_path, tiny_ckpt, block)), "--output", str(out))
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert needle in result.stderr, result.stderr
    assert not out.exists()


def test_a_killed_search_resumes_without_repeating_a_trial(tiny_ckpt: Path, tmp_path: Path) -> None:
    block = {
        "space": SPACE,
        "max_trials": 4,
        "constraints": {"max_psnr_drop_db": 100.0},
        "final_check": False,
    }
    r, out = search_recipe(tmp_path, tiny_ckpt, block), tmp_path / "search"
    proc = cli_process("search", str(r), "--output", str(out))
    try:
        deadline = time.monotonic() + 300
        while not (out / "trials" / "0001").exists():  # trial 0 finished, trial 1 under way
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the second trial never started"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    first = out / "trials" / "0000" / "02_validate" / "manifest.json"
    kept = first.stat().st_mtime_ns
    again = cli_process("search", str(r), "--output", str(out), "--resume")
    _, stderr = again.communicate(timeout=600)
    assert again.returncode == 0, stderr
    assert first.stat().st_mtime_ns == kept  # the finished trial was not run again
    rows = list(csv.DictReader((out / "trials.csv").open()))
    combos = [(row["steps.prune.ratio.encoder"], row["steps.prune.importance"]) for row in rows]
    assert len(rows) == 4 and len(set(combos)) == 4, rows
    # each parameter set ran in exactly one trial folder, and each folder ran once
    runs = [json.loads(p.read_text()) for p in out.glob("cache/*.json")]
    assert sorted(e["folder"] for e in runs) == sorted(row["folder"] for row in rows)
    assert json.loads((out / "search.json").read_text())["trials"] == 4
    # a larger budget continues the same study: one more trial, none of the four again
    more = search(str(r), "--output", str(out), "--resume", "--max-trials", "5")
    assert more.exit_code == 0, more.output
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) == 5 and len({(row["folder"]) for row in rows}) == 5
    assert first.stat().st_mtime_ns == kept
    # the time budget is the whole search's: the minutes already spent are not given again
    spent = search(str(r), "--output", str(out), "--resume", "--max-trials", "9",
                   "--max-minutes", "0.001")  # fmt: skip
    assert spent.exit_code == 0, spent.output
    assert len(list(csv.DictReader((out / "trials.csv").open()))) == 5
    # resuming with another space would mix two searches in one study: refused at plan time
    changed = yaml.safe_load(r.read_text())
    changed["search"]["space"]["steps.prune.importance"] = ["l1", "random"]
    r.write_text(yaml.safe_dump(changed, sort_keys=False))
    before = (out / "run.json").read_bytes()
    refused = search(str(r), "--output", str(out), "--resume")
    assert refused.exit_code == 2 and "another recipe or search block" in refused.stderr
    assert (out / "run.json").read_bytes() == before


def test_the_search_int8_recipe_searches_quantization_choices(
    tiny_ckpt: Path, tmp_path: Path
) -> None:
    """recipes/search-int8.yaml on the tiny model: small images, 2 calibration images, and
    the backend key left out of its space (INC's import alone takes long on 2 cores)."""
    data = yaml.safe_load((REPO / "recipes" / "search-int8.yaml").read_text())
    data["model"] = str(tiny_ckpt)
    data["data"] = {
        "eval": str(write_images(tmp_path / "eval", [(64, 64), (64, 80)], seed=1)),
        "calibration": str(write_images(tmp_path / "cal", [(64, 64), (80, 64)], seed=11)),
    }
    data["steps"][1]["quantize"]["calibration"].update(images=2, crop=64)
    data["search"]["space"].pop("steps.quantize.backend")
    data["search"]["constraints"] = {"max_psnr_drop_db": 3.0}  # a random tiny model
    r = tmp_path / "search-int8.yaml"
    r.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "search"
    result = search(str(r), "--output", str(out), "--max-trials", "2")
    assert result.exit_code in (0, 1), result.output
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) == 2 and all(not row["error"] for row in rows), rows
    summary = json.loads((out / "search.json").read_text())
    assert summary["goal_met"] == (result.exit_code == 0)
    best = yaml.safe_load((out / "best.yaml").read_text())
    chosen = summary["chosen"]["values"]
    assert best["steps"][1]["quantize"]["keep_float"] == chosen["steps.quantize.keep_float"]
    assert best["steps"][2]["validate"]["gates"] == {"max_psnr_drop_db": 3.0}


FINETUNE = {"max_steps": 2, "crop": 64, "val_crop": 64, "batch_size": 2, "eval_every": 1}


def screened_recipe(tmp_path: Path, model: Path, limit: float, max_trials: int) -> Path:
    steps = [
        {"prune": {**PRUNE, "latency_repeats": 0}},
        {"finetune": FINETUNE},
        {"validate": {"repeats": 1}},
    ]
    block = {
        "space": SPACE,
        "max_trials": max_trials,
        "constraints": {"max_psnr_drop_db": 100.0},
        "screen": {"max_psnr_drop_db": limit},
        "final_check": False,
    }
    r = search_recipe(tmp_path, model, block, steps)
    data = yaml.safe_load(r.read_text())
    data["data"]["train"] = str(write_images(tmp_path / "train", [(96, 96), (80, 96)], seed=7))
    r.write_text(yaml.safe_dump(data, sort_keys=False))
    return r


def test_a_screen_fine_tunes_only_trials_whose_one_shot_quality_passes(
    tiny_ckpt: Path, tmp_path: Path
) -> None:
    out = tmp_path / "search"
    result = search(str(screened_recipe(tmp_path, tiny_ckpt, 100.0, 1)), "--output", str(out))
    assert result.exit_code == 0, result.output
    assert (out / "trials" / "0000-screen" / "02_validate").is_dir()  # one-shot: no finetune
    assert sorted(p.name for p in (out / "trials" / "0000").iterdir() if p.is_dir()) == [
        "01_prune",
        "02_finetune",
        "03_validate",
    ]


def test_screened_out_trials_are_never_fine_tuned_nor_chosen(
    tiny_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the tiny random model loses no PSNR when pruned, so every one-shot would pass a real
    # limit: the verdict is forced to "not promising" to follow what the search does with it
    monkeypatch.setattr("compressor.search.engine.screened_out", lambda outcome, limit: True)
    out = tmp_path / "search"
    result = search(str(screened_recipe(tmp_path, tiny_ckpt, 0.5, 2)), "--output", str(out))
    assert result.exit_code == 1, result.output
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["0000-screen", "0001-screen"]
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["screened"] for r in rows] == ["True", "True"]
    summary = json.loads((out / "search.json").read_text())
    assert summary["goal_met"] is False and summary["best_effort"] is True


def test_multi_objective_search_returns_a_pareto_front(tiny_ckpt: Path, tmp_path: Path) -> None:
    block = {
        "space": SPACE,
        "max_trials": 3,
        "multi_objective": True,
        "constraints": {"max_psnr_drop_db": 100.0},
        "final_check": False,
    }
    out = tmp_path / "search"
    result = search(str(search_recipe(tmp_path, tiny_ckpt, block)), "--output", str(out))
    assert result.exit_code == 0, result.output
    pareto = json.loads((out / "pareto.json").read_text())
    assert pareto["axes"] == ["latency", "quality_loss", "size_mb"] and pareto["trials"] == 3
    front = pareto["front"]
    assert 1 <= len(front) <= 3 and pareto["chosen"]["number"] in {r["number"] for r in front}
    for a in front:  # no member of the front is dominated by another
        for b in front:
            axes = ("latency", "quality_loss", "size_mb")
            assert not (all(b[k] <= a[k] for k in axes) and any(b[k] < a[k] for k in axes))


def test_trials_sharing_a_fine_tune_run_it_once(
    tiny_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # two trials that differ only after the fine-tune (the validate repeats): the second
    # takes the first's prune and fine-tune from <search>/cache/steps (compressor.step_cache),
    # and so does the final check of the chosen one on the evaluation images
    import dataclasses

    from compressor.steps import STEPS

    get = STEPS.get
    calls: list[str] = []
    spec = STEPS.get("finetune")
    counted = dataclasses.replace(spec, run=lambda *a: calls.append("ft") or spec.run(*a))
    monkeypatch.setattr(STEPS, "get", lambda name: counted if name == "finetune" else get(name))
    steps = [
        {"prune": {**PRUNE, "latency_repeats": 0}},
        {"finetune": FINETUNE},
        {"validate": {"repeats": 1}},
    ]
    block = {
        "space": {"steps.validate.repeats": [1, 2]},
        "sampler": "brute-force",
        "max_trials": 2,
        "constraints": {"max_psnr_drop_db": 100.0},
    }
    r = search_recipe(tmp_path, tiny_ckpt, block, steps)
    data = yaml.safe_load(r.read_text())
    data["data"]["train"] = str(write_images(tmp_path / "train", [(96, 96), (80, 96)], seed=7))
    r.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "search"
    result = search(str(r), "--output", str(out))
    assert result.exit_code == 0, result.output
    assert calls == ["ft"]  # neither the second trial nor the final check fine-tuned
    stored = sorted(p.name.split("-")[0] for p in (out / "cache" / "steps").iterdir())
    assert stored == ["finetune", "prune"]
    first = out / "trials" / "0000" / "02_finetune"
    for other in (out / "trials" / "0001" / "02_finetune", out / "final" / "02_finetune"):
        assert sorted(f.name for f in first.iterdir()) == sorted(f.name for f in other.iterdir())
        for f in first.iterdir():
            if f.is_file():
                assert f.read_bytes() == (other / f.name).read_bytes(), f.name
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) == 2 and not any(row["error"] for row in rows), rows


def test_trial_images_that_are_training_images_are_held_out_of_the_fine_tune(
    tiny_ckpt: Path, tmp_path: Path
) -> None:
    steps = [
        {"prune": {**PRUNE, "latency_repeats": 0}},
        {"finetune": FINETUNE},
        {"validate": {"repeats": 1}},
    ]
    block = {
        "space": {"steps.prune.importance": ["l1"]},
        "max_trials": 1,
        "max_images": 1,
        "constraints": {"max_psnr_drop_db": 100.0},
    }
    r = search_recipe(tmp_path, tiny_ckpt, block, steps)
    data = yaml.safe_load(r.read_text())
    cal = write_images(tmp_path / "cal", [(64, 64), (80, 64), (96, 96)], seed=11)
    data["data"]["train"] = str(cal)  # the search images (data.calibration) are these too
    r.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "search"
    result = search(str(r), "--output", str(out))
    assert result.exit_code == 0, result.output
    measured = json.loads((out / "trials/0000/03_validate/report.json").read_text())["images"]
    assert [row["image"] for row in measured["candidate"]] == ["img0.png"]
    for folder in ("trials/0000", "final"):
        params = json.loads((out / folder / "02_finetune/manifest.json").read_text())["params"]
        assert params["exclude_images"] == ["img0.png"]  # measured, so never trained on
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["steps"][1]["finetune"]["exclude_images"] == ["img0.png"]
    # measuring every training image would leave the fine-tune nothing: refused up front
    data["search"]["max_images"] = None
    r.write_text(yaml.safe_dump(data, sort_keys=False))
    refused = search(str(r), "--output", str(tmp_path / "other"))
    assert refused.exit_code == 2 and "set search.max_images" in refused.stderr
    assert refused.stderr.count("\n") == 1 and not (tmp_path / "other").exists()
