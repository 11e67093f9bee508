"""The end of a search: the choice, the Pareto front, the check on data.eval, the files.

Choice: among trials that met every constraint, the fastest, where latencies within
tie_tolerance of the fastest are a tie (measurement noise) broken by the smaller quality
loss; when none met them, the one closest to meeting them (summed violations relative to
each limit) as best effort, with goal_met false. The chosen recipe (best.yaml, a plain
recipe `cli.py run best.yaml` reproduces) is then run on data.eval — images no trial saw —
and goal_met also needs that run's gates to pass.

Files: trials.csv, pareto.json, pareto.png, best.yaml, search.json (goal_met and the rest).
A family search's final check is the family's verdict (members' gates and the BD-rate gates),
and its trials.csv has the trials' BD-rate columns.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

import yaml

from compressor import pipeline
from compressor.errors import CompressorError
from compressor.fsutil import atomic_file, write_text
from compressor.progress import Reporter
from compressor.recipe import parse_recipe
from compressor.search.engine import SearchResult, TrialRecord
from compressor.search.plan import SearchPlan, trial_raw
from compressor.search.spec import PARETO_AXES
from compressor.search.trial import shared_work

log = logging.getLogger(__name__)


def choose(records: list[TrialRecord], tie: float) -> tuple[TrialRecord | None, bool]:
    """The chosen trial and whether it met every constraint."""
    measured = [r for r in records if r.outcome.latency is not None]
    feasible = [r for r in measured if r.outcome.feasible]
    if feasible:
        fastest = min(r.outcome.latency or 0.0 for r in feasible)
        ties = [r for r in feasible if (r.outcome.latency or 0.0) <= fastest * (1 + tie)]
        best = min(ties, key=lambda r: (_loss(r), r.outcome.latency or 0.0, r.number))
        return best, True
    pool = measured or records
    if not pool:
        return None, False
    return min(pool, key=lambda r: (r.outcome.violation(), r.outcome.latency or 0.0)), False


def _loss(r: TrialRecord) -> float:
    return r.outcome.quality_loss if r.outcome.quality_loss is not None else float("inf")


def _axes(r: TrialRecord) -> tuple[float, ...]:
    o = r.outcome
    return (o.latency or 0.0, o.quality_loss or 0.0, o.size_mb or 0.0)


def pareto_front(records: list[TrialRecord]) -> list[TrialRecord]:
    """Measured trials no other measured trial beats on every axis (latency x loss x size);
    the feasible ones when any trial met the constraints."""
    measured = [r for r in records if r.outcome.latency is not None]
    pool = [r for r in measured if r.outcome.feasible] or measured
    front = []
    for r in pool:
        a = _axes(r)
        if not any(_dominates(_axes(o), a) for o in pool if o is not r):
            front.append(r)
    return sorted(front, key=lambda r: _axes(r))


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and a != b


def finish(
    sp: SearchPlan, work: Path, records: list[TrialRecord], reporter: Reporter
) -> SearchResult:
    chosen, feasible = choose(records, sp.spec.tie_tolerance)
    front = pareto_front(records)
    result = SearchResult(work, records, chosen, False, front)
    if chosen is not None:
        best = trial_raw(sp.raw, chosen.values, sp.spec, None, sp.holdout)
        best["name"] = f"{sp.recipe.name}-best"
        write_text(work / "best.yaml", _best_yaml(sp, chosen, best))
        result.final = (
            final_check(sp, best, work / "final", reporter) if sp.spec.final_check else {}
        )
        result.goal_met = feasible and result.final.get("passed", True)
    write_trials_csv(work / "trials.csv", records, list(sp.spec.space), family=bool(sp.members))
    summary = _summary(sp, result, feasible)
    write_text(work / "pareto.json", json.dumps(summary, indent=2, default=str) + "\n")
    write_text(work / "search.json", json.dumps(summary, indent=2, default=str) + "\n")
    plot_pareto(work / "pareto.png", records, front, chosen)
    return result


def _best_yaml(sp: SearchPlan, chosen: TrialRecord, best: dict[str, Any]) -> str:
    parse_recipe(best, "best.yaml")  # a plain recipe: it must parse as one
    head = (
        f"# chosen by `cli.py search {sp.source}` (trial {chosen.number}): "
        f"{', '.join(f'{k}={v}' for k, v in chosen.values.items())}\n"
        "# run it with: cli.py run best.yaml\n"
    )
    return head + yaml.safe_dump(best, sort_keys=False)


def final_check(sp: SearchPlan, best: dict[str, Any], out: Path, reporter: Reporter) -> dict:
    """The chosen recipe on the recipe's own images (data.eval), in <search>/final/."""
    try:
        recipe = parse_recipe(best, "best.yaml")
        resume = out.is_dir() and any(out.iterdir())
        p = pipeline.plan(recipe, out, source="best.yaml", raw=best, overwrite=resume)
        with shared_work(out.parent):  # the trials' rankings and fine-tunes: the same codec
            run = pipeline.run(p, reporter)
    except CompressorError as e:
        return {"passed": False, "error": pipeline.one_line(e)}
    checks = [a for a in run.artifacts if a.step == "validate"]
    summary = checks[-1].summary if checks else {}
    if run.members or run.failed_members:  # a family: its BD values and verdict
        summary = run.final.summary
    return {"passed": run.passed, "folder": out.name, **summary}


def _record(r: TrialRecord) -> dict[str, Any]:
    return {"number": r.number, "values": r.values, **r.outcome.to_json(), "folder": r.folder}


def _summary(sp: SearchPlan, result: SearchResult, feasible: bool) -> dict[str, Any]:
    chosen = result.chosen
    return {
        "goal_met": result.goal_met,
        "objective": sp.spec.objective,
        "multi_objective": sp.spec.multi_objective,
        "axes": list(PARETO_AXES),
        "constraints": sp.spec.constraints,
        "family": [str(m) for m in sp.members] or None,
        "trials": len(result.trials),
        "chosen": _record(chosen) if chosen else None,
        "chosen_met_constraints": feasible,
        "best_effort": chosen is not None and not feasible,
        "final_check": result.final,
        "front": [_record(r) for r in result.front],
    }


def write_trials_csv(
    path: Path, records: list[TrialRecord], space: list[str], *, family: bool = False
) -> None:
    """One row per trial; a family search adds its BD-rate columns (the candidate family vs
    the baseline family, %; its latency is the members' mean, its quality loss the worst
    member's: compressor.search.trial.measure_family)."""
    bd = ["bd_rate_psnr", "bd_rate_ms_ssim"] if family else []
    columns = ["number", *space, "latency", "latency_ms", "quality_loss", "bpp_increase", *bd]
    columns += ["size_mb", "feasible", "screened", "error", "folder"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(columns)
    for r in records:
        o = r.outcome
        values = [_cell(r.values.get(k)) for k in space]
        measures = [o.latency, o.latency_ms, o.quality_loss, o.bpp_increase]
        measures += [getattr(o, k) for k in bd] + [o.size_mb]
        flags = [o.feasible, o.screened, o.error or ""]
        w.writerow([r.number, *values, *measures, *flags, r.folder])
    write_text(path, buf.getvalue())


def _cell(value: Any) -> Any:
    """Scalars as they are, lists and mappings (e.g. keep_float sets) as JSON."""
    return json.dumps(value) if isinstance(value, list | dict) else value


def plot_pareto(
    path: Path, records: list[TrialRecord], front: list[TrialRecord], chosen: TrialRecord | None
) -> None:
    """Latency against quality loss: dominated trials grey, the front blue, the chosen red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    measured = [r for r in records if r.outcome.latency is not None]
    on_front = {r.number for r in front}
    for group, colour, label in (
        ([r for r in measured if r.number not in on_front], "0.7", "dominated / infeasible"),
        (front, "tab:blue", "Pareto front"),
    ):
        xs = [r.outcome.latency or 0.0 for r in group]
        ax.scatter(xs, [r.outcome.quality_loss or 0.0 for r in group], c=colour, s=20, label=label)
    if chosen is not None and chosen.outcome.latency is not None:
        ax.scatter(
            [chosen.outcome.latency],
            [chosen.outcome.quality_loss or 0.0],
            marker="*",
            c="tab:red",
            s=160,
            label=f"chosen (trial {chosen.number})",
        )
    ax.set_xlabel("latency, candidate / baseline (lower is faster)")
    ax.set_ylabel("PSNR drop (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
