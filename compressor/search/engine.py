"""run_search: the Optuna study over a SearchPlan, resumable, then the report and the check.

The study lives in <search>/search.db (Optuna RDB storage, sqlite, one fixed study name,
load_if_exists): a rerun with --resume continues the same study. A trial the killed search
left RUNNING is marked failed and its parameters are asked again first; they resume in the
same trial folder (the content-hash cache maps them there), so no finished work repeats.
A parameter set the sampler proposes again is answered from the cache without running, and
does not count against max_trials.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from compressor.errors import RecipeError
from compressor.fsutil import write_text
from compressor.pipeline import one_line
from compressor.progress import NullReporter, Reporter
from compressor.recipe import parse_recipe
from compressor.runfolder import RunFolder
from compressor.search.plan import SPEC_FILE, SearchPlan, spec_hash, trial_raw
from compressor.search.spec import Range, SearchSpec
from compressor.search.trial import Cache, Outcome, cache_key, run_trial

log = logging.getLogger(__name__)

STUDY = "search"
#: the expensive steps a screen leaves out of a trial's one-shot run
SCREENED_STEPS = ("finetune",)
#: the study's user attribute holding the seconds its runs spent searching (max_minutes)
ELAPSED = "elapsed_s"
#: consecutive proposals of parameter sets already measured before the space counts as done
MAX_REPEATS = 25


@dataclass
class TrialRecord:
    number: int
    values: dict[str, Any]
    outcome: Outcome
    folder: str


@dataclass
class SearchResult:
    run_dir: Path
    trials: list[TrialRecord]
    chosen: TrialRecord | None
    goal_met: bool
    front: list[TrialRecord] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)


def run_search(
    sp: SearchPlan, reporter: Reporter | None = None, ray: str | None = None
) -> SearchResult:
    """Run the search in its run folder (compressor.runfolder's rules), write the report.

    `ray` (None: in-process) is a Ray cluster's address or "auto": the trials' untimed
    steps run there as Ray tasks, their timing here (compressor.search.ray_trials); the
    cluster is reached before the run folder is touched, so a dead address changes nothing."""
    from compressor.search.report import finish

    reporter = reporter or NullReporter()
    with contextlib.ExitStack() as stack:
        runner: Runner | None = None
        if ray is not None:
            from compressor.search.ray_trials import RayTrials, connect

            runner = RayTrials(sp, reporter, stack.enter_context(connect(ray)))
        folder = RunFolder.open(sp.run_dir, sp.mode, sp.recipe.name)
        with folder.guarded():
            records = _study(sp, folder, reporter, runner)
            result = finish(sp, folder.work, records, reporter)
    folder.finish("complete" if result.goal_met else "gate-failed")
    result.run_dir = sp.run_dir
    return result


def open_study(sp: SearchPlan, work: Path) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{work / 'search.db'}")
    # constraints reach the samplers through Trial.set_constraint (_tell): Optuna 5's way
    sampler: Any
    directions: list[Any] = ["minimize"] * (3 if sp.spec.multi_objective else 1)
    if sp.spec.sampler == "brute-force":
        # Optuna's BruteForceSampler calls study.stop() after the last combination, which
        # raises outside study.optimize: the grid is enqueued instead (_enqueue_next)
        sampler = optuna.samplers.RandomSampler(seed=sp.spec.seed)
    elif sp.spec.multi_objective:
        sampler = optuna.samplers.NSGAIISampler(seed=sp.spec.seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=sp.spec.seed)
    study = optuna.create_study(
        study_name=STUDY,
        storage=storage,
        sampler=sampler,
        directions=directions,
        load_if_exists=True,
    )
    write_text(work / SPEC_FILE, spec_hash(sp) + "\n")  # plan_search checks it on --resume
    return study


def _recover(study: Any) -> None:
    """Trials a killed search left RUNNING: failed now, their parameters asked again next."""
    from optuna.trial import TrialState

    queued = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    waiting = [t.system_attrs.get("fixed_params") for t in queued]
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
        if t.params not in waiting:  # (skip_if_exists would also match the failed trial)
            study.enqueue_trial(t.params)
            waiting.append(t.params)


def suggest(trial: Any, spec: SearchSpec) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for path, choices in spec.space.items():
        if isinstance(choices, Range):
            values[path] = _suggest_range(trial, path, choices)
        elif all(isinstance(c, bool | int | float | str) or c is None for c in choices):
            values[path] = trial.suggest_categorical(path, choices)
        else:  # lists or mappings (e.g. keep_float sets): Optuna sees their index
            values[path] = choices[trial.suggest_categorical(f"{path}#", list(range(len(choices))))]
    return values


def _suggest_range(trial: Any, path: str, r: Range) -> float | int:
    if r.integer:
        step = int(r.step) if r.step else 1
        return int(trial.suggest_int(path, int(r.low), int(r.high), step=step, log=r.log))
    return float(trial.suggest_float(path, r.low, r.high, step=r.step, log=r.log))


@dataclass
class Pending:
    """A trial asked for and due to run: its recipe, folder (relative) and cache key."""

    trial: Any
    raw: dict[str, Any]
    rel: str
    key: str
    values: dict[str, Any]


class Runner(Protocol):
    """Runs a batch of trials to their outcomes, in the batch's order."""

    width: int

    def run(self, batch: list[Pending], work: Path) -> list[Outcome]: ...


class InProcess:
    """The embedded default: one trial at a time in this process."""

    width = 1

    def __init__(self, sp: SearchPlan, reporter: Reporter) -> None:
        self.sp, self.reporter = sp, reporter

    def run(self, batch: list[Pending], work: Path) -> list[Outcome]:
        return [_screened_run(p.raw, work, p.rel, self.sp, self.reporter) for p in batch]


def _study(
    sp: SearchPlan, folder: RunFolder, reporter: Reporter, runner: Runner | None = None
) -> list[TrialRecord]:
    """Ask up to runner.width new trials, run them (in-process: one; on Ray: in parallel),
    tell their outcomes in trial-number order, ask again. Cache hits and invalid
    combinations are told as they are asked; a proposal repeating a trial of the same batch
    waits for that trial's outcome (in-process it would have been a cache hit)."""
    from optuna.trial import TrialState

    runner = runner or InProcess(sp, reporter)
    work = folder.work
    study = open_study(sp, work)
    _recover(study)
    cache = Cache(work / "cache")
    sources = [s for s in (sp.images, sp.recipe.data.train, sp.recipe.data.calibration) if s]
    # max_minutes is the whole search's: a resumed one has what the earlier runs left of it
    spent, started = float(study.user_attrs.get(ELAPSED, 0.0)), time.monotonic()
    deadline = started + sp.spec.max_minutes * 60 - spent if sp.spec.max_minutes else None
    ran = sum(1 for t in study.get_trials(deepcopy=False) if t.user_attrs.get("counted"))
    state = {"repeats": 0, "done": False}
    reporter.start("searching", sp.spec.max_trials)
    while not state["done"] and ran < sp.spec.max_trials and state["repeats"] < MAX_REPEATS:
        batch: list[Pending] = []
        held: list[tuple[Any, str]] = []
        while len(batch) < min(runner.width, sp.spec.max_trials - ran):
            if state["repeats"] >= MAX_REPEATS:
                break
            if deadline is not None and time.monotonic() > deadline:
                log.info("search: max_minutes reached after %d trials", ran + len(batch))
                state["done"] = True
                break
            if sp.spec.sampler == "brute-force" and not _enqueue_next(study, sp.spec):
                state["done"] = True  # every combination measured
                break
            _ask(study, sp, cache, sources, folder, batch, held, state)
            if sp.spec.space_size() <= _distinct(study):
                state["done"] = True  # every parameter set measured: nothing left to learn
                break
        for pending, outcome in zip(batch, runner.run(batch, work), strict=True):
            entry = {"folder": pending.rel, "values": pending.values}
            cache.put(pending.key, {**entry, "outcome": outcome.to_json()})
            pending.trial.set_user_attr("counted", True)
            ran += 1
            reporter.advance(1, trial=pending.trial.number)
            _tell(study, pending.trial, outcome, sp.spec)
        for trial, key in held:
            _tell(study, trial, Outcome.from_json((cache.get(key) or {})["outcome"]), sp.spec)
        study.set_user_attr(ELAPSED, spent + time.monotonic() - started)
    reporter.finish()
    return _records(study, TrialState)


def _ask(
    study: Any,
    sp: SearchPlan,
    cache: Cache,
    sources: list[str],
    folder: RunFolder,
    batch: list[Pending],
    held: list[tuple[Any, str]],
    state: dict[str, Any],
) -> None:
    """Ask one trial: answered now (cache, invalid), held (repeats one in `batch`) or
    added to `batch` to run."""
    trial = study.ask()
    values = suggest(trial, sp.spec)
    raw = trial_raw(sp.raw, values, sp.spec, sp.images, sp.holdout)
    raw["name"] = f"{sp.recipe.name}-trial"
    key = cache_key(raw, sp.model, sources)
    entry = cache.get(key)
    trial.set_user_attr("values", values)
    # folders are relative to the search folder: a replacing search works in a staging
    # folder that is renamed at the end
    rel = str(entry["folder"]) if entry else f"trials/{trial.number:04d}"
    trial.set_user_attr("folder", rel)
    first = next((p for p in batch if p.key == key), None)
    if first is not None:
        trial.set_user_attr("folder", first.rel)
        trial.set_user_attr("cached", True)
        held.append((trial, key))
        state["repeats"] += 1
    elif entry is not None and entry.get("outcome") is not None:
        trial.set_user_attr("cached", True)
        state["repeats"] += 1
        _tell(study, trial, Outcome.from_json(entry["outcome"]), sp.spec)
    elif (invalid := _invalid(raw)) is not None:  # choices valid alone, not together
        outcome = Outcome(error=invalid)
        cache.put(key, {"folder": rel, "values": values, "outcome": outcome.to_json()})
        state["repeats"] += 1
        _tell(study, trial, outcome, sp.spec)
    else:
        state["repeats"] = 0
        cache.put(key, {"folder": rel, "values": values, "outcome": None})
        folder.steps.append(rel)
        folder.mark("running")
        batch.append(Pending(trial, raw, rel, key, values))


def grid(spec: SearchSpec) -> list[dict[str, Any]]:
    """Every combination of a finite space as Optuna parameters, in a seeded order."""
    axes: list[list[tuple[str, Any]]] = []
    for path, choices in spec.space.items():
        if isinstance(choices, Range):
            step = choices.step or 1
            count = int(choices.size())
            values: list[Any] = [choices.low + i * step for i in range(count)]
            axes.append([(path, int(v) if choices.integer else v) for v in values])
        elif all(isinstance(c, bool | int | float | str) or c is None for c in choices):
            axes.append([(path, c) for c in choices])
        else:
            axes.append([(f"{path}#", i) for i in range(len(choices))])
    combos = [dict(c) for c in itertools.product(*axes)]
    random.Random(spec.seed).shuffle(combos)
    return combos


def _enqueue_next(study: Any, spec: SearchSpec) -> bool:
    """Queue the first combination no trial has asked for yet; False when none is left."""
    asked = [t.system_attrs.get("fixed_params", t.params) for t in study.get_trials(deepcopy=False)]
    for params in grid(spec):
        if params not in asked:
            study.enqueue_trial(params)
            return True
    return False


def _invalid(raw: dict[str, Any]) -> str | None:
    """Why a combination of choices makes no valid recipe (it is recorded, not run)."""
    try:
        parse_recipe(raw, "trial")
    except RecipeError as e:
        return one_line(e)
    return None


def _screened_run(
    raw: dict[str, Any], work: Path, rel: str, sp: SearchPlan, reporter: Reporter
) -> Outcome:
    """Cheap first: with search.screen set and fine-tune steps in the recipe, the trial runs
    one-shot (those steps left out) in <rel>-screen first; only a trial whose one-shot PSNR
    drop is within screen.max_psnr_drop_db goes on to the full recipe, fine-tuning included."""
    stages = trial_stages(raw, rel, sp)
    for i, (stage, target) in enumerate(stages):
        outcome = run_stage(stage, work / target, sp, reporter)
        if (final := stage_result(outcome, i, len(stages), sp)) is not None:
            return final
    raise AssertionError("the last stage always gives the trial's outcome")


def trial_stages(raw: dict[str, Any], rel: str, sp: SearchPlan) -> list[tuple[dict, str]]:
    """The recipes a trial runs, in order, with their folders: [(one-shot, <rel>-screen),
    (full, <rel>)] when it is screened, else [(full, <rel>)]."""
    one_shot = without_steps(raw, SCREENED_STEPS)
    if sp.spec.screen is None or one_shot is None or _invalid(one_shot) is not None:
        return [(raw, rel)]
    return [(one_shot, f"{rel}-screen"), (raw, rel)]


def stage_result(outcome: Outcome, index: int, count: int, sp: SearchPlan) -> Outcome | None:
    """The trial's outcome after stage `index` of `count`, or None: go on to the next."""
    if index == count - 1:
        return outcome
    assert sp.spec.screen is not None  # only a screened trial has two stages
    if outcome.error is not None or screened_out(outcome, sp.spec.screen.max_psnr_drop_db):
        outcome.screened = True
        return outcome
    return None


def without_steps(raw: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any] | None:
    """The recipe without the named steps; None when it has none of them."""
    kept = [s for s in raw["steps"] if next(iter(s)) not in names]
    return None if len(kept) == len(raw["steps"]) else {**raw, "steps": kept}


def screened_out(outcome: Outcome, limit: float) -> bool:
    loss = outcome.quality_loss
    return loss is None or loss > limit


def run_stage(raw: dict[str, Any], target: Path, sp: SearchPlan, reporter: Reporter) -> Outcome:
    """One trial; a failing trial is recorded (one line), never the end of the search."""
    try:
        return run_trial(raw, target, sp.spec.objective, reporter, sp.spec.confidence)
    except Exception as e:  # one bad trial (bad input or a crash) must not cost the search
        log.warning("trial %s failed: %s", target.name, one_line(e))
        return Outcome(error=one_line(e))


def _tell(study: Any, trial: Any, outcome: Outcome, spec: SearchSpec) -> None:
    from optuna.trial import TrialState

    trial.set_user_attr("outcome", outcome.to_json())
    for gate, value in outcome.constraints().items():
        trial.set_constraint(gate, value)
    if outcome.error is not None or outcome.latency is None:
        study.tell(trial, state=TrialState.FAIL)
    elif outcome.screened and not spec.multi_objective:
        trial.report(outcome.latency, step=0)  # TPE learns from a pruned trial's last value
        study.tell(trial, state=TrialState.PRUNED)
    elif outcome.screened:
        study.tell(trial, state=TrialState.FAIL)  # NSGA-II takes no intermediate values
    elif spec.multi_objective:
        loss = outcome.quality_loss if outcome.quality_loss is not None else 0.0
        study.tell(trial, [outcome.latency, loss, outcome.size_mb or 0.0])
    else:
        study.tell(trial, outcome.latency)


def _distinct(study: Any) -> int:
    seen = {json.dumps(t.user_attrs.get("values"), sort_keys=True) for t in study.trials}
    return len(seen)


def _records(study: Any, states: Any) -> list[TrialRecord]:
    """Every trial that ran to an outcome, in order: the killed ones are left out, and so
    are proposals answered from the cache (they ran as the earlier trial they repeat)."""
    out = []
    for t in study.get_trials(deepcopy=False):
        if "outcome" not in t.user_attrs or t.state == states.RUNNING:
            continue
        if t.user_attrs.get("cached"):
            continue
        outcome = Outcome.from_json(t.user_attrs["outcome"])
        folder = str(t.user_attrs.get("folder", ""))
        out.append(TrialRecord(t.number, t.user_attrs["values"], outcome, folder))
    return out
