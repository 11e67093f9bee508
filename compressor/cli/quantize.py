"""`cli.py quantize`: run a quantization recipe (with --model / --data overrides), render."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from compressor.cli.common import handle_errors, resume_options


def overridden(
    recipe: Path, model: str | tuple[str, ...] | None, data: str | None
) -> tuple[Any, dict[str, Any]]:
    """The recipe (and its raw mapping) with --model / --data (the calibration folder) applied,
    checked as a whole: an override is validated like the recipe's own fields. Several
    --model values make a family."""
    from compressor.errors import RecipeError
    from compressor.recipe import parse_recipe, read_recipe_file

    raw = read_recipe_file(recipe)
    if isinstance(raw, dict):
        if isinstance(model, tuple) and model:
            raw["model"] = list(model) if len(model) > 1 else model[0]
        elif isinstance(model, str):
            raw["model"] = model
        if data is not None:
            raw["data"] = {**(raw.get("data") or {}), "calibration": data}
    parsed = parse_recipe(raw, str(recipe))
    if not any(name == "quantize" for name, _ in parsed.steps):
        raise RecipeError(f"{recipe} has no quantize step; run it with `cli.py run` instead")
    return parsed, raw


def render(run: Any) -> None:
    from compressor.quant import report as qreport
    from compressor.rich_ui import out, table

    for art in run.artifacts:
        if art.step != "quantize" or art.report is None:
            continue
        report = art.report
        out.print(table(f"{art.id}: graphs", qreport.GRAPH_COLUMNS, qreport.graph_rows(report)))
        if report.get("sensitivity"):
            rows = qreport.sensitivity_rows(report)
            out.print(table("sensitivity (this layer alone quantized)", qreport.SENS_COLUMNS, rows))
        if report.get("accuracy_aware"):
            rows = qreport.trial_rows(report)
            out.print(table("accuracy-aware search", qreport.TRIAL_COLUMNS, rows))
        check = report["quick_check"]
        if report.get("qat"):
            out.print(qat_line(report["qat"], check))
        if report.get("inc"):
            n = len(report["inc"]["inputs"])
            out.print(f"Neural Compressor ({report['inc']['observer']}) set {n} conv input scales")
        out.print(
            f"quick check vs float ({check['images']} images): PSNR drop "
            f"{check['psnr_drop_db']:.3f} dB, bpp {100 * check['bpp_increase']:+.2f}%; "
            f"model id {report['model_id'][:16]}; export {art.path}"
        )


def qat_line(qat: dict[str, Any], check: dict[str, Any]) -> str:
    ptq = qat["ptq_check"]
    return (
        f"QAT: {qat['steps']} steps in {qat['minutes']} min ({qat['stopped']}), held-out RD loss "
        f"{qat['rd_loss_before']:.4f} -> {qat['rd_loss_after']:.4f}; PSNR drop vs float: PTQ "
        f"{ptq['psnr_drop_db']:.3f} dB, QAT {check['psnr_drop_db']:.3f} dB"
    )


@click.command()
@click.option(
    "--recipe", required=True, type=click.Path(path_type=Path), help="Recipe with a quantize step."
)
@click.option(
    "--model",
    "models",
    multiple=True,
    help="Override the recipe's model (checkpoint or export); several times: a family.",
)
@click.option("--data", default=None, help="Override data.calibration (calibration images).")
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Run folder [default: the recipe's output, else exported/<name>].",
)
@resume_options
@handle_errors
def quantize(
    recipe: Path,
    models: tuple[str, ...],
    data: str | None,
    output: Path | None,
    resume: bool,
    overwrite: bool,
) -> None:
    """INT8-quantize a model as RECIPE says (backend ort-static: ONNX Runtime static PTQ;
    inc-static: Neural Compressor's calibration; qat: quantization-aware fine-tuning; all
    written as ORT QDQ graphs), then run the recipe's other steps (export before, validate
    after). Exit 1 if a gate fails."""
    from compressor import pipeline
    from compressor.cli.commands import finish_run
    from compressor.rich_ui import RichReporter

    parsed, raw = overridden(recipe, models, data)
    plan = pipeline.plan(
        parsed, output, source=str(recipe), raw=raw, resume=resume, overwrite=overwrite
    )
    result = pipeline.run(plan, RichReporter())
    render(result)
    finish_run(result)
