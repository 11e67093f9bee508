"""The search against the whole grid: does TPE's pick within K trials match the fastest
feasible codec of every combination, and what does each cost?

A skeleton that runs only with explicit flags (a real search is minutes to hours):

    OMP_NUM_THREADS=1 uv run python bench/search.py --recipe recipes/search-int8.yaml \
        --output /tmp/bench-search --max-trials 6 --grid

Without --grid it runs the search alone and prints its trials; with --grid it then runs every
combination of a finite space (max_trials = the space's size) in <output>/grid and prints
both choices side by side. Nothing is printed as measured that this run did not measure.

With --anchors (issue 14; needs the optional 'peers' group) it puts the search side by side
with Intel Neural Compressor 3.x autotune and NNCF quantize_with_accuracy_control on the same
job: INT8 g_a and g_s of the recipe's FP32 export, the same tolerance, the same evaluation
function (our codec's real bitstreams on the first --images calibration photos, centre crop
--crop) and the same budget (bench/search_anchors.py). Every INT8 result is then put into our
codec and timed against FP32, interleaved, on data.eval (Kodak; never calibrated on):

    OMP_NUM_THREADS=1 uv run --frozen --group peers python bench/search.py \
        --recipe recipes/search-int8.yaml --output /tmp/anchors --max-trials 6 --anchors \
        [--ours-run exported/search-int8-search]   # reuse a finished search instead

A search that prunes (recipes/search-prune-int8.yaml) changes the model before its export: pass
--fp32 DIR, the unpruned model's FP32 export, as the reference and the anchors' input, and
--shipped NAME=DIR for the shipped recipes' codecs to time beside it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compressor.search import SearchResult, load_search, run_search

#: bench/search_anchors.py's TOOLS (imported lazily: it needs the peers group)
TOOL_NAMES = ("inc", "nncf", "nncf-mixed")


def search(
    recipe: Path,
    output: Path,
    max_trials: int | None,
    sampler: str = "auto",
    images: str | None = None,
) -> tuple[SearchResult, float]:
    """The recipe's search (no final check) in `output`; `images`: the trials' images
    instead of the recipe's search images."""
    plan = load_search(recipe, output, overwrite=output.exists())
    update: dict[str, object] = {"final_check": False, "sampler": sampler}
    if images is not None:
        update["images"] = images
        plan.images = images
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


def crops(folder: str, count: int, size: int, out: Path) -> list[np.ndarray]:
    """The first `count` calibration photos, centre-cropped as the quantizer calibrates, also
    written to `out` as PNG so our search's trials can measure on exactly these."""
    from PIL import Image

    from compressor.data import image_paths
    from compressor.imageio import read_rgb8
    from compressor.quant.calib import centre_crop

    out.mkdir(parents=True, exist_ok=True)
    images = [centre_crop(read_rgb8(p), size) for p in image_paths(folder)[:count]]
    for i, rgb8 in enumerate(images):
        Image.fromarray(rgb8).save(out / f"{i:03d}.png")
    return images


def ours(args: argparse.Namespace, images: str) -> tuple[Path, float, str]:
    """The chosen trial's folder of our search, its wall time (s) and where both came from."""
    if args.ours_run is None:
        result, seconds = search(args.recipe, args.output / "ours", args.max_trials, images=images)
        run_dir, how = args.output / "ours", f"ran here, {len(result.trials)} trials"
    else:
        run_dir = args.ours_run
        run = json.loads((run_dir / "run.json").read_text())
        times = [datetime.fromisoformat(run[k]) for k in ("started", "updated")]
        seconds, how = (times[1] - times[0]).total_seconds(), f"--ours-run {run_dir} (run.json)"
    chosen = json.loads((run_dir / "search.json").read_text())["chosen"]
    if chosen is None:
        sys.exit(f"{run_dir}: the search chose no trial")
    return run_dir / chosen["folder"], seconds, f"{how}, chosen trial {chosen['number']}"


def step_codec(trial: Path, step: str) -> Path:
    found = sorted(trial.glob(f"*_{step}/onnx"))
    if not found:
        sys.exit(f"{trial}: no {step} step output (NN_{step}/onnx)")
    return found[-1]


def reference(args: argparse.Namespace, trial: Path) -> Path:
    """The FP32 export every codec is judged against and the anchors quantize: --fp32, else
    the chosen trial's own export (which, after a prune step, is the pruned model)."""
    if args.fp32 is not None:
        return Path(args.fp32)
    if any(trial.glob("*_prune")) or any(trial.glob("*_distill")):
        sys.exit(
            f"{trial}: the chosen trial changed the model before its export: pass --fp32 "
            "(the unchanged model's FP32 export) to judge it and the anchors fairly"
        )
    return step_codec(trial, "export")


def anchors(args: argparse.Namespace) -> None:
    import search_anchors as sa

    from compressor.compare import compare
    from compressor.data import load_images
    from compressor.quant.calib import calibration_inputs
    from compressor.runtime import load_codec

    plan = load_search(args.recipe, args.output / "probe")
    max_drop = float((plan.spec.constraints or {}).get("max_psnr_drop_db", 0.3))
    max_bpp = float((plan.spec.constraints or {}).get("max_bpp_increase", 0.02))
    budget = args.max_trials or plan.spec.max_trials
    calib_dir = str(plan.recipe.data.calibration)
    photos = crops(calib_dir, args.images, args.crop, args.output / "crops")
    trial, ours_s, how = ours(args, str(args.output / "crops"))
    fp32, mine = reference(args, trial), step_codec(trial, "quantize")
    ev = sa.Evaluator(fp32, photos, threads=1)
    calib = calibration_inputs(ev.codec, photos, list(sa.GRAPHS))  # type: ignore[arg-type]
    rows: dict[str, dict[str, Any]] = {"ours": {"seconds": ours_s, "notes": [how]}}
    codecs = {"fp32": fp32, "ours": mine}
    for tool in args.tools:
        res = sa.run_anchor(tool, fp32, calib, ev, max_drop, budget, args.output / tool)
        shutil.rmtree(args.output / f"{tool}-codec", ignore_errors=True)
        folder = sa.assemble(fp32, res, args.output / f"{tool}-codec", photos[0])
        rows[tool] = {"seconds": res.seconds, "notes": res.notes, "evaluations": res.evaluations}
        if folder is not None:
            codecs[tool] = folder
    for item in args.shipped:  # codecs of shipped recipes, in the same side by side
        label, _, folder = item.partition("=")
        codecs[label] = Path(folder)
        rows[label] = {"notes": [f"shipped recipe's codec {folder}"]}
    for label, folder in codecs.items():  # the same evaluation function, every codec
        got = sa.Evaluator(folder, photos, threads=1).reference
        ref = ev.reference
        rows.setdefault(label, {})["calib"] = (
            ref["psnr"] - got["psnr"],
            got["bpp"] / ref["bpp"] - 1,
        )
    kodak = load_images(str(plan.recipe.data.eval))[: args.kodak]
    loaded = {k: load_codec(v, threads=1) for k, v in codecs.items()}
    cmp = compare(loaded, kodak, repeats=args.repeats, threads=1)  # type: ignore[arg-type]
    report(rows, cmp, max_drop, max_bpp, args.output / "anchors.json")


def report(rows: dict, cmp: Any, max_drop: float, max_bpp: float, path: Path) -> None:
    base = cmp["fp32"]
    print(
        f"\n## side by side: tolerance {max_drop} dB PSNR, bpp <= +{max_bpp:.0%}; "
        f"Kodak {len(base.rows)} images, {cmp.repeats} interleaved rounds, 1 thread"
    )
    print(
        "| tool | encode x | decode x | PSNR drop (Kodak) | bpp change (Kodak) | "
        "PSNR drop / bpp (search images) | within tolerance (Kodak) | wall time s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for label in cmp.labels:
        r, m = rows.setdefault(label, {}), cmp[label]
        r["encode_x"] = cmp.geomean_ratio("encode_ms", "fp32", label)
        r["decode_x"] = cmp.geomean_ratio("decode_ms", "fp32", label)
        r["psnr_drop"] = (base.mean("psnr") or 0.0) - (m.mean("psnr") or 0.0)
        r["bpp_change"] = (m.mean("bpp") or 0.0) / (base.mean("bpp") or 1.0) - 1
        r["ok"] = r["psnr_drop"] <= max_drop and r["bpp_change"] <= max_bpp
        drop, bpp = r.get("calib", (0.0, 0.0))
        secs = f"{r['seconds']:.0f}" if "seconds" in r else "-"
        print(
            f"| {label} | {r['encode_x']:.2f} | {r['decode_x']:.2f} | {r['psnr_drop']:.3f} | "
            f"{r['bpp_change']:+.2%} | {drop:.3f} / {bpp:+.2%} | {r['ok']} | {secs} |"
        )
    for label, r in rows.items():
        for note in r.get("notes", []):
            print(f"- {label}: {note}")
    path.write_text(json.dumps(rows, indent=2, default=str) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", type=Path, required=True, help="a recipe with a search: block")
    ap.add_argument("--output", type=Path, required=True, help="folder for both searches")
    ap.add_argument("--max-trials", type=int, default=None, help="TPE's budget")
    ap.add_argument("--grid", action="store_true", help="also run every combination")
    ap.add_argument("--anchors", action="store_true", help="side by side with INC and NNCF")
    ap.add_argument("--ours-run", type=Path, default=None, help="a finished search to reuse")
    ap.add_argument("--tools", nargs="+", default=["inc", "nncf", "nncf-mixed"], choices=TOOL_NAMES)
    ap.add_argument(
        "--shipped",
        nargs="*",
        default=[],
        metavar="NAME=DIR",
        help="codec folders (a shipped recipe's quantize/onnx) timed side by side too (anchors)",
    )
    ap.add_argument(
        "--fp32",
        type=Path,
        default=None,
        help="the bundled model's FP32 export (NN_export/onnx), needed when the search prunes",
    )
    ap.add_argument("--images", type=int, default=16, help="calibration photos (anchors)")
    ap.add_argument("--crop", type=int, default=256, help="their centre crop (anchors)")
    ap.add_argument("--kodak", type=int, default=24, help="data.eval images timed (anchors)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds (anchors)")
    args = ap.parse_args()
    if args.anchors:
        anchors(args)
        return
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
