"""Families end to end: every member through the recipe, the family judged by BD-rate,
bad families refused at plan time with one line and exit 2, failed members reported."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from click.testing import CliRunner

from compressor import checkpoint
from compressor.cli import main
from compressor.models import CodecAdapter
from tests.conftest import REPO, tiny_model, write_images

#: quantization steps of the tiny family's latents: finer steps, more bits, higher quality
STEPS = (0.4, 0.2, 0.1, 0.05)


def block_codec(step: float, arch: str = "bmshj2018-hyperprior") -> CodecAdapter:
    """A tiny hyperprior with hand-set weights and a known RD behaviour: y holds the 16x16
    block means of R, G, B divided by `step` (GDN set to identity), the decoder repeats them;
    the hyper path gives every latent the scale 0.3 / step. Rounding y quantizes the block
    means with step `step`, so a finer step costs more bits and gives a higher PSNR: one
    model per lambda, as a trained family, in a fraction of a second."""
    model = tiny_model(arch)
    net: Any = model.net
    with torch.no_grad():
        for seq in (net.g_a, net.g_s, net.h_a, net.h_s):
            for layer in seq:
                if isinstance(layer, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
                    layer.weight.zero_()
                    layer.bias.zero_()
                elif hasattr(layer, "beta"):  # GDN / IGDN -> identity
                    layer.beta.copy_(layer.beta_reparam.init(torch.ones_like(layer.beta)))
                    layer.gamma.copy_(layer.gamma_reparam.init(torch.zeros_like(layer.gamma)))
        for i in (0, 2, 4, 6):
            for c in range(3):
                net.g_a[i].weight[c, c, 2:4, 2:4] = 0.25
                net.g_s[i].weight[c, c, 2:4, 2:4] = 1.0
        net.g_a[6].weight.div_(step)
        net.g_s[0].weight.mul_(step)
        net.h_s[4].bias.fill_(0.3 / step)
    model.finalize()
    return model.eval()


def tiny_family(folder: Path, steps: tuple[float, ...] = STEPS) -> list[Path]:
    """Checkpoints of the tiny family, named q1.. like the bundled one."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, step in enumerate(steps, start=1):
        path = folder / f"tiny-q{i}.pt"
        if not path.exists():
            checkpoint.save(block_codec(step), path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return tiny_family(tmp_path_factory.mktemp("family"))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 176 px: MS-SSIM's five scales need more than 160 px on a side
    return write_images(tmp_path_factory.mktemp("imgs"), [(176, 176), (176, 192)], seed=5)


def recipe(tmp_path: Path, model: Any, images: Path, steps: list[Any], **extra: Any) -> Path:
    body = {"name": "fam", "model": model, "data": {"eval": str(images)}, "threads": 1}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**body, **extra, "steps": steps}))
    return path


def run(*args: str) -> Any:
    return CliRunner().invoke(main, ["run", *args])


VALIDATE = {"validate": {"repeats": 1, "references": ["jpeg"], "gates": {"max_bd_rate": 0.5}}}


def test_family_of_the_same_models_has_zero_bd_rate(
    family: list[Path], images: Path, tmp_path: Path
) -> None:
    glob = str(family[0].parent / "*.pt")
    out = tmp_path / "run"
    result = run(str(recipe(tmp_path, glob, images, [VALIDATE])), "--output", str(out))
    assert result.exit_code == 0, result.stderr
    mark = json.loads((out / "run.json").read_text())
    assert mark["status"] == "complete"
    assert mark["steps"] == [f"tiny-q{i}/01_validate" for i in range(1, 5)] + ["family"]
    report = json.loads((out / "family" / "report.json").read_text())
    head = report["bd"]["candidate vs baseline"]
    # candidate and baseline are the same deterministic models: the curves coincide
    assert head["bd_rate_psnr"] == pytest.approx(0.0, abs=1e-9)
    assert head["bd_rate_ms_ssim"] == pytest.approx(0.0, abs=1e-9)
    assert head["bd_psnr"] == pytest.approx(0.0, abs=1e-9)
    assert report["gates"] == [
        {"gate": "max_bd_rate", "limit": 0.5, "value": head["bd_rate_psnr"], "passed": True}
    ]
    base = report["curves"]["baseline"]
    assert [p["label"] for p in base] == [f"tiny-q{i}" for i in range(1, 5)]
    # the block codec's RD curve is monotone: more bits, higher PSNR
    assert all(a["psnr"] < b["psnr"] for a, b in itertools.pairwise(base))
    # each point is its member's own validation (same numbers, nothing measured twice)
    member = json.loads((out / "tiny-q2" / "01_validate" / "report.json").read_text())
    assert base[1]["bpp"] == member["baseline"]["bpp"]
    assert base[1]["psnr"] == member["baseline"]["psnr"]
    assert len(report["curves"]["jpeg"]) == 11 and "webp" not in report["curves"]
    for png in ("rd.png", "rd_msssim.png", "speed.png"):
        assert (out / "family" / png).read_bytes()[:4] == b"\x89PNG"
    assert "BD-rate PSNR %" in (out / "family" / "report.md").read_text()


def test_resume_keeps_every_members_steps(family: list[Path], images: Path, tmp_path: Path) -> None:
    r = recipe(tmp_path, [str(p) for p in family], images, [VALIDATE])
    out = tmp_path / "run"
    assert run(str(r), "--output", str(out)).exit_code == 0
    again = run(str(r), "--output", str(out), "--resume")
    assert again.exit_code == 0, again.stderr
    assert "kept 4 step(s)" in again.output
    replaced = run(str(r), "--output", str(out), "--overwrite")
    assert replaced.exit_code == 0, replaced.stderr
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".run")]


def test_failed_member_is_reported_and_the_others_kept(
    family: list[Path], images: Path, tmp_path: Path
) -> None:
    # a checkpoint whose arch field reads fine at plan time but whose weights do not fit
    broken = tmp_path / "broken.pt"
    good = torch.load(family[0], weights_only=True)
    torch.save({**good, "config": {"N": 16, "M": 24}}, broken)
    models = [str(p) for p in family] + [str(broken)]
    out = tmp_path / "run"
    result = run(str(recipe(tmp_path, models, images, [VALIDATE])), "--output", str(out))
    assert result.exit_code == 1, result.stderr
    assert "family member(s) failed: broken" in result.stderr
    report = json.loads((out / "family" / "report.json").read_text())
    assert list(report["failed_members"]) == ["broken"]
    assert report["passed"] is False and "broken" in report["verdict"]
    # the four others make the curves
    assert report["bd"]["candidate vs baseline"]["bd_rate_psnr"] == pytest.approx(0.0, abs=1e-9)
    assert json.loads((out / "run.json").read_text())["failed_members"]["broken"]
    assert (out / "tiny-q4" / "01_validate" / "report.json").is_file()


def _refused(result: Any, out: Path, words: str) -> None:
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert words in message and "\n" not in message, message
    assert not out.exists()


def test_bad_families_are_refused_at_plan_time(
    family: list[Path], images: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    one = recipe(tmp_path, [str(family[0])], images, [VALIDATE])
    _refused(run(str(one), "--output", str(out)), out, "at least 4 members")
    factorized = tmp_path / "factorized.pt"
    checkpoint.save(tiny_model("bmshj2018-factorized"), factorized)
    mixed = [str(p) for p in family[:3]] + [str(factorized)]
    steps = [{"export": {}}, VALIDATE]
    r = recipe(tmp_path, mixed, images, steps)
    _refused(run(str(r), "--output", str(out)), out, "different archs")
    single = recipe(tmp_path, str(family[0]), images, [VALIDATE])
    _refused(run(str(single), "--output", str(out)), out, "max_bd_rate judges a family")
    no_validate = recipe(tmp_path, [str(p) for p in family], images, [{"evaluate": {}}])
    _refused(run(str(no_validate), "--output", str(out)), out, "add `- validate: {}`")
    nothing = recipe(tmp_path, str(tmp_path / "none" / "*.pt"), images, [VALIDATE])
    _refused(run(str(nothing), "--output", str(out)), out, "matches no checkpoint")


def test_curves_that_do_not_overlap_are_an_error(
    family: list[Path], images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from compressor.families import judge

    rows = judge.member_rows

    def shifted(*args: Any) -> list[dict[str, Any]]:  # the candidate family 30 dB better
        out = rows(*args)
        for m in out:
            m["candidate"] = {**m["candidate"], "psnr": m["candidate"]["psnr"] + 30}
        return out

    monkeypatch.setattr(judge, "member_rows", shifted)
    out = tmp_path / "run"
    result = run(
        str(recipe(tmp_path, [str(p) for p in family], images, [VALIDATE])), "--output", str(out)
    )
    assert result.exit_code == 2, result.output
    message = result.stderr.strip().splitlines()[-1]  # after the progress bars: one line
    assert message.startswith("error: candidate vs baseline family: the two RD curves do not ")
    assert "overlap enough in PSNR" in message
    assert not (out / "family").exists()  # no report that looks whole
    assert json.loads((out / "run.json").read_text())["status"] == "failed"


def test_qat_recipe_is_judged_by_bd_rate_on_a_family(family: list[Path], tmp_path: Path) -> None:
    """recipes/hyperprior-int8-qat.yaml run on a family (--model several times): every member
    QAT-quantized, the INT8 family judged against the FP32 export family by BD-rate."""
    from tests.e2e.test_recipes import shrink

    small = shrink(REPO / "recipes" / "hyperprior-int8-qat.yaml", tmp_path, family[0])
    data = yaml.safe_load(small.read_text())
    data["steps"][-1]["validate"].update(references=["jpeg"], repeats=1)
    data["steps"][-1]["validate"]["gates"] = {"max_bd_rate": 1000.0}
    small.write_text(yaml.safe_dump(data))
    args = [f"--model={p}" for p in family]
    out = tmp_path / "run"
    result = CliRunner().invoke(
        main, ["quantize", "--recipe", str(small), *args, "--output", str(out)]
    )
    assert result.exit_code in (0, 1), result.stderr
    report = json.loads((out / "family" / "report.json").read_text())
    assert not report["failed_members"]
    for i in range(1, 5):
        assert (out / f"tiny-q{i}" / "02_quantize" / "onnx" / "manifest.json").is_file()
    bd = report["bd"]["candidate vs baseline"]["bd_rate_psnr"]
    assert bd is not None and abs(bd) < 1000
    assert report["gates"][0]["gate"] == "max_bd_rate"


FAMILY_RECIPES = sorted((REPO / "recipes").glob("family-*.yaml"))


@pytest.mark.parametrize("path", FAMILY_RECIPES, ids=[r.stem for r in FAMILY_RECIPES])
def test_family_recipes_run_on_a_tiny_family(
    path: Path, family: list[Path], tmp_path: Path
) -> None:
    """Each shipped family recipe (tiny budgets, as tests/e2e/test_recipes.py shrinks them)
    runs every step on every member and judges the family."""
    from tests.e2e.test_recipes import shrink

    small = shrink(path, tmp_path, family[0])
    data = yaml.safe_load(small.read_text())
    assert "*" in yaml.safe_load(path.read_text())["model"]  # the bundled family's glob
    data["model"] = [str(p) for p in family]
    data["steps"][-1]["validate"].update(repeats=1)
    small.write_text(yaml.safe_dump(data))
    out = tmp_path / "run"
    result = run(str(small), "--output", str(out))
    # tiny models may miss the recipe's gates (and MS-SSIM is undefined on its small images)
    assert result.exit_code in (0, 1), result.stderr
    steps = [next(iter(s)) for s in data["steps"]]
    for member in (p.stem for p in family):
        names = sorted(p.name for p in (out / member).iterdir())
        assert names == [f"{i:02d}_{s}" for i, s in enumerate(steps, start=1)]
    report = json.loads((out / "family" / "report.json").read_text())
    assert not report["failed_members"]
    assert report["bd"]["candidate vs baseline"]["bd_rate_psnr"] is not None
    assert {g["gate"] for g in report["gates"]} == {"max_bd_rate", "max_bd_rate_ms_ssim"}
