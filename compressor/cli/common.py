"""Helpers shared by every click command module, the torch-free runtime CLI included.

Nothing here may import torch: `python -m compressor.runtime` uses it on deploy machines.
"""

from __future__ import annotations

import functools
import importlib
import sys
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import click
from pydantic import BaseModel, ValidationError

from compressor.errors import CompressorError

F = TypeVar("F", bound=Callable[..., Any])


#: the documented exit codes (README): a script can tell each outcome apart
EXIT_OK, EXIT_GATE_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def handle_errors(fn: F) -> F:
    """Turn user errors into one line on stderr and the documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            # click would report Ctrl-C as exit 1, the code of a failed gate
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except CompressorError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            click.echo(f"error: option {where}: {first['msg']}", err=True)
            sys.exit(EXIT_BAD_INPUT)

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


class LazyGroup(click.Group):
    """A click group whose commands are imported only when run (or listed by --help).

    `lazy` maps a command name to "module:attribute". The deploy commands (`encode`, `decode`)
    live in torch-free modules, so `cli.py encode` starts as fast as the runtime alone; the
    torch commands pay for torch only when they run. Ctrl-C anywhere, imports included,
    exits 130.
    """

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            module, _, attr = self.lazy[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attr)
            if not isinstance(command, click.Command):
                raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
            return command
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)


def resume_options(fn: F) -> F:
    """--resume / --overwrite of the commands that write a run folder."""
    fn = click.option(
        "--overwrite",
        is_flag=True,
        help="Replace the output folder if an earlier run made it (never a folder of yours); "
        "the old run stays until the new one finished.",
    )(fn)
    return click.option(
        "--resume",
        is_flag=True,
        help="Continue the run in the output folder: keep the steps that finished with the "
        "same inputs, run the rest.",
    )(fn)
