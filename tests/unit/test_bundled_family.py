"""The bundled four-point family (compressor/assets/family/): what the family recipes glob."""

from __future__ import annotations

import pytest
import torch
import yaml

from compressor import checkpoint
from compressor.train import trained_lambda
from tests.conftest import REPO

FAMILY = sorted((REPO / "compressor" / "assets" / "family").glob("*.pt"))
#: CompressAI's lambda per quality (MSE): the family's operating points
LAMBDAS = {1: 0.0018, 2: 0.0035, 3: 0.0067, 4: 0.0130}


def test_the_family_recipes_glob_four_members_within_60_mb() -> None:
    for recipe in sorted((REPO / "recipes").glob("family-*.yaml")):
        pattern = yaml.safe_load(recipe.read_text())["model"]
        assert sorted(REPO.glob(pattern)) == FAMILY, recipe.name
    assert [p.stem for p in FAMILY] == [f"bmshj2018-hyperprior-q{q}" for q in LAMBDAS]
    assert sum(p.stat().st_size for p in FAMILY) <= 60e6


@pytest.mark.parametrize("path", FAMILY, ids=[p.stem for p in FAMILY])
def test_each_member_is_half_stored_and_trained_at_its_lambda(path) -> None:  # type: ignore[no-untyped-def]
    stored = torch.load(path, weights_only=True)
    assert stored["state_dict"]["g_a.0.weight"].dtype == torch.float16
    model = checkpoint.load(path)
    quality = int(model.meta["quality"])  # type: ignore[attr-defined]
    assert trained_lambda(model) == pytest.approx(LAMBDAS[quality])
    assert model.config == {"N": 128, "M": 192}
    history = model.meta["history"]  # type: ignore[attr-defined]
    assert history[-1]["step"] >= 500  # beyond the bundled q2 model it was fine-tuned from
