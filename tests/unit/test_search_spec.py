"""The search block: space paths into the recipe's steps, ranges, constraints = gates."""

from __future__ import annotations

import pytest

from compressor.errors import RecipeError
from compressor.search.spec import Range, materialise, parse_spec, step_index

RAW = {
    "name": "r",
    "model": "bundled",
    "steps": [{"prune": {"ratio": {"encoder": 0.3}}}, {"export": None}, {"validate": {}}],
}


def test_paths_name_a_step_by_name_or_1_based_position() -> None:
    assert step_index(RAW, "steps.prune.ratio.encoder", "r") == (0, ["ratio", "encoder"])
    assert step_index(RAW, "steps.2.rewrite", "r") == (1, ["rewrite"])
    for bad, needle in (
        ("steps.quantize.backend", "'quantize' is not a step"),
        ("prune.ratio", "steps.STEP.FIELD"),
        ("steps.prune", "steps.STEP.FIELD"),
        ("steps..ratio", "steps.STEP.FIELD"),
    ):
        with pytest.raises(RecipeError, match=needle.replace(".", r"\.")):
            step_index(RAW, bad, "r")


def test_a_step_named_twice_is_named_by_position() -> None:
    raw = {**RAW, "steps": [{"validate": {}}, {"validate": {}}]}
    with pytest.raises(RecipeError, match="more than once"):
        step_index(raw, "steps.validate.repeats", "r")
    assert step_index(raw, "steps.2.repeats", "r") == (1, ["repeats"])


def test_materialise_sets_nested_fields_on_a_copy() -> None:
    out = materialise(RAW, {"steps.prune.ratio.decoder": 0.5, "steps.export.rewrite": True}, "r")
    assert out["steps"][0]["prune"]["ratio"] == {"encoder": 0.3, "decoder": 0.5}
    assert out["steps"][1]["export"] == {"rewrite": True}
    assert RAW["steps"][0]["prune"]["ratio"] == {"encoder": 0.3}  # the original is untouched
    assert RAW["steps"][1]["export"] is None


def test_ranges_check_their_ends_and_count_their_values() -> None:
    assert Range(low=0.1, high=0.45, step=0.1).ends() == pytest.approx([0.1, 0.4])
    assert Range(low=0.1, high=0.45, step=0.1).size() == 4
    assert Range(low=2, high=5, integer=True).size() == 4
    assert Range(low=0.1, high=0.5).size() == float("inf")
    for bad in ({"low": 0.5, "high": 0.5}, {"low": 0, "high": 1, "log": True}):
        with pytest.raises(ValueError):
            Range.model_validate(bad)


@pytest.mark.parametrize(
    ("block", "needle"),
    [
        ({"space": {}}, "space is empty"),
        ({"space": {"steps.prune.importance": []}}, "empty choice list"),
        ({"space": {"a": [1]}, "constraints": {"max_psnr": 1}}, "not a validate gate"),
        ({"space": {"a": [1]}, "max_trials": 0}, "max_trials"),
        ({"space": {"a": [1]}, "objective": "size"}, "objective"),
        ({"space": {"a": [1]}, "sampler": "grid"}, "sampler"),
        ("space", "a mapping"),
    ],
)
def test_bad_search_blocks_are_recipe_errors_naming_the_field(block: object, needle: str) -> None:
    with pytest.raises(RecipeError, match=needle) as e:
        parse_spec(block, "r.yaml")
    assert "\n" not in str(e.value) and str(e.value).startswith("r.yaml: ")


def test_space_size_multiplies_choices_and_ranges() -> None:
    spec = parse_spec({"space": {"a": [1, 2, 3], "b": {"low": 1, "high": 4, "integer": True}}}, "r")
    assert spec.space_size() == 12


def test_brute_force_grid_holds_every_combination_once_in_a_seeded_order() -> None:
    from compressor.search.engine import grid

    spec = parse_spec(
        {
            "space": {
                "steps.quantize.keep_float": [[], ["first"]],
                "steps.finetune.max_steps": {"low": 10, "high": 30, "step": 10, "integer": True},
            },
            "sampler": "brute-force",
        },
        "r",
    )
    combos = grid(spec)
    assert len(combos) == 6 == spec.space_size()
    assert {(c["steps.quantize.keep_float#"], c["steps.finetune.max_steps"]) for c in combos} == {
        (i, n) for i in (0, 1) for n in (10, 20, 30)
    }
    assert combos == grid(spec)  # the seed fixes the order
    assert combos != grid(spec.model_copy(update={"seed": 1}))
