"""Where a graph runs: ONNX Runtime or OpenVINO, in one place. Torch-free.

A `Backend` (runtime, precision, provider, threads, graph optimisation) creates one session per
graph of an export folder. Every session has ONNX Runtime's calling convention
(`get_inputs()[i].name / .shape`, `run(None, {name: array}) -> [array, ...]`), so the codec,
the rnn step loop and the quantizer's calibration run any of them the same way; only this
module knows which library is behind it. The export folder is the same for both: OpenVINO
reads the ONNX files (INT8 QDQ graphs included) as they are.

Precision: "fp32" everywhere; "bf16" only with OpenVINO on a CPU that has native BF16
(AVX512_BF16 / AMX). It is never a default: it changes the decoded pixels (measured max abs
difference ~0.009 on [0, 1] outputs) and, on the float hyper path, the scale indexes.

`tag` names what ran the hyper-decoder h_s. Files of the float hyper path record it
(container format 4; formats 1-2 are ONNX Runtime FP32 by definition), and a decoder whose tag
differs refuses the file: a float h_s run by other kernels can pick other scale indexes and
desynchronise the ANS stream. The integer hyper path (format 3) needs no tag.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from compressor.errors import CheckpointError, RecipeError
from compressor.threads import resolve_threads

RUNTIMES = ("ort", "openvino")
#: a codec-level choice, not a Backend: every graph opened in both runtimes and timed, the
#: faster kept (auto_session); the float h_s stays on ONNX Runtime (its kernels pick the
#: scale indexes a float-path file depends on)
AUTO = "auto"
#: runtime "auto" times each graph on the input a Kodak-sized picture (512 x 768) gives it:
#: the graph's input is the picture divided by its stride
PROBE_PICTURE = (512, 768)
PROBE_STRIDES = {"g_a": 1, "h_a": 16, "g_s": 16, "h_s": 64}
PROBE_RUNS = 3
#: precisions each runtime offers (the first is the default)
PRECISIONS = {"ort": ("fp32",), "openvino": ("fp32", "bf16")}
#: the float hyper-decoder's runtime as stored in format-4 files; 0 is what formats 1-2 imply
TAGS = {"ort-fp32": 0, "openvino-fp32": 1, "openvino-bf16": 2}

#: short names accepted for --provider (a full ONNX Runtime provider name works as well);
#: "openvino" is not among them: it selects the OpenVINO runtime itself (runtime_of)
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "dnnl": "DnnlExecutionProvider",
}
#: ONNX Runtime graph optimisation levels by name (ORT's default is "all")
OPTIMIZATION = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options(threads: int | None, optimization: str = "all") -> ort.SessionOptions:
    """None: every core this process may use; out of range: the RecipeError of resolve_threads."""
    if optimization not in OPTIMIZATION:
        raise RecipeError(
            f"graph optimisation {optimization!r} is not known; allowed: {', '.join(OPTIMIZATION)}"
        )
    opts = ort.SessionOptions()
    opts.graph_optimization_level = OPTIMIZATION[optimization]
    opts.intra_op_num_threads = resolve_threads(threads)
    opts.inter_op_num_threads = 1
    # idle threads sleep: on a busy machine a spinning one waits for a core it does not get
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # errors only: its warnings are not the user's business
    return opts


def providers_for(provider: str) -> list[str]:
    name = PROVIDERS.get(provider.lower(), provider)
    available = ort.get_available_providers()
    if name not in available:
        raise RecipeError(
            f"ONNX Runtime provider {provider!r} is not available here; available: "
            f"{', '.join(available)} (short names: {', '.join(PROVIDERS)}; 'openvino' selects "
            "the OpenVINO runtime)"
        )
    # CPU stays as the fallback for any operator the accelerator provider lacks.
    return [name] if name == "CPUExecutionProvider" else [name, "CPUExecutionProvider"]


def runtime_of(provider: str, runtime: str | None) -> str:
    """The runtime a (provider, runtime) pair selects: a recipe's `provider: openvino` is
    the OpenVINO runtime; anything else runs on ONNX Runtime unless `runtime` says so."""
    if runtime is None:
        return "openvino" if provider.lower() == "openvino" else "ort"
    if runtime not in (*RUNTIMES, AUTO):
        allowed = ", ".join((*RUNTIMES, AUTO))
        raise RecipeError(f"runtime {runtime!r} is not known; allowed: {allowed}")
    if runtime == AUTO and PROVIDERS.get(provider.lower(), provider) != "CPUExecutionProvider":
        raise RecipeError(
            f"runtime auto compares ONNX Runtime's CPU provider with OpenVINO on the CPU; "
            f"provider {provider!r} is not the CPU: use --runtime ort with it"
        )
    return runtime


def check_provider(provider: str) -> None:
    """A recipe's provider: an ONNX Runtime provider, or 'openvino' (RecipeError otherwise)."""
    if runtime_of(provider, None) == "ort":
        providers_for(provider)


@dataclass(frozen=True)
class Backend:
    """How every graph of a codec runs; `session(path)` loads one."""

    runtime: str = "ort"
    precision: str = "fp32"
    provider: str = "cpu"
    threads: int | None = None
    optimization: str = "all"

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise RecipeError(
                f"runtime {self.runtime!r} is not known; allowed: {', '.join(RUNTIMES)}"
            )
        allowed = PRECISIONS[self.runtime]
        if self.precision not in allowed:
            raise RecipeError(
                f"precision {self.precision!r} is not offered by runtime {self.runtime}; "
                f"allowed: {', '.join(allowed)}"
                + ("" if self.runtime == "openvino" else " (bf16: use --runtime openvino)")
            )
        if self.precision == "bf16" and "BF16" not in _ov_capabilities():
            raise RecipeError(
                "precision bf16 needs a CPU with native BF16 (AVX512_BF16 or AMX); this one "
                "has none: use fp32"
            )
        resolve_threads(self.threads)  # a bad thread count fails here, before any load

    @property
    def tag(self) -> str:
        """What ran h_s, as a float-path file records it (a key of TAGS)."""
        return f"{self.runtime}-{self.precision}"

    def session(self, path: Path) -> Any:
        """A session of one ONNX file; CheckpointError if the runtime cannot load it."""
        if self.runtime == "openvino":
            return OvSession(path, self.precision, resolve_threads(self.threads))
        opts = session_options(self.threads, self.optimization)
        providers = providers_for(self.provider)
        try:
            return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own pybind exception types
            raise CheckpointError(
                f"{path} cannot be loaded by ONNX Runtime ({_first(e)})"
            ) from None


@dataclass(frozen=True)
class Port:
    """One input of a session, as ONNX Runtime's NodeArg shows it (dynamic dims: None)."""

    name: str
    shape: list[int | None]


class OvSession:
    """An OpenVINO compiled model with ONNX Runtime's session interface.

    Shapes stay dynamic (one compile serves every image size); one infer request is reused,
    and outputs are copied out of it, so a returned array is never overwritten by the next run.
    """

    def __init__(self, path: Path, precision: str, threads: int) -> None:
        import openvino as ov

        config = {
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            # pinning threads to cores hurts on a machine shared with other processes
            "ENABLE_CPU_PINNING": False,
        }
        try:
            self.compiled = _ov_core().compile_model(str(path), "CPU", config)
        except Exception as e:  # OpenVINO raises RuntimeError subclasses with long texts
            raise CheckpointError(f"{path} cannot be loaded by OpenVINO ({_first(e)})") from None
        self._request = self.compiled.create_infer_request()
        self._inputs = [
            Port(
                p.get_any_name(),
                [d.get_length() if d.is_static else None for d in p.get_partial_shape()],
            )
            for p in self.compiled.inputs
        ]
        self._outputs = list(self.compiled.outputs)
        self._ov = ov

    def get_inputs(self) -> list[Port]:
        return list(self._inputs)

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if output_names is not None:
            raise ValueError("OvSession.run returns every output; pass None as ORT callers do")
        result = self._request.infer(feeds, share_inputs=False, share_outputs=False)
        return [np.asarray(result[port]) for port in self._outputs]


@cache
def _ov_core() -> Any:
    import openvino as ov

    return ov.Core()


@cache
def _ov_capabilities() -> tuple[str, ...]:
    return tuple(_ov_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def _first(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def auto_session(path: Path, ort_backend: Backend) -> tuple[Any, str]:
    """Runtime "auto" for one graph: (session, "ort" | "openvino"), the faster of the two on
    this machine (ONNX Runtime as `ort_backend` runs it, OpenVINO with its thread count).
    Both open the same file (a QDQ INT8 graph runs INT8 in both; the f32 hint keeps float
    graphs float) and run a Kodak-sized input, the best of PROBE_RUNS after one warm-up each,
    interleaved. ONNX Runtime without OpenVINO installed (the torch-free wheel without its
    [openvino] extra), for a graph with no probe input (PROBE_STRIDES) and for one OpenVINO
    cannot load (its low-precision passes refuse some QDQ graphs)."""
    first = ort_backend.session(path)
    feeds = probe_feeds(path.stem, first)
    if feeds is None or not openvino_installed():
        return first, "ort"
    try:
        second = Backend("openvino", "fp32", "cpu", ort_backend.threads).session(path)
    except CheckpointError:  # OpenVINO's transformations refuse some QDQ graphs ORT runs
        return first, "ort"
    best = {"ort": float("inf"), "openvino": float("inf")}
    for _ in range(PROBE_RUNS + 1):  # the first round warms both up; it is timed, not trusted
        for name, session in (("ort", first), ("openvino", second)):
            start = time.perf_counter()
            session.run(None, feeds)
            best[name] = min(best[name], time.perf_counter() - start)
    return (first, "ort") if best["ort"] <= best["openvino"] else (second, "openvino")


def probe_feeds(graph: str, session: Any) -> dict[str, np.ndarray] | None:
    """The input `graph` takes from a PROBE_PICTURE-sized picture (seeded noise), or None."""
    inputs = session.get_inputs()
    stride = PROBE_STRIDES.get(graph)
    if stride is None or len(inputs) != 1 or len(inputs[0].shape) != 4:
        return None
    channels = inputs[0].shape[1]
    if not isinstance(channels, int):
        return None
    h, w = (-(-side // stride) for side in PROBE_PICTURE)
    noise = np.random.default_rng(0).standard_normal((1, channels, h, w)).astype(np.float32)
    return {inputs[0].name: noise}


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None
