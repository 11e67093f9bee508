"""The search against the whole grid: does TPE's pick within K trials match the fastest
feasible codec of every combination, and what does each cost?

A skeleton that runs only with explicit flags (a real search is minutes to hours):

    OMP_NUM_THREADS=1 uv run python bench/search.py --recipe recipes/search-int8.yaml \
        --output /tmp/bench-search --max-trials 6 --grid

Without --grid it runs the search alone and prints its trials; with --grid it then runs every
combination of a finite space (max_trials = the space's size) in <output>/grid and prints
both choices side by side. Nothing is printed as measured that this run did not measure.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compressor.search import SearchResult, load_search, run_search


def search(
    recipe: Path, output: Path, max_trials: int | None, sampler: str = "auto"
) -> tuple[SearchResult, float]:
    plan = load_search(recipe, output, overwrite=output.exists())
    update = {"final_check": False, "sampler": sampler}
    plan.spec = plan.spec.model_copy(update=update)
    if max_trials is not None:
        plan.spec = plan.spec.model_copy(update={"max_trials": max_trials})
    start = time.perf_counter()
    result = run_search(plan)
    return result, time.perf_counter() - start


def show(title: str, result: SearchResult, seconds: float) -> None:
    print(f"\n## {title}: {len(result.trials)} trials, {seconds:.0f} s, goal_met {result.goal_met}")
    print("| trial | choices | latency x | PSNR drop | feasible |")
    print("|---|---|---|---|---|")
    for r in result.trials:
        o = r.outcome
        choices = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in r.values.items())
        print(f"| {r.number} | {choices} | {o.latency} | {o.quality_loss} | {o.feasible} |")
    if result.chosen is not None:
        print(f"chosen: trial {result.chosen.number} {result.chosen.values}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", type=Path, required=True, help="a recipe with a search: block")
    ap.add_argument("--output", type=Path, required=True, help="folder for both searches")
    ap.add_argument("--max-trials", type=int, default=None, help="TPE's budget")
    ap.add_argument("--grid", action="store_true", help="also run every combination")
    args = ap.parse_args()
    tpe, t_tpe = search(args.recipe, args.output / "tpe", args.max_trials)
    show("TPE", tpe, t_tpe)
    if not args.grid:
        return
    size = load_search(args.recipe, args.output / "probe").spec.space_size()
    if size == float("inf"):
        sys.exit("--grid needs a finite space (choice lists, integer or stepped ranges)")
    grid, t_grid = search(args.recipe, args.output / "grid", int(size), "brute-force")
    show("grid", grid, t_grid)
    same = tpe.chosen is not None and grid.chosen is not None
    same = same and tpe.chosen.values == grid.chosen.values  # type: ignore[union-attr]
    print(f"\nTPE's pick is the grid's: {same} ({len(tpe.trials)} vs {len(grid.trials)} trials)")


if __name__ == "__main__":
    main()
