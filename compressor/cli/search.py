"""`cli.py search RECIPE`: the fastest codec within the recipe's RD budget (its search: block)."""

from __future__ import annotations

from pathlib import Path

import click

from compressor.cli.common import handle_errors, resume_options


@click.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Search folder [default: exported/<name>-search].",
)
@click.option("--max-trials", type=int, default=None, help="Override search.max_trials.")
@click.option(
    "--max-minutes",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Override search.max_minutes (the whole search's: --resume gets what is left).",
)
@click.option(
    "--ray",
    "ray_address",
    metavar="auto|HOST:PORT",
    default=None,
    help="Run the trials on a Ray cluster (auto: this machine's, else a new local one; "
    "HOST:PORT: the head's). Timed steps still run here, one trial at a time.",
)
@resume_options
@handle_errors
def search(
    recipe: Path,
    output: Path | None,
    max_trials: int | None,
    max_minutes: float | None,
    ray_address: str | None,
    resume: bool,
    overwrite: bool,
) -> None:
    """Search the recipe's `search.space` for the fastest codec that meets its constraints.

    Every trial is a plain recipe run in <search>/trials/NNNN/ on the search images (never
    data.eval); the chosen one is then run on data.eval in <search>/final/. Writes
    trials.csv, pareto.json, pareto.png, best.yaml (`cli.py run best.yaml` reproduces it)
    and search.json. --resume continues a killed search without repeating a finished trial.
    --ray: each trial's untimed steps run as Ray tasks (one CPU each); the search folder,
    model and images must be at the same paths on every node.
    Exit 1 when no trial met the constraints (the best effort is still reported)."""
    from compressor.errors import GateFailed
    from compressor.rich_ui import RichReporter, table
    from compressor.rich_ui import out as stdout
    from compressor.search import load_search, run_search

    plan = load_search(recipe, output, resume=resume, overwrite=overwrite)
    if max_trials is not None:
        plan.spec = plan.spec.model_copy(update={"max_trials": max(1, max_trials)})
    if max_minutes is not None:
        plan.spec = plan.spec.model_copy(update={"max_minutes": max_minutes})
    result = run_search(plan, RichReporter(), ray=ray_address)
    rows = [
        [
            str(r.number),
            ", ".join(f"{k.split('.', 2)[-1]}={v}" for k, v in r.values.items()),
            _num(r.outcome.latency),
            _num(r.outcome.quality_loss),
            "yes" if r.outcome.feasible else (r.outcome.error or "no")[:60],
        ]
        for r in result.trials
    ]
    columns = ["trial", "choices", "latency x", "PSNR drop", "meets"]
    stdout.print(table(f"search {plan.recipe.name}", columns, rows))
    chosen = result.chosen
    if chosen is not None:
        kind = "chosen" if result.goal_met else "best effort"
        stdout.print(f"{kind}: trial {chosen.number}; recipe {result.run_dir / 'best.yaml'}")
    stdout.print(f"goal_met: {str(result.goal_met).lower()}")
    stdout.print(f"search: {result.run_dir}")
    if not result.goal_met:
        raise GateFailed(f"no trial met the constraints; see {result.run_dir}/search.json")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"
