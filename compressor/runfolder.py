"""Run folders that cannot hurt: made by us, marked as ours, replaced only when asked.

A run folder carries `run.json` (tool, recipe, status, steps done), written atomically at
the start and after every step; its status becomes `complete` (or `gate-failed`) last, so a
folder whose run died says `running` / `failed` / `interrupted` and never looks finished.

The toolkit writes into a folder only when it is absent, empty, or marked as ours; it
replaces a marked folder only with `overwrite`, and then only after the new run finished
(the new run works in a hidden sibling folder, so a complete run survives a later run that
fails). A folder without the mark is refused, never emptied.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import compressor
from compressor.errors import RecipeError
from compressor.fsutil import temp_dir, write_text

MARK = "run.json"
TOOL = "compressor"
#: what a run folder's status says; only the last two mean the run finished
STATUSES = ("running", "failed", "interrupted", "gate-failed", "complete")
_STAGING = ".staging-"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def read_mark(folder: Path) -> dict[str, Any] | None:
    """The run manifest of `folder` if it is one of ours, else None."""
    try:
        data = json.loads((folder / MARK).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("tool") != TOOL:
        return None
    return data


def check_output(folder: Path, *, resume: bool, overwrite: bool) -> str:
    """How a run may use `folder`: 'new', 'resume' or 'replace'; RecipeError if not at all.

    Touches nothing: plan() calls it before any weights load or any folder changes.
    """
    if resume and overwrite:
        raise RecipeError(
            "--resume and --overwrite exclude each other: continue a run or replace it"
        )
    if not folder.exists():
        return "new"
    if not folder.is_dir():
        raise RecipeError(f"output {folder} is a file, not a folder; choose a folder for the run")
    if not any(folder.iterdir()):
        return "new"
    mark = read_mark(folder)
    if mark is None:
        raise RecipeError(
            f"output {folder} is a folder with files that no compressor run made (it has no "
            f"{MARK}); refusing to write into it: choose a new or empty folder"
        )
    if resume:
        return "resume"
    if overwrite:
        return "replace"
    raise RecipeError(
        f"output {folder} holds a run of recipe {mark.get('recipe')!r} (status "
        f"{mark.get('status')}); pass --resume to continue it or --overwrite to replace it"
    )


@dataclass
class RunFolder:
    """The folder a run writes (`work`) and where it ends up (`final`)."""

    final: Path
    work: Path
    recipe: str
    steps: list[str] = field(default_factory=list)
    started: str = field(default_factory=_now)
    #: a family run's members that failed, with their one-line errors
    failed_members: dict[str, str] = field(default_factory=dict)

    @classmethod
    def open(cls, final: Path, mode: str, recipe: str) -> RunFolder:
        final = Path(final)
        if mode == "replace":
            final.parent.mkdir(parents=True, exist_ok=True)
            prefix = f".{final.name}{_STAGING}"
            work = temp_dir(final.parent, prefix)
        else:
            final.mkdir(parents=True, exist_ok=True)
            work = final
        _remove_stale(final.parent, final.name)
        folder = cls(final, work, recipe)
        if mode == "resume":
            _remove_partials(work)
        folder.mark("running")
        return folder

    def mark(self, status: str, error: str | None = None) -> None:
        assert status in STATUSES
        data = {
            "tool": TOOL,
            "version": compressor.__version__,
            "recipe": self.recipe,
            "status": status,
            "started": self.started,
            "updated": _now(),
            "steps": self.steps,
            **({"failed_members": self.failed_members} if self.failed_members else {}),
            **({"error": error} if error else {}),
        }
        write_text(self.work / MARK, json.dumps(data, indent=2) + "\n")

    def finish(self, status: str) -> None:
        """Record the final status; a replacing run takes the place of the old one now."""
        self.mark(status)
        if self.work == self.final:
            return
        trash = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.old-", dir=self.final.parent))
        os.replace(self.final, trash / "run")
        os.replace(self.work, self.final)
        shutil.rmtree(trash, ignore_errors=True)
        self.work = self.final

    @contextlib.contextmanager
    def guarded(self) -> Iterator[RunFolder]:
        """Whatever stops the run early is recorded (interrupted / failed) before it goes on."""
        try:
            yield self
        except KeyboardInterrupt:
            self.abandon("interrupted", "interrupted by the user")
            raise
        except BaseException as e:
            self.abandon("failed", f"{type(e).__name__}: {e}"[:500])
            raise

    def abandon(self, status: str, error: str) -> None:
        """The run stopped early: a replacing run is dropped (the old run stays untouched);
        a run in its own folder keeps its finished steps for --resume and says why it stopped."""
        if self.work != self.final:
            shutil.rmtree(self.work, ignore_errors=True)
            return
        self.mark(status, error)


def _remove_partials(folder: Path, depth: int = 1) -> None:
    """Half-written step folders of a run that was killed (atomic_dir's temporaries), in
    the run folder and in a family's member folders."""
    for child in folder.iterdir():
        if not child.is_dir():
            continue
        if child.name.startswith(".") and child.name.endswith(".partial"):
            shutil.rmtree(child, ignore_errors=True)
        elif depth > 0 and not child.name.startswith("."):
            _remove_partials(child, depth - 1)


def _remove_stale(parent: Path, name: str) -> None:
    """Staging folders of earlier replacing runs of this output that were killed."""
    for child in parent.glob(f".{name}{_STAGING}*"):
        if child.is_dir() and read_mark(child) is not None:
            shutil.rmtree(child, ignore_errors=True)
