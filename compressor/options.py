"""Parsing of compact KEY=VALUE option text ('a=1,b=2'), shared by the CLI and recipe configs.

Torch-free library code: the CLI and the config models both call it, so it lives below both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from compressor.errors import RecipeError


def parse_pairs(
    text: str,
    option: str,
    form: str,
    example: str,
    cast: Callable[[str], Any] = float,
    names: str = "",
) -> dict[str, Any]:
    """'a=1,b=2' -> {'a': cast('1'), 'b': cast('2')}; a RecipeError naming the option if not."""
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        try:
            out[key.strip()] = cast(value.strip())
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            hint = f"; names: {names}" if names else ""
            raise RecipeError(f"{option} {text!r}: expected {form} pairs like {example}{hint}")
    return out
