"""The side-by-side anchors of `bench/search.py --anchors` (issue 14): Intel Neural Compressor
3.x `autotune` (onnx-neural-compressor) and NNCF `quantize_with_accuracy_control`, each on the
FP32 ONNX graphs g_a and g_s of our export, each judged by OUR evaluation function.

The evaluation function (`Evaluator`) is the deployable codec itself: the FP32 export loaded
once, a candidate graph swapped in as an ONNX Runtime session, every image encoded to a real
bitstream and decoded; it returns the mean PSNR (and bpp, the second check) over the images.
h_a / h_s stay as our codec builds them (float h_a, integer h_s).

Both tools quantize one ONNX model per call, while the job is the codec (g_a and g_s under one
0.3 dB budget), so each tool tunes g_a first against the FP32 codec, then g_s with its INT8 g_a
in place and whatever is left of the budget: tolerance(g_s) = PSNR(int8 g_a) - (PSNR_fp32 -
0.3 dB). A graph the tool cannot bring within its tolerance stays float (recorded).

Needs the optional 'peers' dependency group: `uv run --frozen --group peers ...`.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from compressor.metrics.psnr import psnr
from compressor.quant.folder import write_folder
from compressor.runtime import load_codec
from compressor.runtime import manifest as mf
from compressor.runtime.codec import session_options

log = logging.getLogger(__name__)
GRAPHS = ("g_a", "g_s")  # encoder then decoder: see the module docstring
Model = str | Path | onnx.ModelProto  # a graph file, or a model the tool holds in memory


class Evaluator:
    """Our evaluation function: real encode/decode through the ORT codec of the FP32 export,
    with some graphs replaced. Counts its calls (each is one full pass over the images)."""

    def __init__(self, fp32: Path, images: list[np.ndarray], threads: int = 1) -> None:
        self.codec = load_codec(fp32, threads=threads)
        self.opts = session_options(threads)
        self.float_sessions = dict(self.codec.sessions)
        self.images = images
        self.calls = 0
        self.reference = self.measure({})

    def session(self, model: Model) -> Any:
        src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
        return ort.InferenceSession(src, self.opts, providers=["CPUExecutionProvider"])

    def measure(self, graphs: dict[str, Model], indices: Iterable[int] | None = None) -> dict:
        """{psnr, bpp, per_image} with `graphs` swapped in (the rest as exported)."""
        self.calls += 1
        try:
            for name, model in graphs.items():
                self.codec.sessions[name] = self.session(model)
            psnrs, bpps = [], []
            for i in range(len(self.images)) if indices is None else indices:
                rgb8 = self.images[i]
                data = self.codec.encode(rgb8)
                value = psnr(rgb8, self.codec.decode(data))
                psnrs.append(100.0 if math.isinf(value) else value)
                bpps.append(len(data) * 8 / (rgb8.shape[0] * rgb8.shape[1]))
        finally:
            self.codec.sessions.update(self.float_sessions)
        return {"psnr": statistics.fmean(psnrs), "bpp": statistics.fmean(bpps), "per_image": psnrs}


@dataclass
class AnchorResult:
    tool: str
    graphs: dict[str, Path] = field(default_factory=dict)  # graph -> its INT8 file (kept ones)
    notes: list[str] = field(default_factory=list)  # per graph: what the tool did or why not
    seconds: float = 0.0  # the tool's wall time, both graphs, its evaluations included
    evaluations: int = 0  # calls of our evaluation function
    codec: Path | None = None  # the INT8 export folder assembled from `graphs`


class _Reader:
    """A calibration reader both ORT-style APIs accept (INC needs rewind())."""

    def __init__(self, arrays: list[np.ndarray]) -> None:
        self.arrays, self.i = arrays, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        self.i += 1
        return {"input": self.arrays[self.i - 1]} if self.i <= len(self.arrays) else None

    def rewind(self) -> None:
        self.i = 0

    def __len__(self) -> int:
        return len(self.arrays)


@dataclass
class GraphTask:
    """One graph for one tool: its FP32 file, calibration inputs, the graphs the tool already
    quantized (kept in place), the PSNR floor (FP32 - tolerance) and the trial budget."""

    name: str
    src: Path
    calib: list[np.ndarray]
    ev: Evaluator
    fixed: dict[str, Model]
    floor: float
    budget: int
    work: Path


def inc_graph(t: GraphTask) -> tuple[Path | None, str]:
    """INC autotune of one graph; its tolerance is relative to the PSNR INC measures itself."""
    from onnx_neural_compressor.quantization import config, tuning
    from onnxruntime.quantization import CalibrationMethod, QuantFormat

    logging.getLogger("onnx_neural_compressor").setLevel(logging.WARNING)  # configs as JSON
    ev, fixed, name, floor, budget, calib = t.ev, t.fixed, t.name, t.floor, t.budget, t.calib
    base = ev.measure(fixed)["psnr"]  # what INC's own baseline evaluation will return
    if base <= floor:
        return None, f"skipped: no budget left (PSNR {base:.3f} <= floor {floor:.3f})"
    # INC's own tuning space for static QDQ (op-type sets x per_channel), times the three
    # calibration methods our search space offers too; it stops at the first config within
    # tolerable_loss (relative: (baseline - q) / baseline)
    # (its expansion does not take a list of calibrate_method, so one set per method)
    methods = [CalibrationMethod.MinMax, CalibrationMethod.Entropy, CalibrationMethod.Percentile]
    config_set = [
        cfg
        for method in methods
        for cfg in config.StaticQuantConfig.get_config_set_for_tuning(
            quant_format=QuantFormat.QDQ,
            calibration_sampling_size=len(calib),
            calibrate_method=method,
        )
    ]
    tol = (base - floor) / base
    tune = tuning.TuningConfig(config_set=config_set, tolerable_loss=tol, max_trials=budget)

    def eval_fn(path: str) -> float:  # INC passes the candidate's file path
        return ev.measure({**fixed, name: path})["psnr"]

    try:
        model = tuning.autotune(str(t.src), tune, eval_fn, calibration_data_reader=_Reader(calib))
    except SystemExit:  # autotune calls exit(0) when no config meets the tolerance
        model = None
    if model is None:
        return None, f"no config within tolerable_loss {tol:.5f} in {budget} trials"
    out = t.work / f"inc.{name}.onnx"
    onnx.save(model, str(out))
    return out, f"autotune met tolerable_loss {tol:.5f} (relative to {base:.3f} dB)"


def nncf_graph(t: GraphTask, preset: str | None = None) -> tuple[Path | None, str]:
    """NNCF accuracy control of one graph: absolute max_drop in PSNR dB, per-image PSNR for
    its ranking of which quantizers to revert to float. preset None: NNCF's default
    (PERFORMANCE: symmetric, signed int8 activations); 'mixed': asymmetric activations (uint8),
    the kind ONNX Runtime's x86 int8 kernels are fastest with."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    ev, fixed, name, floor, calib = t.ev, t.fixed, t.name, t.floor, t.calib
    base = ev.measure(fixed)["psnr"]
    if base <= floor:
        return None, f"skipped: no budget left (PSNR {base:.3f} <= floor {floor:.3f})"

    def validate(model: onnx.ModelProto, items: Iterable[int]) -> tuple[float, list[float]]:
        got = ev.measure({**fixed, name: model}, list(items))
        return got["psnr"], got["per_image"]

    model = nncf.quantize_with_accuracy_control(
        onnx.load(str(t.src)),
        nncf.Dataset([{"input": a} for a in calib]),
        nncf.Dataset(list(range(len(ev.images)))),  # items: indexes of our images
        validate,
        max_drop=base - floor,
        drop_type=nncf.DropType.ABSOLUTE,
        subset_size=len(calib),
        target_device=nncf.TargetDevice.CPU,
        preset=nncf.QuantizationPreset.MIXED if preset == "mixed" else None,
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
            max_num_iterations=t.budget
        ),
    )
    out = t.work / f"nncf.{name}.onnx"
    onnx.save(model, str(out))
    got = ev.measure({**fixed, name: out})["psnr"]
    ok = got >= floor
    return (out if ok else None), (
        f"max_drop {base - floor:.3f} dB: result {base - got:.3f} dB below its baseline"
        + ("" if ok else " (over the tolerance: kept float)")
    )


#: the anchors bench/search.py --tools can name
TOOLS: dict[str, Callable[[GraphTask], tuple[Path | None, str]]] = {
    "inc": inc_graph,
    "nncf": nncf_graph,
    "nncf-mixed": lambda t: nncf_graph(t, "mixed"),
}


def run_anchor(
    tool: str,
    fp32: Path,
    calib: dict[str, list[np.ndarray]],
    ev: Evaluator,
    max_drop_db: float,
    budget: int,
    work: Path,
) -> AnchorResult:
    """One tool over g_a then g_s (module docstring); never raises for the tool's failures."""
    tune = TOOLS[tool]
    work.mkdir(parents=True, exist_ok=True)
    result = AnchorResult(tool)
    floor = ev.reference["psnr"] - max_drop_db
    calls, start = ev.calls, time.perf_counter()
    for name in GRAPHS:
        try:
            task = GraphTask(
                name,
                fp32 / f"{name}.onnx",
                calib[name],
                ev,
                dict(result.graphs),
                floor,
                budget,
                work,
            )
            path, note = tune(task)
        except Exception as e:  # a tool that cannot do the job is a result, recorded as such
            path, note = None, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
            log.exception("%s on %s", tool, name)
        if path is not None:
            result.graphs[name] = path
        result.notes.append(f"{name}: {note}")
    result.seconds = time.perf_counter() - start
    result.evaluations = ev.calls - calls
    return result


def assemble(fp32: Path, result: AnchorResult, out: Path, probe: np.ndarray) -> Path | None:
    """The tool's INT8 graphs put into our codec: a complete export folder (same container,
    tables and integer h_s), written by our quantizer's own folder writer."""
    if not result.graphs:
        return None
    manifest = mf.read(fp32)
    report = {"backend": f"anchor-{result.tool}", "params": {"notes": result.notes}}
    write_folder(fp32, manifest, dict(result.graphs), out, report, probe)
    result.codec = out
    return out
