"""Backend `inc-static`: Intel Neural Compressor's static PT2E INT8 calibration, shipped via ORT.

Neural Compressor (neural_compressor.torch: `export` -> `prepare(StaticQuantConfig)` ->
calibration -> `convert`) quantizes the torch graphs exactly as the exporter rewrote them
(GDN folded, ConvTranspose -> Conv + PixelShuffle), calibrated on the same inputs ort-static
uses. Its result is a torch.fx graph of quantize/dequantize ops, and that graph is *not*
exported as is, because no exporter here turns it into a graph our runtime runs fast:
- the TorchScript ONNX exporter has no symbolic for the quantized_decomposed ops (it raises
  NotImplementedError, measured with torch 2.13), the dynamo exporter needs onnxscript
  (not a dependency), and torch >= 2.11 moved PT2E into torchao;
- INC's X86 (Inductor) quantizer places Q/DQ for Inductor's fusions: conv *outputs* are
  left float. ORT fuses DQ -> Conv -> Q into QLinearConv only with a quantized output, so
  such a graph would run every convolution in float (0 INT8 convs).
So the choice is: INC decides, ORT writes. For every Conv, INC's observed scale and zero
point of its input activation go into ORT's `quantize_static` as TensorQuantOverrides (the
ONNX Conv nodes are matched to INC's conv2d nodes in execution order, weights checked), and
ORT writes the QDQ graph (per-channel symmetric INT8 weights by ORT's max-abs rule, which is
INC's too up to its 127.5 vs ORT's 127 divisor; conv outputs, which INC does not observe,
calibrated by ORT on the same inputs). `calibration.method` minmax maps to INC's minmax
(a moving-average min/max over calibration batches, unlike ORT's global min/max), entropy
to INC's kl (histogram observer). The report lists INC's and ORT's scale for each input.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compressor.quant import calib, ort_static, overrides, sensitivity, torch_src
from compressor.quant.config import QuantParams
from compressor.quant.folder import check_source
from compressor.runtime import manifest as mf

log = logging.getLogger(__name__)

ALGOS = {"minmax": "minmax", "entropy": "kl"}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """INC logs every step at INFO/WARNING on its own handler; keep errors only."""
    inc_log = logging.getLogger("neural_compressor")
    level = inc_log.level
    inc_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        inc_log.setLevel(level)


def _value(gm: nn.Module, arg: Any) -> Any:
    """A constant argument of an fx node (inline, or a get_attr of the module)."""
    if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
        return getattr(gm, str(arg.target))
    return arg


def input_qparams(gm: torch.fx.GraphModule) -> list[dict[str, Any]]:
    """(scale, zero point, weight shape) of each conv2d's input, in graph order."""
    out = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or "conv2d" not in str(node.target):
            continue
        x = node.args[0]
        weight = node.args[1].meta.get("val") if isinstance(node.args[1], torch.fx.Node) else None
        row: dict[str, Any] = {"weight_shape": tuple(weight.shape) if weight is not None else None}
        if isinstance(x, torch.fx.Node) and "dequantize_per_tensor" in str(x.target):
            row["scale"] = float(_value(gm, x.args[1]))
            row["zero_point"] = int(_value(gm, x.args[2]))
        out.append(row)
    return out


def calibrate(module: nn.Module, inputs: list[np.ndarray], params: QuantParams) -> list[dict]:
    """INC's static PT2E calibration of `module`; the input qparams of each conv2d."""
    from neural_compressor.torch.export import export
    from neural_compressor.torch.quantization import StaticQuantConfig, convert, prepare

    with _quiet(), torch.no_grad():
        auto = torch.export.Dim.AUTO
        example = (torch.from_numpy(inputs[0]),)
        exported = export(module, example, dynamic_shapes=({2: auto, 3: auto},))
        config = StaticQuantConfig(
            w_dtype=params.weight_type,
            w_sym=params.weight_type == "int8",
            w_granularity="per_channel" if params.per_channel else "per_tensor",
            act_dtype=params.activation_type,
            act_sym=False,
            act_granularity="per_tensor",
            act_algo=ALGOS[params.calibration.method],
        )
        prepared = prepare(exported, config)
        for x in inputs:
            prepared(torch.from_numpy(x))
        converted = convert(prepared)
    return input_qparams(converted)


def graph_overrides(
    name: str, job: ort_static.GraphJob, inc: list[dict], params: QuantParams
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """TensorQuantOverrides of one graph from INC's conv inputs, and the report rows."""
    sites = torch_src.conv_sites(job.model())
    if len(sites) != len(inc) or any(
        s.weight is not None and r["weight_shape"] not in (None, s.weight.shape)
        for s, r in zip(sites, inc, strict=False)
    ):
        raise RuntimeError(f"{name}: INC's conv2d nodes do not match the ONNX Conv nodes")
    ort_ranges = overrides.calibrated_ranges(job)
    table: dict[str, Any] = {}
    rows = []
    for site, r in zip(sites, inc, strict=True):
        if "scale" not in r or site.node in job.keep:
            continue  # INC left this input float, or the recipe keeps the conv float
        table[site.input] = overrides.entry(r["scale"], r["zero_point"], params.activation_type)
        lo_hi = ort_ranges.get(site.input)
        ort_scale = overrides.scale_zp(*lo_hi, params.activation_type)[0] if lo_hi else None
        rows.append(
            {
                "graph": name,
                "node": site.node,
                "tensor": site.input,
                "inc_scale": r["scale"],
                "inc_zero_point": r["zero_point"],
                "ort_scale": ort_scale,
            }
        )
    return table, rows


def run_inc_static(
    src: Path,
    out: Path,
    params: QuantParams,
    images: list[np.ndarray],
    threads: int = 1,
    *,
    checkpoint: Path | None = None,
    train_images: list[np.ndarray] | None = None,
) -> dict[str, Any]:
    """INC calibrates the torch graphs; ORT writes the QDQ graphs with INC's input scales."""
    del train_images  # post-training: calibration images only
    src = mf.locate(Path(src))
    manifest = check_source(src, params)
    model = torch_src.load_model(checkpoint, manifest, "inc-static", src)
    crops = [calib.centre_crop(a, params.calibration.crop) for a in images]
    cal = crops[: params.calibration.images]
    with tempfile.TemporaryDirectory(prefix="inc.") as tmp:
        work = Path(tmp)
        trial = calib.Trial(src, crops[-2:], threads)
        inputs = calib.calibration_inputs(trial.codec, cal, params.graphs())
        jobs = ort_static.prepare_jobs(src, params, inputs, work)
        ranking = None
        if params.keep_float_top_k:  # ranked by ORT's own per-layer quantization
            ranking = sensitivity.table(jobs, params, trial, work, manifest.model_id)
        top_k = sensitivity.keep_top_k(jobs, params, ranking)
        ort_static.quantize_all(jobs, params, work)  # ORT's own ranges: the cache, for the report
        table: dict[str, dict[str, Any]] = {}
        rows: list[dict[str, Any]] = []
        for name, job in jobs.items():
            module = torch_src.rewritten(model, manifest, name)
            torch_src.check_same(
                name,
                torch_src.conv_sites(job.model()),
                torch_src.conv_weights(module, torch.from_numpy(inputs[name][0])),
            )
            inc = calibrate(module, inputs[name], params)
            table[name], graph_rows = graph_overrides(name, job, inc, params)
            rows += graph_rows
        files = overrides.quantize_with(jobs, params, work, table)
        extra = {
            "inc": {"observer": ALGOS[params.calibration.method], "inputs": rows},
            "keep_float_top_k": top_k,
        }
        return overrides.finish(
            "inc-static", src, src, jobs, files, params, trial, out, extra, len(cal)
        )
