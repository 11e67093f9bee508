"""cli.py search over a family: each trial runs the recipe on every member, the BD-rate
constraints are judged on the trial's family, single-model gates on the worst member."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from compressor.cli import main
from compressor.search.trial import worst_gates
from tests.conftest import write_images
from tests.e2e.test_families import tiny_family

PRUNE = {"ratio": {"encoder": 0.25}, "round_to": 1, "report_size": [64, 64], "latency_repeats": 0}


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return tiny_family(tmp_path_factory.mktemp("family"))


def family_recipe(tmp_path: Path, model: Any, search: dict[str, Any]) -> Path:
    # 176 px: MS-SSIM's five scales need more than 160 px on a side (its BD-rate too)
    body = {
        "name": "fam",
        "model": model,
        "data": {
            "eval": str(write_images(tmp_path / "eval", [(176, 176)], seed=5)),
            "calibration": str(write_images(tmp_path / "cal", [(176, 192)], seed=9)),
        },
        "threads": 1,
        "steps": [{"prune": PRUNE}, {"validate": {"repeats": 1, "references": ["jpeg"]}}],
        "search": search,
    }
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def search(*args: str) -> Any:
    return CliRunner().invoke(main, ["search", *args])


def test_a_family_search_judges_each_trial_by_bd_rate(family: list[Path], tmp_path: Path) -> None:
    block = {
        "space": {"steps.prune.ratio.encoder": [0.25, 0.5]},
        "sampler": "brute-force",
        "max_trials": 2,
        "constraints": {"max_bd_rate": 5.0, "max_bd_rate_ms_ssim": 5.0, "max_psnr_drop_db": 3.0},
    }
    out = tmp_path / "search"
    glob = str(family[0].parent / "*.pt")
    result = search(str(family_recipe(tmp_path, glob, block)), "--output", str(out))
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) == 2 and {r["steps.prune.ratio.encoder"] for r in rows} == {"0.25", "0.5"}
    for row in rows:
        assert not row["error"] and row["feasible"] == "True"
        # pruning removes the block codec's zero channels: the same RD curve, BD-rate ~0
        assert abs(float(row["bd_rate_psnr"])) < 1.0
        assert abs(float(row["bd_rate_ms_ssim"])) < 1.0
        family_report = json.loads((out / row["folder"] / "family" / "report.json").read_text())
        head = family_report["bd"]["candidate vs baseline"]
        assert float(row["bd_rate_psnr"]) == pytest.approx(head["bd_rate_psnr"])
        assert "jpeg" not in family_report["curves"]  # trials skip the reference sweeps
        # latency: the mean over the members of candidate / baseline time
        ratios = []
        for member in (p.stem for p in family):
            report = json.loads(
                (out / row["folder"] / member / "02_validate" / "report.json").read_text()
            )
            base, cand = report["baseline"], report["candidate"]
            ratios.append(
                (cand["encode_ms"] + cand["decode_ms"]) / (base["encode_ms"] + base["decode_ms"])
            )
        assert float(row["latency"]) == pytest.approx(sum(ratios) / len(ratios))
    summary = json.loads((out / "search.json").read_text())
    assert summary["goal_met"] is True and len(summary["family"]) == 4
    gates = {g["gate"] for g in summary["chosen"]["gates"]}
    assert gates == {"max_bd_rate", "max_bd_rate_ms_ssim", "max_psnr_drop_db"}
    # the final check judged the chosen recipe's family on data.eval, JPEG included
    assert summary["final_check"]["passed"] is True
    final = json.loads((out / "final" / "family" / "report.json").read_text())
    assert "jpeg" in final["curves"] and final["passed"] is True
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["model"] == glob and best["steps"][1]["validate"]["references"] == ["jpeg"]


def test_a_family_gate_on_one_model_is_one_line_exit_2_before_any_weights_load(
    family: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_weights(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("weights loaded before the recipe was checked")

    monkeypatch.setattr("compressor.checkpoint.load", no_weights)
    block = {"space": {"steps.prune.ratio.encoder": [0.25]}, "constraints": {"max_bd_rate": 1.0}}
    out = tmp_path / "search"
    result = search(str(family_recipe(tmp_path, str(family[0]), block)), "--output", str(out))
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "search.constraints.max_bd_rate judges a family's RD curve" in result.stderr
    assert not out.exists()


def test_single_model_gates_on_a_family_take_the_worst_member() -> None:
    def gate(name: str, value: float | None, limit: float, passed: bool) -> dict[str, Any]:
        return {"gate": name, "limit": limit, "value": value, "passed": passed}

    members = [
        [gate("max_psnr_drop_db", 0.2, 0.5, True), gate("min_speedup", 1.5, 1.2, True)],
        [gate("max_psnr_drop_db", 0.7, 0.5, False), gate("min_speedup", 1.1, 1.2, False)],
        [gate("max_psnr_drop_db", 0.4, 0.5, True), gate("min_speedup", None, 1.2, False)],
    ]
    got = {g["gate"]: g for g in worst_gates(members)}
    assert got["max_psnr_drop_db"] == gate("max_psnr_drop_db", 0.7, 0.5, False)
    assert got["min_speedup"] == gate("min_speedup", None, 1.2, False)  # unmeasured is worst
    fine = worst_gates([[gate("max_psnr_drop_db", 0.1, 0.5, True)]] * 2)
    assert fine == [gate("max_psnr_drop_db", 0.1, 0.5, True)]
