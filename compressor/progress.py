"""Progress reporting without printing: library code calls a Reporter, the CLI renders it."""

from __future__ import annotations

from typing import Protocol


class Reporter(Protocol):
    def start(self, description: str, total: int | None) -> None: ...

    def advance(self, n: int = 1, **fields: float | str) -> None: ...

    def finish(self) -> None: ...


class NullReporter:
    def start(self, description: str, total: int | None) -> None:
        pass

    def advance(self, n: int = 1, **fields: float | str) -> None:
        pass

    def finish(self) -> None:
        pass
