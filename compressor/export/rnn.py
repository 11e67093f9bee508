"""Export of the recurrent codec (family `rnn`): one ONNX graph per recurrent step.

    encoder_step: residual, h1, c1, h2, c2, h3, c3          -> bits (+-1), 6 new states
    decoder_step: bits, h1, c1, ..., h4, c4                  -> image increment, 8 new states

The codec loops them (x_hat starts at 0.5; residual = x - x_hat; x_hat += increment), so the
CompressAI-shaped path of export_model (one single-tensor graph per component, entropy
tables, kinds factorized/hyperprior) does not fit: this module writes the whole folder itself
(`FOLDER_EXPORTERS["rnn"]`), with the same manifest.json format under a new kind "rnn".
The manifest records the state strides, so the ORT codec below needs only the folder. The
deployable runtime (compressor.runtime) does not decode kind "rnn": `RnnOrtCodec` here is
its ONNX Runtime codec (numpy + onnxruntime in the loop; it lives beside the torch exporter).
`quantize_rnn` runs the ort-static quantizer (compressor.quant.ort_static) on both graphs.
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from compressor import bitstream
from compressor.artifact import versions
from compressor.errors import CheckpointError, RecipeError
from compressor.export.onnx import (
    FOLDER_EXPORTERS,
    MAX_OPSET,
    MIN_OPSET,
    PARITY_TOL,
    example_image,
)
from compressor.fsutil import atomic_dir
from compressor.models.base import CodecAdapter
from compressor.models.rnn import (
    Decoder,
    Encoder,
    RnnAdapter,
    binarize,
    pack_codes,
    unpack_codes,
    zero_states,
)
from compressor.quant.config import QuantParams
from compressor.runtime import image
from compressor.runtime import manifest as mf
from compressor.runtime.codec import session_options

log = logging.getLogger(__name__)

KIND = "rnn"
GRAPHS = ("encoder_step", "decoder_step")


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


FOLDER_EXPORTERS["rnn"] = export_rnn


class RnnOrtCodec:
    """The Codec protocol over an rnn export folder: ONNX Runtime runs the step loop. Its
    bitstream is TorchCodec's (height, width varints + the packed codes)."""

    def __init__(self, folder: Path, threads: int | None = 1, name: str | None = None) -> None:
        folder = Path(folder)
        data = json.loads((folder / mf.MANIFEST).read_text(encoding="utf-8"))
        if data.get("kind") != KIND:
            raise CheckpointError(f"{folder} is not an rnn export (kind {data.get('kind')!r})")
        for fname, digest in data["files"].items():
            if mf.file_sha256(folder / fname) != digest:
                raise CheckpointError(f"{folder}: {fname} differs from the manifest's hash")
        opts = session_options(threads)
        self.sessions = {
            g: ort.InferenceSession(
                str(folder / f"{g}.onnx"), opts, providers=["CPUExecutionProvider"]
            )
            for g in GRAPHS
        }
        self.strides: dict[str, list[int]] = data["input_strides"]
        self.iterations = int(data["iterations"])
        self.bits = int(data["latents"]["bits"]["channels"])
        self.name = name or f"onnx:{folder.name}"
        self.record: dict[str, list[dict[str, np.ndarray]]] | None = None  # calibration taps

    def zeros(self, graph: str, h: int, w: int) -> list[np.ndarray]:
        ins = self.sessions[graph].get_inputs()[1:]
        return [
            np.zeros((1, int(i.shape[1]), h // s, w // s), np.float32)
            for i, s in zip(ins, self.strides[graph][1:], strict=True)
        ]

    def _step(self, graph: str, first: np.ndarray, states: list[np.ndarray]) -> list[np.ndarray]:
        sess = self.sessions[graph]
        feed = {i.name: a for i, a in zip(sess.get_inputs(), [first, *states], strict=True)}
        if self.record is not None:
            self.record[graph].append(feed)
        return list(sess.run(None, feed))

    def decode_codes(self, codes: np.ndarray) -> np.ndarray:
        _, _, h, w = codes.shape
        dec = self.zeros("decoder_step", 16 * h, 16 * w)
        x_hat = np.full((1, 3, 16 * h, 16 * w), 0.5, np.float32)
        for b in codes:
            inc, *dec = self._step("decoder_step", np.ascontiguousarray(b[None]), dec)
            x_hat = x_hat + inc
        return x_hat

    def encode(self, rgb8: np.ndarray) -> bytes:
        h, w = rgb8.shape[:2]
        pad = image.padding(h, w, 16)
        x = image.to_input(image.check_rgb8(rgb8), pad)
        enc = self.zeros("encoder_step", *x.shape[2:])
        dec = self.zeros("decoder_step", *x.shape[2:])
        x_hat = np.full_like(x, 0.5)
        codes = []
        for _ in range(self.iterations):
            b, *enc = self._step("encoder_step", x - x_hat, enc)
            inc, *dec = self._step("decoder_step", b, dec)
            x_hat = x_hat + inc
            codes.append(b[0])
        payload = pack_codes(np.stack(codes))
        return bitstream.write_varint(h) + bitstream.write_varint(w) + payload

    def decode(self, data: bytes) -> np.ndarray:
        h, pos = bitstream.read_varint(data, 0)
        w, pos = bitstream.read_varint(data, pos)
        x_hat = self.decode_codes(unpack_codes(data[pos:], self.bits))
        return image.from_output(x_hat, image.padding(h, w, 16))


def quantize_rnn(
    src: Path, out: Path, images: list[np.ndarray], params: QuantParams | None = None
) -> dict[str, Any]:
    """INT8 (QDQ, Conv only) copies of both step graphs, calibrated on the inputs each step
    sees while the float export encodes `images` (training images, never the test set)."""
    from compressor.quant import ort_static
    from compressor.quant.calib import centre_crop

    params = params or QuantParams()
    codec = RnnOrtCodec(src)
    codec.record = {g: [] for g in GRAPHS}
    for rgb8 in images[: params.calibration.images]:
        codec.encode(centre_crop(rgb8, params.calibration.crop))
    calib = codec.record
    src = Path(src)
    with tempfile.TemporaryDirectory(prefix="quant.") as t, atomic_dir(Path(out)) as tmp:
        work = Path(t)
        for g in GRAPHS:
            source, note = ort_static.preprocess(src / f"{g}.onnx", work / f"{g}.float.onnx")
            job = ort_static.GraphJob(g, source, calib[g], work / f"{g}.ranges.json")
            job.preprocess_note = note
            ort_static.quantize_graph(job, params, tmp / f"{g}.onnx")
        data = json.loads((src / mf.MANIFEST).read_text(encoding="utf-8"))
        source_id = data.get("model_id")
        data["files"] = mf.hash_files(tmp, [f"{g}.onnx" for g in GRAPHS])
        data["model_id"] = mf.model_id_of(KIND, data["files"])
        data["quantization"] = {"backend": "ort-static", "source_model_id": source_id,
                                "params": params.model_dump(mode="json")}  # fmt: skip
        (tmp / mf.MANIFEST).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return {"graphs": list(GRAPHS), "calibration_calls": {g: len(calib[g]) for g in GRAPHS}}
