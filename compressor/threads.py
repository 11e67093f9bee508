"""One owner for CPU threads: how many, checked once, and how idle threads wait. Torch-free.

Every part of a run (torch steps, ONNX Runtime sessions, the deployable runtime) takes its
thread count from `resolve_threads`, so a step's speed never depends on which step ran
before it. Idle threads sleep instead of spinning (`OMP_WAIT_POLICY=PASSIVE`, ONNX Runtime's
`allow_spinning=0`): on a machine whose other cores are busy, a spinning thread waits for a
core it does not get and a run slows down many times more than the share of CPU it lost.
"""

from __future__ import annotations

import os

from compressor.errors import RecipeError

#: OpenMP reads this once, when the library loads: set before torch is imported
WAIT_POLICY_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_threads(threads: int | None, option: str = "threads") -> int:
    """`threads` checked against the cores available; None means all of them."""
    cores = available_cores()
    if threads is None:
        return cores
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= cores:
        raise RecipeError(
            f"{option} {threads!r}: this process may use {cores} core(s); allowed 1..{cores}"
        )
    return threads


def set_wait_policy() -> None:
    """Make idle OpenMP threads sleep (unless the user chose a policy). Call before torch loads."""
    for key, value in WAIT_POLICY_ENV.items():
        os.environ.setdefault(key, value)
