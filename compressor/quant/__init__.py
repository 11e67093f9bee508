"""Quantization backends (QUANTIZERS): an export folder in, an INT8 export folder out.

`QUANTIZERS.get(name)(src, out, params, images, threads) -> report` is what the recipe step
and the CLI command call. Implemented: `ort-static` (ONNX Runtime static PTQ, QDQ),
`inc-static` (Neural Compressor's PT2E calibration carried into ORT's QDQ graph) and `qat`
(fake-quantized fine-tuning, then ORT's QDQ graph with the learned ranges). ort-static
takes an export of any kind, rnn's recurrent step graphs included (the kind picks the graphs
and their calibration inputs). The torch backends (TORCH_BACKENDS) also take `checkpoint=`
(the model the export was made from) and `train_images=`; they need a family exported one
graph per component.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any

from compressor.quant.config import (
    BACKENDS,
    COMPONENTS,
    RULES,
    TORCH_BACKENDS,
    Accuracy,
    Calibration,
    QuantParams,
)
from compressor.registry import Registry

#: (src export, out, params, calibration images, threads[, checkpoint=, train_images=])
Backend = Callable[..., dict[str, Any]]
QUANTIZERS: Registry[Backend] = Registry("quantization backend")


def _lazy(module: str, name: str) -> Backend:
    """A backend imported on first call: the torch backends pull in torch, the exporter and
    Neural Compressor, none of them needed to parse a recipe."""

    def run(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return getattr(import_module(module), name)(*args, **kwargs)  # type: ignore[no-any-return]

    return run


def _register() -> None:
    from compressor.quant.ort_backend import run_ort_static

    QUANTIZERS.add("ort-static", run_ort_static)
    QUANTIZERS.add("inc-static", _lazy("compressor.quant.inc", "run_inc_static"))
    QUANTIZERS.add("qat", _lazy("compressor.quant.qat", "run_qat"))
    assert tuple(QUANTIZERS.names()) == tuple(sorted(BACKENDS))  # config's list is this one


_register()

__all__ = [
    "BACKENDS",
    "COMPONENTS",
    "QUANTIZERS",
    "RULES",
    "TORCH_BACKENDS",
    "Accuracy",
    "Calibration",
    "QuantParams",
]
