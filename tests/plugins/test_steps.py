"""Every registered pipeline step: strict params and defaults that validate."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from compressor.steps import STEPS


@pytest.mark.parametrize("name", STEPS.names())
def test_step_params_reject_unknown_keys(name: str) -> None:
    params = STEPS.get(name).params
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        params.model_validate({"no_such_field": 1})


@pytest.mark.parametrize("name", STEPS.names())
def test_step_example_params_validate(name: str) -> None:
    spec = STEPS.get(name)
    spec.params.model_validate(spec.example)
