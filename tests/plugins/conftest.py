"""The plugin tests' one parameter: every registered model arch, plus the test-only family.

`arch` is module-scoped so the test-only family (tests/plugins/tiny_family.py) is registered
while exactly its own tests of a module run and removed before any other family's test:
pytest groups a module's tests by the value of a module-scoped parameter.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from compressor.models import MODELS
from tests.plugins import tiny_family

#: every shipped arch, then the family registered only here
ARCHS = [*MODELS.names(), tiny_family.ARCH]


@pytest.fixture(scope="module", params=ARCHS)
def arch(request: pytest.FixtureRequest) -> Iterator[str]:
    name: str = request.param
    if name != tiny_family.ARCH:
        yield name
        return
    assert name not in MODELS  # registered by nobody else: the fixture owns it
    with tiny_family.registered():
        yield name
    assert name not in MODELS
