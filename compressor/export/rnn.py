"""Export of the recurrent codec (family `rnn`): one ONNX graph per recurrent step.

    encoder_step: residual, h1, c1, h2, c2, h3, c3          -> bits (+-1), 6 new states
    decoder_step: bits, h1, c1, ..., h4, c4                  -> image increment, 8 new states

The codec loops them (x_hat starts at 0.5; residual = x - x_hat; x_hat += increment), so the
CompressAI-shaped path of export_model (one single-tensor graph per component, entropy
tables, kinds factorized/hyperprior) does not fit: this module writes the whole folder itself
(a folder exporter in EXPORTERS), with the same manifest.json format under kind "rnn". The
manifest records the iterations and the state strides, so the runtime's codec of this kind
(compressor.runtime.rnn.RnnOrtCodec, loaded by compressor.runtime.load_codec) needs only the
folder; the ort-static quantizer (compressor.quant) quantizes both step graphs.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from compressor.artifact import versions
from compressor.errors import CheckpointError, RecipeError
from compressor.export.onnx import (
    MAX_OPSET,
    MIN_OPSET,
    PARITY_TOL,
    example_image,
    register_folder_exporter,
)
from compressor.fsutil import atomic_dir
from compressor.models.base import CodecAdapter
from compressor.models.rnn import Decoder, Encoder, RnnAdapter, binarize, zero_states
from compressor.runtime import manifest as mf
from compressor.runtime.codec import session_options
from compressor.runtime.rnn import GRAPHS, KIND

log = logging.getLogger(__name__)


class EncoderStep(nn.Module):
    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, residual: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        z, *new = self.encoder(residual, *states)
        return (binarize(z, stochastic=False), *new)


class DecoderStep(nn.Module):
    def __init__(self, decoder: Decoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, bits: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.decoder(bits, *states))


def state_names(cells: int) -> list[str]:
    return [f"{s}{i}" for i in range(1, cells + 1) for s in ("h", "c")]


def io_names(graph: str, cells: int) -> tuple[list[str], list[str]]:
    first_in, first_out = ("residual", "bits") if graph == "encoder_step" else ("bits", "increment")
    states = state_names(cells)
    return [first_in, *states], [first_out, *(f"{s}_next" for s in states)]


def step_modules(model: RnnAdapter) -> dict[str, nn.Module]:
    return {
        "encoder_step": EncoderStep(model.rnet.encoder).eval(),
        "decoder_step": DecoderStep(model.rnet.decoder).eval(),
    }


def strides(model: RnnAdapter) -> dict[str, list[int]]:
    """Resolution divisor of each graph input (the first is the residual / the bits)."""
    enc, dec = model.rnet.encoder, model.rnet.decoder
    return {
        "encoder_step": [1, *(s for s in enc.strides for _ in "hc")],
        "decoder_step": [16, *(s for s in dec.strides for _ in "hc")],
    }


@torch.no_grad()
def step_inputs(model: RnnAdapter, x: torch.Tensor) -> dict[str, list[tuple[torch.Tensor, ...]]]:
    """The inputs of every step call while the torch model compresses x (hard bits)."""
    steps = step_modules(model)
    enc, dec = zero_states(model.rnet.encoder, x), zero_states(model.rnet.decoder, x)
    x_hat = torch.full_like(x, 0.5)
    z: dict[str, list[tuple[torch.Tensor, ...]]] = {name: [] for name in GRAPHS}
    for _ in range(int(model.config["iterations"])):
        args = (x - x_hat, *enc)
        z["encoder_step"].append(args)
        b, *enc = steps["encoder_step"](*args)
        z["decoder_step"].append((b, *dec))
        inc, *dec = steps["decoder_step"](b, *dec)
        x_hat = x_hat + inc
    return z


def export_step(
    module: nn.Module, args: tuple[torch.Tensor, ...], graph: str, path: Path, opset: int
) -> None:
    """One step graph with every height/width (and batch) axis dynamic; onnx.checker'd."""
    inputs, outputs = io_names(graph, (len(args) - 1) // 2)
    axes = {n: {0: "batch", 2: f"{n}_height", 3: f"{n}_width"} for n in inputs + outputs}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(
            module, args, str(path), dynamo=False, opset_version=opset, input_names=inputs,
            output_names=outputs, dynamic_axes=axes, do_constant_folding=True,
        )  # fmt: skip
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as e:
        raise CheckpointError(f"exported graph {path.name} fails onnx.checker: {e}") from None


def step_parity(model: RnnAdapter, folder: Path, images: list[torch.Tensor]) -> dict[str, Any]:
    """Max abs difference of each step graph vs torch on the inputs torch feeds it over all
    iterations, relative to max(1, largest output); plus the share of flipped bits."""
    steps = step_modules(model)
    opts = session_options(1)
    worst: dict[str, Any] = {g: 0.0 for g in GRAPHS} | {"bits_flipped": 0.0}
    for x in images:
        calls = step_inputs(model, x)
        for g in GRAPHS:
            sess = ort.InferenceSession(
                str(folder / f"{g}.onnx"), opts, providers=["CPUExecutionProvider"]
            )
            names = [i.name for i in sess.get_inputs()]
            for args in calls[g]:
                with torch.no_grad():
                    ref = [t.numpy() for t in steps[g](*args)]
                got = sess.run(None, {n: a.numpy() for n, a in zip(names, args, strict=True)})
                scale = max(1.0, *(float(np.abs(r).max()) for r in ref))
                diff = max(float(np.abs(a - r).max()) for a, r in zip(got, ref, strict=True))
                worst[g] = max(worst[g], diff / scale)
                if g == "encoder_step":
                    flipped = float(np.mean(got[0] != ref[0]))
                    worst["bits_flipped"] = max(worst["bits_flipped"], flipped)
    return worst


@register_folder_exporter("rnn")
def export_rnn(
    model: CodecAdapter,
    out_dir: Path,
    *,
    rewrite: bool = True,
    opset: int = 17,
    overwrite: bool = False,
) -> Path:
    """Write the export folder of an rnn model (atomically): 2 step graphs + manifest.json."""
    if not isinstance(model, RnnAdapter):
        raise CheckpointError(f"{model.arch} is not an rnn model")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise RecipeError(f"opset {opset} is not supported; allowed: {MIN_OPSET}..{MAX_OPSET}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise RecipeError(f"export folder {out_dir} exists; choose another or allow overwrite")
    model.eval()
    steps = step_modules(model)
    probe = step_inputs(model, example_image(32, 48))
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        for g in GRAPHS:
            export_step(steps[g], probe[g][0], g, tmp / f"{g}.onnx", opset)
        # a second, transposed size proves the height/width axes really are dynamic
        diffs = step_parity(model, tmp, [example_image(32, 48), example_image(48, 16)])
        for g in GRAPHS:
            if not diffs[g] <= PARITY_TOL:
                raise CheckpointError(
                    f"exported graph {g} differs from torch by {diffs[g]:.3g} (relative; "
                    f"allowed {PARITY_TOL:g}); the export is wrong"
                )
        manifest = mf.Manifest(
            arch=model.arch,
            kind=KIND,
            pad_multiple=model.pad_multiple,
            latents={"bits": {"channels": int(model.config["M"]), "stride": 16}},
            files=mf.hash_files(tmp, [f"{g}.onnx" for g in GRAPHS]),
            opset=opset,
            extra={
                "family": model.family,
                "config": model.config,
                "iterations": int(model.config["iterations"]),
                "input_strides": strides(model),
                "parity_max_rel_diff": diffs,
                "versions": versions(),
            },
        )
        manifest.write(tmp)
    log.info("exported %s (rnn steps) to %s, id %s", model.arch, out_dir, manifest.model_id)
    return out_dir
