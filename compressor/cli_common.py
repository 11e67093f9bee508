"""Helpers shared by every click command module, the torch-free runtime CLI included.

Nothing here may import torch: `python -m compressor.runtime` uses it on deploy machines.
"""

from __future__ import annotations

import functools
import sys
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import click
from pydantic import BaseModel, ValidationError

from compressor.errors import CompressorError, RecipeError

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """Turn user errors into one line on stderr and the documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CompressorError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            click.echo(f"error: option {where}: {first['msg']}", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


def options_from(model: type[BaseModel], skip: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Click options generated from a pydantic model's fields (one place for defaults/help)."""

    def decorate(fn: F) -> F:
        for name, info in reversed(list(model.model_fields.items())):
            if name in skip:
                continue
            kind = next((t for t in (bool, int, float) if t in _types(info.annotation)), str)
            fn = click.option(
                f"--{name.replace('_', '-')}",
                type=kind,
                default=None,
                help=f"{info.description or name.replace('_', ' ')} [default: {info.default}]",
            )(fn)
        return fn

    return decorate


def _types(annotation: Any) -> tuple[Any, ...]:
    return typing.get_args(annotation) or (annotation,)


def given(kwargs: dict[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k in model.model_fields and v is not None}


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
