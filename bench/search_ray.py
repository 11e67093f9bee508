"""The same search in-process and on a local Ray cluster, side by side: wall times and ratio.

Default: a tiny hyperprior (N=8, M=12) pruned and validated on synthetic images of --size
pixels; --recipe runs any search recipe instead. Both searches use the recipe's seed and
--trials; the Ray one starts a local cluster with --workers CPUs (its start is timed apart).

    OMP_NUM_THREADS=1 uv run python bench/search_ray.py --trials 4 --workers 2
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compressor import checkpoint
from compressor.search import load_search, run_search
from compressor.search.ray_trials import init_ray
from tests.conftest import tiny_model, write_images

SPACE = {"steps.prune.ratio.encoder": [0.25, 0.5, 0.75], "steps.prune.importance": ["l1", "l2"]}


def tiny_recipe(folder: Path, size: int, trials: int) -> Path:
    checkpoint.save(tiny_model(), folder / "tiny.pt")
    body = {
        "name": "bench-ray",
        "model": str(folder / "tiny.pt"),
        "data": {
            "eval": str(write_images(folder / "eval", [(size, size)], seed=1)),
            "calibration": str(write_images(folder / "cal", [(size, size)] * 2, seed=11)),
        },
        "threads": 1,
        "steps": [
            {"prune": {"ratio": {"encoder": 0.25}, "round_to": 1, "latency_repeats": 0}},
            {"validate": {"repeats": 3}},
        ],
        "search": {
            "space": SPACE,
            "max_trials": trials,
            "constraints": {"max_psnr_drop_db": 100.0},
            "final_check": False,
        },
    }
    path = folder / "search.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def timed_search(recipe: Path, out: Path, trials: int, ray: str | None) -> tuple[float, list]:
    plan = load_search(recipe, out)
    plan.spec = plan.spec.model_copy(update={"max_trials": trials})
    start = time.perf_counter()
    run_search(plan, ray=ray)
    wall = time.perf_counter() - start
    rows = list(csv.DictReader((out / "trials.csv").open()))
    drop = {"latency", "latency_ms", "feasible"}
    return wall, [{k: v for k, v in row.items() if k not in drop} for row in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", type=Path, help="a search recipe [default: the tiny one]")
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray cluster")
    ap.add_argument("--size", type=int, default=192, help="tiny recipe: image side, pixels")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        recipe = args.recipe or tiny_recipe(folder, args.size, args.trials)
        here, rows_here = timed_search(recipe, folder / "here", args.trials, None)
        start = time.perf_counter()
        init_ray(num_cpus=args.workers)
        ray_start = time.perf_counter() - start
        there, rows_there = timed_search(recipe, folder / "ray", args.trials, "auto")
    report: dict[str, Any] = {
        "trials": args.trials,
        "in_process_s": round(here, 1),
        f"ray_{args.workers}_workers_s": round(there, 1),
        "ray_start_s": round(ray_start, 1),
        "speedup": round(here / there, 2),
        "speedup_with_ray_start": round(here / (there + ray_start), 2),
        "same_trial_records": rows_here == rows_there,
    }
    for key, value in report.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
