"""Search trials on a Ray cluster (`cli.py search RECIPE --ray auto|HOST:PORT`).

Optuna's ask/tell drives Ray tasks (not ray.tune with OptunaSearch): the study already lives
in <search>/search.db and a search resumes from it; ray.tune would keep a second experiment
state with its own resume. The engine asks up to `width` new trials (the cluster's CPUs),
and this runner, per batch:

1. runs every trial's untimed steps (those before its first validate / evaluate step) as
   Ray tasks in parallel, one CPU each and the trial's threads pinned to 1;
2. then, here in the driver and one trial at a time, resumes each trial in its folder: the
   finished steps are kept (same fingerprints) and only the timed steps run, so no two
   trials time each other and nothing of the search runs while one is timed;
3. hands the outcomes back in trial-number order: the engine tells them in that order.

A screened trial (search.screen) takes two rounds: its one-shot recipe, then (if the screen
lets it through) its full one. A family trial runs here whole. Where a worker's part fails,
that trial runs here as in-process (same error text, or a result after all).

Ray runs tasks in other processes, possibly on other machines: they get paths and plain
data. The search folder, the model and the images must be at the same paths on every node
(one machine, or a shared filesystem), and so must this checkout: workers import compressor
from it (PYTHONPATH). A worker that cannot see the search folder stops the search with an
error naming its host.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import compressor
from compressor.errors import CompressorError
from compressor.families.members import is_family
from compressor.pipeline import one_line
from compressor.progress import NullReporter, Reporter
from compressor.search.engine import Pending, run_stage, stage_result, trial_stages
from compressor.search.plan import SearchPlan
from compressor.search.trial import Outcome, run_trial

log = logging.getLogger(__name__)

#: steps that time codecs: they run in the driver, one trial at a time
TIMED_STEPS = ("validate", "evaluate")
#: how long a Ray head's port may take to accept a connection before it counts as dead
CONNECT_TIMEOUT_S = 5.0
#: what a worker answers when it cannot see the search folder (then its host name)
UNSEEN = "unseen:"
#: the checkout workers import compressor from
ROOT = Path(compressor.__file__).resolve().parent.parent


def init_ray(address: str | None = None, **kwargs: Any) -> None:
    """ray.init with what the workers need: this checkout on PYTHONPATH, no dashboard, no
    worker logs in the driver's output. Ray's `uv run` hook (it packs the working folder
    into every job) stays off unless RAY_ENABLE_UV_RUN_RUNTIME_ENV says otherwise."""
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    import ray

    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    ray.init(
        address=address,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
        **kwargs,
    )


@contextlib.contextmanager
def connect(address: str) -> Iterator[int]:
    """Reach the cluster (`auto`: the one this machine runs, else a new local one) and give
    its CPU count; CompressorError (one line naming the address) when it does not answer.
    A Ray already initialised in this process is used as it is, and left running."""
    if address != "auto":
        check_answers(address)
    import ray

    owned = not ray.is_initialized()
    if owned:
        try:
            init_ray(None if address == "auto" else address)
        except Exception as e:  # ConnectionError, TimeoutError, RuntimeError: all one line
            raise CompressorError(f"--ray {address}: Ray did not connect: {one_line(e)}") from None
    try:
        yield max(1, int(ray.cluster_resources().get("CPU", 1)))
    finally:
        if owned:
            ray.shutdown()


def check_answers(address: str) -> None:
    """A TCP connection to the head's port within CONNECT_TIMEOUT_S: ray.init itself waits
    minutes on an address where nothing listens."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise CompressorError(
            f"--ray {address!r}: give auto or HOST:PORT, the address `ray start --head` printed"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT_S).close()
    except OSError as e:
        why = e.strerror or str(e) or type(e).__name__
        raise CompressorError(
            f"--ray {address}: no Ray head answers there ({why}); start one with "
            "`ray start --head` or pass --ray auto"
        ) from None


def untimed(raw: dict[str, Any]) -> dict[str, Any] | None:
    """The trial recipe up to its first timed step, on one thread; None when that is no
    step (or a family, which runs here whole)."""
    steps = raw["steps"]
    first = next((i for i, s in enumerate(steps) if next(iter(s)) in TIMED_STEPS), len(steps))
    if first == 0 or is_family(raw["model"]):
        return None
    return {**raw, "steps": steps[:first], "threads": 1}


def prepare(raw: dict[str, Any], folder: str, objective: str, work: str) -> str | None:
    """A Ray task: run the untimed recipe `raw` into `folder`. None when it finished, else
    why not (one line), or UNSEEN + host when this node cannot see the search folder."""
    if not Path(work).is_dir():
        return UNSEEN + socket.gethostname()
    try:
        # it stops before any validate step: the 'no validate' outcome is expected
        run_trial(raw, Path(folder), objective, NullReporter())
    except Exception as e:  # the driver runs this trial itself, as in-process would
        return one_line(e)
    return None


class RayTrials:
    """The engine's runner on Ray: untimed steps in parallel, timed steps here in turn."""

    def __init__(self, sp: SearchPlan, reporter: Reporter, width: int) -> None:
        import ray

        self.sp, self.reporter, self.width = sp, reporter, width
        self.task = ray.remote(num_cpus=1, max_retries=0)(prepare)

    def run(self, batch: list[Pending], work: Path) -> list[Outcome]:
        stages = [trial_stages(p.raw, p.rel, self.sp) for p in batch]
        outcomes: list[Outcome | None] = [None] * len(batch)
        step = 0
        while live := [i for i, o in enumerate(outcomes) if o is None]:
            self._prepare([stages[i][step] for i in live], work)
            for i in live:  # timed one trial at a time, in trial-number order
                stage, target = stages[i][step]
                outcome = run_stage(stage, work / target, self.sp, self.reporter)
                outcomes[i] = stage_result(outcome, step, len(stages[i]), self.sp)
            step += 1
        return [o for o in outcomes if o is not None]

    def _prepare(self, jobs: list[tuple[dict[str, Any], str]], work: Path) -> None:
        """The jobs' untimed steps as Ray tasks; returns when every one has ended."""
        import ray

        refs = []
        for stage, target in jobs:
            part = untimed(stage)
            folder, objective = str(work / target), self.sp.spec.objective
            refs.append(
                None if part is None else self.task.remote(part, folder, objective, str(work))
            )
        for (_, target), ref in zip(jobs, refs, strict=True):
            if ref is None:
                continue
            try:
                error = ray.get(ref)
            except ray.exceptions.RayError as e:  # the worker died
                error = one_line(e)
            if error is not None and error.startswith(UNSEEN):
                raise CompressorError(
                    f"Ray worker {error[len(UNSEEN) :]} does not see the search folder {work}: "
                    "every node needs the search folder, model and images at the same paths "
                    "(a shared filesystem)"
                )
            if error is not None:
                log.warning("trial %s: its Ray task failed (%s); running it here", target, error)
