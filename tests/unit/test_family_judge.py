"""Family judging by hand: reference sweeps cut to the family's range, BD gates only on
families, members named from their files."""

from __future__ import annotations

from pathlib import Path

import pytest

from compressor.families.judge import Curve, bracket
from compressor.families.members import member_names
from compressor.validate import Gates, apply_gates


def test_a_reference_sweep_is_cut_to_the_range_it_is_compared_over() -> None:
    sweep = Curve("jpeg", [{"psnr": q, "bpp": q / 10} for q in (22, 25, 28, 31, 34, 37, 40)])
    # the family spans 29..33 dB: from the last point at or below 29 to the first at or above 33
    cut = bracket(sweep, "psnr", 29.0, 33.0)
    assert [p["psnr"] for p in cut.points] == [28, 31, 34, 37]  # widened to 4 points upwards
    assert [p["psnr"] for p in bracket(sweep, "psnr", 26.0, 38.0).points] == [
        25,
        28,
        31,
        34,
        37,
        40,
    ]
    assert [p["psnr"] for p in bracket(sweep, "psnr", 39.0, 41.0).points] == [31, 34, 37, 40]


def test_bd_gates_apply_to_families_only() -> None:
    gates = Gates(max_psnr_drop_db=0.3, max_bd_rate=1.0, max_bd_rate_ms_ssim=2.0)
    assert gates.family_gates() == ["max_bd_rate", "max_bd_rate_ms_ssim"]
    point = apply_gates(gates, {"psnr_drop_db": 0.1})
    assert [g["gate"] for g in point] == ["max_psnr_drop_db"] and point[0]["passed"]
    family = apply_gates(gates, {"bd_rate_psnr": 0.66, "bd_rate_ms_ssim": None}, family=True)
    assert [(g["gate"], g["passed"]) for g in family] == [
        ("max_bd_rate", True),
        ("max_bd_rate_ms_ssim", False),  # not measurable (small images): not passed
    ]


def test_member_names_come_from_their_files() -> None:
    paths = [Path("a/q1.pt"), Path("a/q2.pt"), Path("b/q 3.pt")]
    assert member_names(paths) == ["q1", "q2", "q-3"]
    assert member_names([Path("x/onnx"), Path("y/onnx")]) == ["x-onnx", "y-onnx"]
    assert member_names([Path("family.pt"), Path("q.pt")]) == ["member-family", "q"]


@pytest.mark.parametrize("value", [[], [""], ["a.pt", "a.pt"]])
def test_recipe_model_lists_are_checked(value: list[str]) -> None:
    from compressor.errors import RecipeError
    from compressor.recipe import parse_recipe

    with pytest.raises(RecipeError, match="model"):
        parse_recipe({"name": "r", "model": value, "steps": [{"evaluate": {}}]})
