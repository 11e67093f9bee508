"""Click commands: parse, call the library, render. No logic of its own lives here."""

from __future__ import annotations

import functools
import logging
import sys
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import click
from pydantic import BaseModel, ValidationError

from compressor.errors import CompressorError

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("compressor")


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


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """compressor: prune, quantize, distill, export and validate learned image codecs.

    Exit codes: 0 ok, 1 a validation gate failed, 2 bad input.
    """
    from rich.logging import RichHandler

    from compressor.rich_ui import console

    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(
        level=level, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)]
    )


def _register_commands() -> None:
    # The command modules decorate `main`, so they are imported once it exists.
    from compressor import cli_commands, cli_deploy, cli_prune  # noqa: F401


_register_commands()
