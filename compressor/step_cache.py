"""Finished expensive steps shared between runs, under their step fingerprint.

A search's trials often share a prefix of steps: the same prune and the same fine-tune, then
different quantization choices. The fine-tune is minutes; the quantization seconds. Whoever
runs many recipes over the same model opens a store with `shared_steps(folder)` around them
(a search opens <search>/cache/steps around every trial, compressor.search.trial); then a
step in SHARED_STEPS whose fingerprint (compressor.pipeline.step_fingerprint: its params,
its input's bytes, the data and the architecture) a run of the store finished before is
copied from the store instead of run again. Without a store every step runs, as before.

Only expensive steps are stored: the copy of an export or a quantization costs about what
running it costs, and a run's cheap steps then stay its own.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path

from compressor.fsutil import atomic_dir

log = logging.getLogger(__name__)

#: steps worth sharing: their cost is training time, not the bytes they write
SHARED_STEPS = ("prune", "finetune", "distill")

_FOLDER: ContextVar[Path | None] = ContextVar("step_store", default=None)


@contextlib.contextmanager
def shared_steps(folder: Path | None) -> Iterator[None]:
    """Shared steps finished inside the block are kept in / taken from `folder`."""
    token = _FOLDER.set(folder)
    try:
        yield
    finally:
        _FOLDER.reset(token)


def _entry(step: str, fingerprint: str) -> Path | None:
    folder = _FOLDER.get()
    if folder is None or step not in SHARED_STEPS:
        return None
    return folder / f"{step}-{fingerprint}"


def fetch(step: str, fingerprint: str, target: Path) -> bool:
    """Copy the stored step folder with this fingerprint to `target` (replacing what is
    there); False when the store holds none (or no store is open)."""
    entry = _entry(step, fingerprint)
    if entry is None or not entry.is_dir():
        return False
    with atomic_dir(target, overwrite=True) as tmp:
        shutil.copytree(entry, tmp, dirs_exist_ok=True)
    log.info("step %s: finished earlier with the same inputs in %s; copied", step, entry.parent)
    return True


def keep(step: str, fingerprint: str, finished: Path) -> None:
    """Store a finished step folder (once: an entry with its fingerprint is never replaced)."""
    entry = _entry(step, fingerprint)
    if entry is None or entry.exists():
        return
    # a parallel trial (Ray) may store it first: theirs is as good as ours
    with contextlib.suppress(FileExistsError), atomic_dir(entry) as tmp:
        shutil.copytree(finished, tmp, dirs_exist_ok=True)
