"""Search: the fastest codec within an RD budget, over the choices of a recipe's own steps.

`load_search(recipe_path)` checks the recipe and its `search:` block before any weights
load (compressor.search.plan); `run_search(plan)` runs the Optuna study in a resumable run
folder and writes trials.csv, pareto.json, pareto.png, best.yaml and search.json
(compressor.search.engine, compressor.search.report). Trials run in-process, one at a time.
"""

from __future__ import annotations

from compressor.search.engine import SearchResult, TrialRecord, run_search
from compressor.search.plan import SearchPlan, load_search, plan_search
from compressor.search.spec import SearchSpec, parse_spec

__all__ = [
    "SearchPlan",
    "SearchResult",
    "SearchSpec",
    "TrialRecord",
    "load_search",
    "parse_spec",
    "plan_search",
    "run_search",
]
