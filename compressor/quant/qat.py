"""Backend `qat`: quantization-aware fine-tuning, then ORT's QDQ graph of what was trained.

Steps: (1) ORT static PTQ of the float export, exactly as ort-static (its calibrated ranges
start the QAT and its quality is reported as the PTQ baseline); (2) the checkpoint's
components are rewritten as the exporter rewrites them (sub-pixel convolutions, folded GDN)
and fake-quantized where ORT's QDQ puts Q/DQ (fakequant.py); (3) the train loop's
rate-distortion fine-tuning (compressor.train.train, rd_loss) within the recipe's step /
minute budget; (4) the trained float model is exported and ORT's `quantize_static` writes
the QDQ graph with the learned activation scales as TensorQuantOverrides (weights
re-quantized by ORT's own per-channel rule, the one trained with), so the INT8 graph is the
trained one and every convolution of the decoder (sub-pixel form) is a QLinearConv.

Why not torchao's `prepare_qat_pt2e` / INC: their X86 quantizer fake-quantizes for
Inductor's fusions (conv outputs float, extra Q/DQ after pixel shuffle and GDN products), so
it trains a different rounding than the graph ORT runs, and the converted PT2E graph has no
working ONNX export here (see inc.py). Training on exported fx graphs would also detach the
weights from the CodecAdapter that the train loop, the entropy model update and the exporter
work on. Fake quantization on the rewritten modules keeps all of that and matches ORT.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compressor.data import CropDataset
from compressor.errors import CheckpointError, RecipeError
from compressor.export import export_model, rewrites
from compressor.models import CodecAdapter
from compressor.progress import Reporter
from compressor.quant import calib, ort_static, overrides, torch_src
from compressor.quant.config import QuantParams
from compressor.quant.fakequant import Scheme, wrap
from compressor.quant.fakequant import strip as strip_wrappers
from compressor.quant.folder import check_source
from compressor.quant.qat_params import QatParams
from compressor.runtime import load_codec
from compressor.runtime import manifest as mf
from compressor.train import TrainConfig, rd_loss, split_images, train, trained_lambda

log = logging.getLogger(__name__)


def train_config(qp: QatParams, model: CodecAdapter, threads: int) -> TrainConfig:
    lmbda = qp.lmbda or trained_lambda(model) or TrainConfig.model_fields["lmbda"].default
    return TrainConfig(
        lmbda=lmbda,
        crop=qp.crop,
        val_crop=qp.val_crop,
        batch_size=qp.batch_size,
        lr=qp.lr,
        max_steps=qp.max_steps,
        max_minutes=qp.max_minutes,
        eval_every=qp.eval_every,
        patience=10**6,  # the budget ends QAT; the best held-out state is kept anyway
        seed=qp.seed,
        threads=threads,
    )


@torch.no_grad()
def held_out_loss(model: CodecAdapter, images: list[np.ndarray], cfg: TrainConfig) -> float:
    """Mean RD loss on the train loop's held-out images (its split and crop)."""
    _, val = split_images(images, cfg.val_fraction, cfg.seed)
    crop = max(min(cfg.val_crop, *(min(a.shape[:2]) for a in val)) // 64 * 64, 64)
    data, loss_fn = CropDataset(val, crop, train=False), rd_loss(cfg.lmbda)
    model.eval()
    return math.fsum(loss_fn(model, data[i][None])[1]["loss"] for i in range(len(data))) / len(data)


def fake_quantize(
    model: CodecAdapter,
    jobs: dict[str, ort_static.GraphJob],
    scheme: Scheme,
    manifest: mf.Manifest | None = None,
) -> dict[str, list]:
    """Replace the quantized components of `model` by fake-quantized rewritten copies whose
    ranges start at ORT's calibration; returns graph -> wrappers (ONNX Conv order).
    `manifest`: the float export's, whose rewrite (gdn_in_phases too) is reproduced; None:
    the default export's (sub-pixel, GDN not moved)."""
    ranges, wrapped = {}, {}
    for name, job in jobs.items():
        plain = getattr(model.net, name)
        if manifest is None:
            module = rewrites.rewrite(plain, subpixel=True)
        else:
            module = torch_src.rewrite_like(plain, manifest)
        example = torch.from_numpy(job.inputs[0])
        sites = torch_src.conv_sites(job.model())
        torch_src.check_same(name, sites, torch_src.conv_weights(module, example))
        wrapped[name] = wrap(module, scheme, example)
        ranges = overrides.calibrated_ranges(job)
        for q, site in zip(wrapped[name], sites, strict=True):
            if site.node in job.keep:
                q.keep_float()
            for aq, tensor in ((q.inp, site.input), (q.out, site.output)):
                if tensor in ranges:
                    aq.set_range(*ranges[tensor])
        setattr(model.net, name, module)
    return wrapped


def learned_overrides(
    wrapped: dict[str, list], jobs: dict[str, ort_static.GraphJob], params: QuantParams
) -> dict[str, dict[str, Any]]:
    """The trained activation scales / zero points, keyed by the new export's tensors."""
    table: dict[str, dict[str, Any]] = {}
    for name, job in jobs.items():
        sites, entries = torch_src.conv_sites(job.model()), {}
        torch_src.check_same(name, sites, [q.weight for q in wrapped[name]])
        for q, site in zip(wrapped[name], sites, strict=True):
            if site.node in job.keep:
                continue
            # an input written after an output wins: it is the one the next conv trained with
            for aq, tensor in ((q.out, site.output), (q.inp, site.input)):
                scale, zp = aq.qparams()
                entries[tensor] = overrides.entry(float(scale), int(zp), params.activation_type)
        table[name] = entries
    return table


def check_inputs(params: QuantParams, manifest: mf.Manifest, model: CodecAdapter) -> None:
    if manifest.extra.get("rewritten") is False:
        raise RecipeError(
            "backend qat trains the sub-pixel form of the decoder, which has no transposed-"
            "convolution equivalent afterwards: export with rewrite: true"
        )
    if model.family != "compressai":
        raise CheckpointError(f"backend qat supports the compressai family, not {model.family}")


def run_qat(
    src: Path,
    out: Path,
    params: QuantParams,
    images: list[np.ndarray],
    threads: int = 1,
    *,
    checkpoint: Path | None = None,
    train_images: list[np.ndarray] | None = None,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """PTQ, fake-quantized RD fine-tuning, then the QDQ export with the learned ranges."""
    qp = params.qat or QatParams()
    src = mf.locate(Path(src))
    manifest = check_source(src, params)
    model = torch_src.load_model(checkpoint, manifest, "qat", src)
    check_inputs(params, manifest, model)
    cfg = train_config(qp, model, threads)
    data = train_images if train_images is not None else images
    crops = [calib.centre_crop(a, params.calibration.crop) for a in images]
    cal = crops[: params.calibration.images]
    scheme = Scheme(
        params.activation_type, params.weight_type, params.per_channel, qp.range_momentum
    )
    with tempfile.TemporaryDirectory(prefix="qat.") as tmp:
        work = Path(tmp)
        (work / "ptq").mkdir()
        trial = calib.Trial(src, crops[-2:], threads)
        inputs = calib.calibration_inputs(trial.codec, cal, params.graphs())
        jobs = ort_static.prepare_jobs(src, params, inputs, work / "ptq")
        ptq = trial.measure(ort_static.quantize_all(jobs, params, work / "ptq"))
        wrapped = fake_quantize(model, jobs, scheme, manifest)
        before = held_out_loss(model, data, cfg)
        t0 = time.monotonic()
        result = train(model, data, cfg, work / "qat.pt", resume=False, reporter=reporter)
        summary = {
            "lmbda": cfg.lmbda,
            "steps": result.steps,
            "stopped": result.stopped,
            "minutes": round((time.monotonic() - t0) / 60, 2),
            "rd_loss_before": before,
            "rd_loss_after": held_out_loss(model, data, cfg),
            "ptq_check": ptq,
            "train_images": len(data),
            "history": result.history,
        }
        moved = torch_src.gdn_in_phases(manifest)
        jobs, files = export_trained(model, wrapped, params, cal, work, threads, moved)
        base, extra = work / "qat-fp32", {"qat": summary}
        return overrides.finish("qat", src, base, jobs, files, params, trial, out, extra, len(cal))


def export_trained(
    model: CodecAdapter,
    wrapped: dict[str, list],
    params: QuantParams,
    cal: list[np.ndarray],
    work: Path,
    threads: int,
    gdn_in_phases: bool = False,
) -> tuple[dict[str, ort_static.GraphJob], dict[str, Path]]:
    """The trained model exported in float (work/qat-fp32) as the source export was (its
    gdn_in_phases recorded again: the INT8 folder's manifest is this one's), then quantized by
    ORT with the learned activation ranges; returns the jobs and graph -> INT8 file."""
    for name in wrapped:
        strip_wrappers(getattr(model.net, name))
    base = export_model(model, work / "qat-fp32", gdn_in_phases=gdn_in_phases)
    (work / "int8").mkdir()
    codec = load_codec(base, threads=threads)
    jobs = ort_static.prepare_jobs(
        base, params, calib.calibration_inputs(codec, cal, params.graphs()), work / "int8"
    )
    table = learned_overrides(wrapped, jobs, params)
    return jobs, overrides.quantize_with(jobs, params, work / "int8", table)
