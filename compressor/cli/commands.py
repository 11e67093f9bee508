"""The commands of `main`, one function each; each calls a library function and renders."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from compressor.cli.common import given, handle_errors, options_from, resume_options
from compressor.cli.options import (
    images_option,
    provider_option,
    threads_option,
    training_io_options,
)
from compressor.threads import resolve_threads
from compressor.torch_threads import torch_threads
from compressor.train import TrainConfig
from compressor.validate import Gates


@click.command()
@click.option("--arch", required=True, help="Model arch (see `cli.py models`).")
@click.option("--quality", type=int, default=None, help="Quality level: widths and lambda.")
@click.option("--config", "config_text", default=None, help="Widths, e.g. N=64,M=96.")
@click.option(
    "--init",
    "init_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Start from this checkpoint instead of random weights (fine-tuning).",
)
@training_io_options(
    out_help="Checkpoint to write (best held-out loss); OUT.resume.pt allows resuming.",
    resume_help="Continue from OUT.resume.pt when it exists.",
)
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Data-parallel processes (DDP): starts torchrun itself. Under a torchrun you "
    "started, leave it out.",
)
@click.option(
    "--allow-oversubscribe",
    is_flag=True,
    help="Allow processes x threads above this machine's cores.",
)
@options_from(TrainConfig)
@handle_errors
def train(
    arch: str,
    quality: int | None,
    config_text: str | None,
    init_path: Path | None,
    data: Path,
    out: Path,
    resume: bool,
    processes: int,
    allow_oversubscribe: bool,
    **kwargs: Any,
) -> None:
    """Train a model with the rate-distortion loss (or fine-tune one with --init).

    Data-parallel: `--processes N`, or `torchrun --nproc_per_node N cli.py train ...`."""
    from compressor.rich_ui import RichReporter, table
    from compressor.rich_ui import out as stdout
    from compressor.training import train_model

    overrides = given(kwargs, TrainConfig)
    if "threads" in overrides:
        resolve_threads(overrides["threads"], "--threads")
    result = train_model(
        processes=processes,
        allow_oversubscribe=allow_oversubscribe,
        arch=arch,
        quality=quality,
        config_text=config_text,
        init_path=init_path,
        data=data,
        out=out,
        resume=resume,
        overrides=overrides,
        reporter=RichReporter(),
    )
    if os.environ.get("RANK", "0") != "0":  # under torchrun: rank 0 reports
        return
    rows = [[h["step"], h["loss"], h["bpp"], h["psnr"], h["lr"]] for h in result.history[-10:]]
    stdout.print(
        table(
            f"held-out evaluations (last {len(rows)})",
            ["step", "loss", "bpp", "PSNR dB", "lr"],
            rows,
        )
    )
    stdout.print(
        f"stopped by {result.stopped} after {result.steps} steps; "
        f"best held-out loss {result.best_val_loss:.4f}; wrote {out}"
    )


def _print_complexity(result: Any) -> None:
    from compressor.rich_ui import out as stdout
    from compressor.rich_ui import table

    if not result.complexity or result.complexity_size is None:
        return
    h, w = result.complexity_size
    rows = [
        [r["component"], r["params"], (r["macs"] or 0) / 1e9, r["size_bytes"] / 1e6]
        for r in result.complexity
    ]
    title = f"components (MACs for one {h}x{w} image, padded as coded)"
    stdout.print(table(title, ["component", "params", "GMACs", "size MB"], rows))


def _print_eval(result: Any, title: str) -> None:
    from compressor.report import EVAL_COLUMNS, eval_rows
    from compressor.rich_ui import out as stdout
    from compressor.rich_ui import table

    s = result.summary()
    rows = [*eval_rows(result.rows), ["mean", *[s.get(c) for c in EVAL_COLUMNS[1:]]]]
    stdout.print(
        table(
            title, ["image", "bpp", "PSNR dB", "SSIM", "MS-SSIM", "bytes", "enc ms", "dec ms"], rows
        )
    )


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@images_option("Folder of images, or 'skimage' for scikit-image's sample photos.")
@click.option("--arch", default=None, help="Arch of a foreign checkpoint (guessed if left out).")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder for report.json / report.md / rd.png [default: exported/eval-MODEL].",
)
@threads_option("CPU threads (torch and ONNX Runtime).")
@provider_option("ONNX Runtime execution provider, for an exported model folder.")
@handle_errors
def evaluate(
    model: Path, data: str, arch: str | None, out: Path | None, threads: int | None, provider: str
) -> None:
    """Measure MODEL (checkpoint or export) with real bitstreams: bpp, PSNR, SSIM, MS-SSIM,
    encode/decode latency; per image and mean."""
    from compressor.codec import open_codec
    from compressor.data import load_images
    from compressor.evaluate import evaluate as run_eval
    from compressor.report import write_eval_report
    from compressor.rich_ui import RichReporter
    from compressor.rich_ui import out as stdout

    threads = resolve_threads(threads, "--threads")
    images = load_images(data)
    codec = open_codec(model, arch, provider, threads)
    with torch_threads(threads):
        result = run_eval(codec, images, threads=threads, reporter=RichReporter())
    folder = out or Path("exported") / f"eval-{model.stem}"
    write_eval_report(folder, result, f"evaluate {model} on {data}")
    _print_eval(result, f"{codec.name} on {data}")
    _print_complexity(result)
    stdout.print(f"report: {folder}/report.md")


@click.command()
@click.option(
    "--baseline",
    required=True,
    type=click.Path(path_type=Path),
    help="Reference model (checkpoint or export folder).",
)
@click.option(
    "--candidate",
    required=True,
    type=click.Path(path_type=Path),
    help="Compressed model to judge (checkpoint or export folder).",
)
@images_option("Folder of images, or 'skimage'.")
@click.option("--arch", default=None, help="Arch of foreign checkpoints.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("exported/validate"),
    show_default=True,
    help="Report folder (always written, pass or fail).",
)
@threads_option("CPU threads, the same for both.")
@provider_option("ONNX Runtime execution provider (the target hardware).")
@click.option(
    "--repeats",
    type=int,
    default=3,
    show_default=True,
    help="Timed repeats per image, baseline and candidate interleaved.",
)
@options_from(Gates)
@handle_errors
def validate(
    baseline: Path,
    candidate: Path,
    data: str,
    arch: str | None,
    out: Path,
    threads: int | None,
    provider: str,
    repeats: int,
    **gate_args: Any,
) -> None:
    """Compare CANDIDATE with BASELINE on the same images in one process and apply gates.

    Exit 1 when a gate fails (the report is written either way)."""
    from compressor.codec import open_codec
    from compressor.data import load_images
    from compressor.report import write_validation_report
    from compressor.validate import validate as run_validate

    gates = Gates(**given(gate_args, Gates))
    threads = resolve_threads(threads, "--threads")
    images = load_images(data)
    base = open_codec(baseline, arch, provider, threads, "baseline")
    cand = open_codec(candidate, arch, provider, threads, "candidate")
    from compressor.rich_ui import RichReporter

    with torch_threads(threads):
        result = run_validate(
            base, cand, images, gates, repeats=repeats, threads=threads, reporter=RichReporter()
        )
    write_validation_report(out, result, f"validate {candidate} against {baseline}")
    _print_validation(result, out)


def _print_validation(result: Any, out: Path) -> None:
    from compressor.errors import GateFailed
    from compressor.rich_ui import out as stdout
    from compressor.rich_ui import table

    keys = ("bpp", "psnr", "ssim", "ms_ssim", "encode_ms", "decode_ms")
    stdout.print(
        table(
            "means",
            ["codec", "bpp", "PSNR dB", "SSIM", "MS-SSIM", "enc ms", "dec ms"],
            [
                [s["codec"], *[s[k] for k in keys]]
                for s in (result.baseline.summary(), result.candidate.summary())
            ],
        )
    )
    stdout.print(
        table(
            "deltas (candidate vs baseline)",
            ["delta", "value"],
            [[k, v] for k, v in result.deltas.items()],
        )
    )
    if result.gates:
        stdout.print(
            table(
                "gates",
                ["gate", "limit", "value", "passed"],
                [
                    [g["gate"], g["limit"], g["value"], "PASS" if g["passed"] else "FAIL"]
                    for g in result.gates
                ],
            )
        )
    stdout.print(f"report: {out}/report.md")
    if not result.passed:
        failed = [g["gate"] for g in result.gates if not g["passed"]]
        raise GateFailed(f"validation failed: {', '.join(failed)}")


@click.command("run")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Run folder [default: the recipe's output, else exported/<name>].",
)
@click.option(
    "--model",
    "models",
    multiple=True,
    help="Override the recipe's model; give it several times (or a quoted glob) for a family.",
)
@resume_options
@handle_errors
def run_recipe(
    recipe: Path, output: Path | None, models: tuple[str, ...], resume: bool, overwrite: bool
) -> None:
    """Run a recipe end to end: every step, artifacts in exported/<run>/NN_<step>/.

    A family (model: a list or glob, or --model several times) runs the steps on every
    member in exported/<run>/<member>/NN_<step>/ and judges the family by BD-rate in
    exported/<run>/family/. The whole recipe and the output folder are checked before any
    weights load or any file changes. A folder that no run made is never written into; a
    finished run is replaced only with --overwrite (and only once the new run finished).
    Exit 1 if a validation gate fails or a family member failed (the others are kept)."""
    from compressor import pipeline
    from compressor.recipe import parse_recipe, read_recipe_file
    from compressor.rich_ui import RichReporter, table
    from compressor.rich_ui import out as stdout

    raw = read_recipe_file(recipe)
    if models and isinstance(raw, dict):
        raw["model"] = list(models) if len(models) > 1 else models[0]
    parsed = parse_recipe(raw, str(recipe))
    plan = pipeline.plan(
        parsed, output, source=str(recipe), raw=raw, resume=resume, overwrite=overwrite
    )
    result = pipeline.run(plan, RichReporter())
    rows = [
        [
            a.id,
            a.kind,
            ", ".join(f"{k}={_short(v)}" for k, v in a.summary.items() if k in SUMMARY_KEYS),
        ]
        for a in result.artifacts
    ]
    stdout.print(table(f"run {plan.recipe.name}", ["step", "kind", "headline"], rows))
    finish_run(result)


def finish_run(result: Any) -> None:
    """The end of every recipe run: where the artifacts are, and exit 1 if a gate failed
    (or, in a family run, a member failed)."""
    from compressor.errors import GateFailed
    from compressor.rich_ui import out as stdout

    if result.members:
        _print_family(result)
    if result.reused:
        stdout.print(f"kept {result.reused} step(s) finished earlier with the same inputs")
    stdout.print(f"artifacts: {result.run_dir}")
    if result.failed_members:
        names = ", ".join(result.failed_members)
        raise GateFailed(f"family member(s) failed: {names}; see {result.final.path}/report.md")
    if not result.passed:
        raise GateFailed(f"a validation gate failed; see {result.artifacts[-1].path}/report.md")


def _print_family(result: Any) -> None:
    """The family's BD values and verdict, from its report."""
    import json

    from compressor.families.report import BD_KEYS
    from compressor.rich_ui import out as stdout
    from compressor.rich_ui import table

    report = json.loads((Path(result.final.path) / "report.json").read_text())
    rows = [[tag, *[v.get(k) for k in BD_KEYS]] for tag, v in report["bd"].items()]
    columns = ["test vs anchor", "BD-rate PSNR %", "BD-rate MS-SSIM %", "BD-PSNR dB"]
    stdout.print(table(f"family ({report['bd_method']})", columns, rows))
    for name, error in report["failed_members"].items():
        stdout.print(f"member {name} failed: {error}")
    stdout.print(f"family: {report['verdict']}")


SUMMARY_KEYS = (
    "bd_rate_psnr",
    "bd_rate_ms_ssim",
    "bpp",
    "psnr",
    "ms_ssim",
    "psnr_drop_db",
    "bpp_increase",
    "speedup",
    "passed",
    "steps",
    "stopped",
)


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


@click.command("models")
def list_models() -> None:
    """List the registered model archs and their quality levels."""
    from compressor.models import MODELS
    from compressor.rich_ui import out as stdout
    from compressor.rich_ui import table

    rows = []
    for arch in MODELS.names():
        adapter = MODELS.get(arch)
        rows.append(
            [
                arch,
                adapter.family,
                ", ".join(
                    f"q{q}: {adapter.default_config(arch, q)}"
                    for q in (1, 4, 6)
                    if _has_quality(adapter, arch, q)
                ),
            ]
        )
    stdout.print(table("model archs", ["arch", "family", "configs (examples)"], rows))


def _has_quality(adapter: Any, arch: str, quality: int) -> bool:
    from compressor.errors import CompressorError

    try:
        adapter.default_config(arch, quality)
    except CompressorError:
        return False
    return True
