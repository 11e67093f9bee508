"""ONNX Runtime static post-training quantization (QDQ) of an export folder's graphs.

Conv nodes hold nearly all the MACs, and ONNX Runtime fuses DequantizeLinear -> Conv ->
QuantizeLinear into QLinearConv; `int8_gdn: true` quantizes the (I)GDN multiply (`SCALERS`)
between INT8 convolutions too, so ORT runs it on uint8 (not the default: OpenVINO). The
decoder must be the *rewritten* export (ConvTranspose -> Conv + PixelShuffle): ORT has no
integer transposed convolution on CPU, so a quantized ConvTranspose stays float between Q/DQ
pairs and runs slower than plain float (DESIGN.md). Calibration runs once per graph into a
range cache; every later variant (sensitivity, accuracy-aware trials) reuses those ranges.

Dynamic quantization does not apply here: it computes activation scales at run time for
every tensor (an extra pass over each activation) and targets MatMul/Gemm/LSTM-style models
(ORT maps Conv only to the slow ConvInteger + float rescale path); ORT's guidance is static
quantization for CNNs, which is what this backend does.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

from compressor.errors import RecipeError
from compressor.quant import graph as qg
from compressor.quant.calib import ListReader
from compressor.quant.config import INT8_GDN_WITH_GDN_IN_PHASES, QuantParams, component_graphs
from compressor.runtime import manifest as mf

log = logging.getLogger(__name__)

METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
#: ops that only move bytes. The phase-decomposed decoder (export.rewrites.PhaseConv) joins
#: its 4 phase convs by Concat -> DepthToSpace. Quantized, ORT fuses QLinearConcat and moves
#: uint8 through DepthToSpace (bundled g_s 196 vs 201 ms with SCALERS alone, 1 thread), but
#: OpenVINO 2025 then refuses the whole graph (its low-precision DepthToSpace transformation
#: fails on the per-channel dequantization it makes of the Concat, even with one scale on
#: every input). They stay float: they only count where a kept-float Conv's output flows.
MOVERS = ("Concat", "DepthToSpace")
#: (I)GDN's x * normaliser, quantized with `int8_gdn: true` where one side is INT8 already
#: (graph.int8_movers): its output feeds INT8 convs, so ORT fuses QLinearMul and keeps the IGDN
#: in NHWC uint8 but its Sqrt (the float Transposes around it cost more than the multiply).
#: The one new rounding is the normaliser's: measured on Kodak 1-6, bundled hyperprior,
#: -0.02 dB PSNR, same bpp; ORT g_s 201 vs 245 ms. Not the default: OpenVINO runs that graph
#: slower (139 vs 124 ms), and the torch backends' fake-quant does not model the rounding.
#: Refused on an export with the IGDN moved onto the phases (config.INT8_GDN_WITH_GDN_IN_PHASES).
SCALERS = ("Mul",)
#: op types handed to ORT's quantizer (int8_gdn adds SCALERS)
OP_TYPES = ("Conv",)


@dataclass
class GraphJob:
    """One graph to quantize: its float source, calibration inputs and range cache."""

    name: str  # g_a, g_s, h_a, h_s
    source: Path  # the float graph that is quantized (pre-processed when that worked)
    inputs: list[Any]  # input arrays, or {name: array} feeds of a multi-input graph (rnn)
    cache: Path
    keep: set[str] = field(default_factory=set)  # Conv nodes left in float
    preprocess_note: str = "not requested"

    def model(self) -> onnx.ModelProto:
        return qg.load(self.source)


class _DropPreprocessAdvice(logging.Filter):
    """ORT's quantize_static logs "Please consider (to run) pre-processing before
    quantization" with a URL, twice per graph, on the root logger, whenever the graph lacks
    its pre-processing tag. We pre-process (or log once, ourselves, why it was skipped), so
    the advice is noise in the user's output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Please consider")


@contextlib.contextmanager
def ort_advice_silenced() -> Iterator[None]:
    """Drop ORT's pre-processing advice while ORT quantization code runs. The root logger
    gets a NullHandler meanwhile if it has none: logging.warning() on an unconfigured root
    would call basicConfig() and print every later record of the process to stderr."""
    root = logging.getLogger()
    advice = _DropPreprocessAdvice()
    guard = None if root.handlers else logging.NullHandler()
    root.addFilter(advice)
    if guard is not None:
        root.addHandler(guard)
    try:
        yield
    finally:
        root.removeFilter(advice)
        if guard is not None:
            root.removeHandler(guard)


def preprocess(src: Path, dst: Path) -> tuple[Path, str]:
    """ORT's quant_pre_process (shape inference + graph cleanup); on failure the original."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # absolute before the chdir below: a relative path (recipes always give one) would be
    # resolved against the scratch directory, and pre-processing would never run
    src, dst = Path(src).resolve(), Path(dst).resolve()
    try:
        # when its symbolic shape inference gives up, ORT dumps sym_shape_infer_temp.onnx and
        # its external data into the working directory: let it, in a throwaway one
        with (
            tempfile.TemporaryDirectory() as scratch,
            contextlib.chdir(scratch),
            ort_advice_silenced(),
        ):
            quant_pre_process(str(src), str(dst))
        before, after = qg.conv_names(qg.load(src)), qg.conv_names(qg.load(dst))
        if before != after:  # node names are the user's handle for keep_float: keep them
            raise ValueError("it renamed Conv nodes")
        return dst, "done"
    except Exception as e:  # ORT raises many types here; any failure means "use the original"
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        log.warning("pre-processing of %s skipped: %s", src.name, reason)
        shutil.copyfile(src, dst)
        return dst, f"skipped: {reason}"


def quantize_graph(
    job: GraphJob,
    params: QuantParams,
    dst: Path,
    *,
    keep: set[str] | None = None,
    only: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Write the QDQ graph of `job` to `dst`: every Conv but `keep` (or just `only`).

    `overrides` (ORT's TensorQuantOverrides: tensor -> [{scale, zero_point}]) replaces the
    calibrated quantization of those tensors (the inc-static and qat backends use it).
    Without them, `shared_phase_scale` gives each group of phase convs one int8 scale."""
    cal = params.calibration
    extra: dict[str, Any] = {}
    if cal.method == "percentile":
        extra["CalibPercentile"] = cal.percentile
    with ort_advice_silenced():
        if overrides is None and params.shared_phase_scale:
            calibrate = functools.partial(_quantize_static, job, params, dst, keep, only, extra)
            overrides = _phase_overrides(job, keep, only, calibrate)
        if overrides:
            extra["TensorQuantOverrides"] = overrides
        _quantize_static(job, params, dst, keep, only, extra)
    return dst


def _phase_overrides(
    job: GraphJob, keep: set[str] | None, only: list[str] | None, calibrate: Callable[[], None]
) -> dict[str, Any] | None:
    """quant.phase_scales' overrides for the phase convs this quantization makes INT8;
    `calibrate` (the plain quantization) writes the range cache when there is none yet."""
    from compressor.quant import phase_scales  # it imports this module (GraphJob)

    model = job.model()
    groups = qg.phase_groups(model)
    if not groups:
        return None
    if not job.cache.is_file():
        calibrate()
    convs = set(qg.conv_names(model)) - set(job.keep if keep is None else keep)
    if only is not None:
        convs &= set(only)
    return phase_scales.shared_overrides(job, groups, convs) or None


def _quantize_static(
    job: GraphJob,
    params: QuantParams,
    dst: Path,
    keep: set[str] | None,
    only: list[str] | None,
    extra: dict[str, Any],
) -> None:
    cal = params.calibration
    ops = (*OP_TYPES, *SCALERS) if params.int8_gdn else OP_TYPES
    excluded = set(job.keep if keep is None else keep) | _float_movers(job, keep, only, ops)
    quantize_static(
        str(job.source),
        str(dst),
        ListReader(job.inputs),  # read only when the range cache does not exist yet
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(ops),
        per_channel=params.per_channel,
        activation_type=TYPES[params.activation_type],
        weight_type=TYPES[params.weight_type],
        nodes_to_quantize=only,
        nodes_to_exclude=sorted(excluded),
        calibrate_method=METHODS[cal.method],
        extra_options=extra,
        calibration_cache_path=str(job.cache),
    )


def _float_movers(
    job: GraphJob, keep: set[str] | None, only: list[str] | None, op_types: tuple[str, ...]
) -> set[str]:
    """The non-Conv nodes of `op_types` (SCALERS) to leave in float: those not between INT8
    Convs. With `only` (nodes_to_quantize) ORT quantizes nothing outside it: none to exclude."""
    if only is not None or op_types == OP_TYPES:  # Convs only: nothing else to leave out
        return set()
    model = job.model()
    kept = job.keep if keep is None else keep
    convs = set(qg.conv_names(model)) - kept
    ops = set(op_types) - {"Conv"}
    movers = {n.name for n in model.graph.node if n.op_type in ops}
    # a kept Conv's float output (or input) stays float until the next INT8 Conv rounds it,
    # through the (float) data movement as well
    near_kept = qg.chained(model, kept, ops | set(MOVERS)) & movers
    return movers - qg.int8_movers(model, convs, ops) | near_kept


def prepare_jobs(
    folder: Path,
    params: QuantParams,
    inputs: dict[str, list[Any]],
    work: Path,
    kind: str | None = None,
) -> dict[str, GraphJob]:
    """Pre-process each graph and resolve keep_float against it (unknown names fail here).
    `kind`: the export's manifest kind, which names the graphs of the components."""
    if params.int8_gdn and mf.read(folder).extra.get("gdn_in_phases") is True:
        raise RecipeError(f"{folder}: {INT8_GDN_WITH_GDN_IN_PHASES}")
    jobs = {}
    for name in params.graphs(kind):
        src = folder / f"{name}.onnx"
        dst = work / f"{name}.float.onnx"
        if params.preprocess:
            dst, note = preprocess(src, dst)
        else:
            shutil.copyfile(src, dst)
            note = "not requested"
        jobs[name] = GraphJob(name, dst, inputs[name], work / f"{name}.ranges.json")
        jobs[name].preprocess_note = note
    models = {n: j.model() for n, j in jobs.items()}
    keep = qg.resolve_keep_float(params.keep_float, models, component_graphs(kind))
    for name, job in jobs.items():
        job.keep = keep[name]
    return jobs


def quantize_all(jobs: dict[str, GraphJob], params: QuantParams, work: Path) -> dict[str, Path]:
    """Each graph quantized with its current keep set; returns graph -> quantized file."""
    out = {}
    for name, job in jobs.items():
        out[name] = quantize_graph(job, params, work / f"{name}.int8.onnx")
        log.info("quantized %s (%d Conv kept in float)", name, len(job.keep))
    return out


def graph_summary(jobs: dict[str, GraphJob], files: dict[str, Path]) -> list[dict[str, Any]]:
    rows = []
    for name, job in jobs.items():
        model = qg.load(files[name])
        floats = qg.float_convs(model)
        rows.append(
            {
                "graph": name,
                "convs": len(qg.conv_names(model)),
                "int8_convs": len(qg.conv_names(model)) - len(floats),
                "float_convs": floats,
                "kept_in_float": sorted(job.keep),
                "preprocess": job.preprocess_note,
                "bytes_float": job.source.stat().st_size,
                "bytes_int8": files[name].stat().st_size,
            }
        )
    return rows
