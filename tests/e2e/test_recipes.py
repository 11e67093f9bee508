"""Every recipe in recipes/ runs end to end (on a tiny model); a failed gate exits 1."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from compressor.cli import main
from tests.conftest import REPO, write_images


def single_model(recipe: Path) -> bool:
    """A recipe of one model; a family recipe (model: a list or a glob) needs several members
    and is the family tests' (tests/e2e/test_families.py), not shrink()'s one tiny model."""
    model = yaml.safe_load(recipe.read_text())["model"]
    return isinstance(model, str) and not any(c in model for c in "*?[")


def plain(recipe: Path) -> bool:
    """A recipe `cli.py run` runs; one with a `search:` block is `cli.py search`'s
    (tests/e2e/test_search.py runs recipes/search-int8.yaml shrunk the same way)."""
    return "search" not in yaml.safe_load(recipe.read_text())


RECIPES = [r for r in sorted((REPO / "recipes").glob("*.yaml")) if single_model(r) and plain(r)]


def shrink(recipe: Path, tmp_path: Path, model: Path) -> Path:
    """The recipe with the tiny model, small images and tiny training budgets."""
    data = yaml.safe_load(recipe.read_text())
    images = write_images(tmp_path / "imgs", [(96, 128), (128, 96), (96, 96)], seed=3)
    data["model"] = str(model)
    data["threads"] = 1  # the suite runs single-threaded (see tests/conftest.py)
    data["data"] = {
        k: str(images)
        for k in ("eval", "train", "calibration")
        if k in data.get("data", {}) or k == "eval"
    }
    if "calibration" in data["data"]:  # a recipe refuses to calibrate on eval images
        calibration = write_images(tmp_path / "cal", [(96, 96), (80, 112)], seed=11)
        data["data"]["calibration"] = str(calibration)
    if "train" in data["data"]:  # ... and to train on them
        train = write_images(tmp_path / "train", [(96, 128), (128, 96), (96, 96)], seed=17)
        data["data"]["train"] = str(train)
    for step in data["steps"]:
        ((name, params),) = step.items()
        if name == "prune":
            params["round_to"] = 2  # N=8 layers: 30% in multiples of 8 would leave none
        if name == "finetune":
            params.update(max_steps=2, crop=64, val_crop=64, batch_size=2, eval_every=1)
        if name == "quantize":
            params["calibration"] = {**params.get("calibration", {}), "images": 2, "crop": 64}
            if params.get("accuracy"):
                params["accuracy"].update(images=1, max_trials=2)
            if params.get("qat"):
                params["qat"].update(max_steps=2, crop=64, val_crop=64, batch_size=2, eval_every=1)
        if name == "distill":
            params.setdefault("train", {}).update(
                max_steps=2, crop=64, val_crop=64, batch_size=2, eval_every=1
            )
    out = tmp_path / recipe.name
    out.write_text(yaml.safe_dump(data))
    return out


#: gates whose verdict is a latency ratio: on tiny graphs (a few ms) and a shared 2-core
#: machine it swings either side of any limit from run to run (measured for the same
#: hyperprior-int8 pair: encode speedup 0.29 in one run, 3.9 in another), so the test asserts
#: that they are reported with numbers, and that the exit code follows the report's verdicts
TIMING_GATES = {"min_speedup", "min_encode_speedup", "min_decode_speedup"}
#: the verdict of every other gate of each recipe on the tiny random model (seed 0, N=8/M=12,
#: images 96..128 px): what the code must produce, and why
NON_TIMING_VERDICTS: dict[str, dict[str, bool]] = {
    # max_ms_ssim_drop fails: MS-SSIM's 5 scales of an 11x11 window need more than 160 px, the
    # images are 96..128 px, so MS-SSIM is undefined (None) and an unmeasurable gate never
    # passes. max_bpp_increase fails: the baseline is the torch checkpoint, the candidate the
    # runtime export, whose container (magic, version, model id, padding, CRC) frames the
    # payload in a few more bytes than TorchCodec's two varints; a random tiny model codes
    # ~45 bytes per image, so that fixed framing alone is +18 % (> 2 %)
    "default": {"max_psnr_drop_db": True, "max_ms_ssim_drop": False, "max_bpp_increase": False},
    # the half-width student codes fewer bytes (-27 %) at the same ~6 dB of a random model
    "hyperprior-distill": {"max_psnr_drop_db": True, "max_bpp_increase": True},
    # INT8 against its own float export: the same container, PSNR within 0.01 dB
    "hyperprior-int8-accuracy": {"max_psnr_drop_db": True, "max_bpp_increase": True},
    "hyperprior-int8-ptq": {"max_psnr_drop_db": True, "max_bpp_increase": True},
    "hyperprior-int8-qat": {"max_psnr_drop_db": True, "max_bpp_increase": True},
    # the torch checkpoint against the runtime export: the container's framing as in default
    "hyperprior-prune30-int8": {"max_psnr_drop_db": True, "max_bpp_increase": False},
    # torch against torch (pruned + 2 fine-tune steps): the same bytes per image
    "hyperprior-prune30": {"max_psnr_drop_db": True, "max_bpp_increase": True},
}
#: the largest per-file framing difference between the runtime container and TorchCodec's
#: (measured: 8 bytes on every image)
MAX_FRAMING_BYTES = 16


def validate_report(run: Path) -> dict:
    folders = sorted(p for p in run.iterdir() if p.is_dir() and p.name.endswith("_validate"))
    return json.loads((folders[-1] / "report.json").read_text())  # type: ignore[no-any-return]


def check_bpp_failure(report: dict, limit: float) -> None:
    """A failed bpp gate here is the container's fixed framing, not the rate: every image
    costs a few bytes more, the same few on each."""
    assert report["deltas"]["bpp_increase"] > limit
    pairs = zip(report["images"]["baseline"], report["images"]["candidate"], strict=True)
    extra = [c["bytes"] - b["bytes"] for b, c in pairs]
    assert all(0 < e <= MAX_FRAMING_BYTES for e in extra) and len(set(extra)) == 1, extra


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_recipe_runs(recipe: Path, tiny_ckpt: Path, tmp_path: Path) -> None:
    small = shrink(recipe, tmp_path, tiny_ckpt)
    result = CliRunner().invoke(main, ["run", str(small), "--output", str(tmp_path / "run")])
    steps = yaml.safe_load(recipe.read_text())["steps"]
    folders = sorted(p.name for p in (tmp_path / "run").iterdir() if p.is_dir())
    assert len(folders) == len(steps), (result.output, result.stderr)
    for folder in folders:
        manifest = json.loads((tmp_path / "run" / folder / "manifest.json").read_text())
        assert manifest["id"] == folder and manifest["versions"]["torch"]
        assert all(len(v["sha256"]) == 64 for v in manifest["inputs"].values())
    (gates,) = [s["validate"]["gates"] for s in steps if "validate" in s]
    report = validate_report(tmp_path / "run")
    verdicts = {g["gate"]: g["passed"] for g in report["gates"]}
    assert set(verdicts) == set(gates)
    expected = NON_TIMING_VERDICTS[recipe.stem]
    assert {g: v for g, v in verdicts.items() if g not in TIMING_GATES} == expected
    for gate in report["gates"]:
        if gate["gate"] in TIMING_GATES:  # measured: a positive, finite ratio
            assert isinstance(gate["value"], float) and 0 < gate["value"] < math.inf, gate
    if "max_ms_ssim_drop" in gates:
        assert report["deltas"]["ms_ssim_drop"] is None  # undefined below 161 px
    if expected.get("max_bpp_increase") is False:
        check_bpp_failure(report, gates["max_bpp_increase"])
    # a non-timing gate that fails fixes the exit code at 1 (default, prune30-int8); a
    # recipe without timing gates has it fixed at 0 (int8-accuracy); otherwise the exit code
    # is exactly what the report's verdicts say
    assert result.exit_code == (0 if all(verdicts.values()) else 1), result.stderr
    if not all(expected.values()):
        assert result.exit_code == 1 and "validation gate failed" in result.stderr
    elif not set(gates) & TIMING_GATES:
        assert result.exit_code == 0, result.stderr


def test_impossible_gate_fails_with_exit_1(tiny_ckpt: Path, tmp_path: Path) -> None:
    images = write_images(tmp_path / "imgs", [(96, 96), (64, 80)])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": "gate",
                "model": str(tiny_ckpt),
                "data": {"eval": str(images)},
                "threads": 1,
                "steps": [
                    {
                        "validate": {
                            "repeats": 1,
                            "gates": {"min_speedup": 1000.0, "max_psnr_drop_db": 0.0},
                        }
                    }
                ],
            }
        )
    )
    result = CliRunner().invoke(main, ["run", str(recipe), "--output", str(tmp_path / "run")])
    assert result.exit_code == 1, result.stderr
    assert "validation gate failed" in result.stderr
    report = json.loads((tmp_path / "run" / "01_validate" / "report.json").read_text())
    verdicts = {g["gate"]: g["passed"] for g in report["gates"]}
    assert verdicts == {"min_speedup": False, "max_psnr_drop_db": True}
    assert report["deltas"]["psnr_drop_db"] == 0.0  # same model on both sides


def test_validate_command_exit_codes(tiny_ckpt: Path, tmp_path: Path) -> None:
    images = write_images(tmp_path / "imgs", [(96, 96)])
    args = [
        "validate",
        "--baseline",
        str(tiny_ckpt),
        "--candidate",
        str(tiny_ckpt),
        "--data",
        str(images),
        "--repeats",
        "1",
        "--out",
        str(tmp_path / "v"),
        "--threads",
        "1",
    ]
    ok = CliRunner().invoke(main, [*args, "--max-psnr-drop-db", "0.01"])
    assert ok.exit_code == 0, ok.stderr
    bad = CliRunner().invoke(main, [*args, "--min-speedup", "1000"])
    assert bad.exit_code == 1 and "min_speedup" in bad.stderr
    assert (tmp_path / "v" / "report.md").exists()


def test_default_recipe_gates_fail_when_impossibly_tight(tiny_ckpt: Path, tmp_path: Path) -> None:
    """The shipped default recipe's own validate step decides the exit code: made impossibly
    tight, it fails with exit 1 after running every step."""
    small = shrink(REPO / "recipes" / "default.yaml", tmp_path, tiny_ckpt)
    data = yaml.safe_load(small.read_text())
    (validate,) = [s["validate"] for s in data["steps"] if "validate" in s]
    validate["gates"]["min_decode_speedup"] = 1000.0
    small.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(main, ["run", str(small), "--output", str(tmp_path / "run")])
    assert result.exit_code == 1, result.stderr
    folders = sorted(p.name for p in (tmp_path / "run").iterdir() if p.is_dir())
    assert [f.split("_", 1)[1] for f in folders] == [next(iter(s)) for s in data["steps"]]
    report = json.loads((tmp_path / "run" / folders[-1] / "report.json").read_text())
    verdicts = {g["gate"]: g["passed"] for g in report["gates"]}
    assert verdicts["min_decode_speedup"] is False
    assert set(verdicts) == set(validate["gates"])
