"""The folder side of every quantization backend: the float export checked before any work,
the INT8 export written as a new, complete export folder.

The result is an ordinary export: quantized graphs, the untouched graphs and entropy tables
copied, and a new manifest.json whose file hashes give it its own model id (a bitstream of
the float export is refused by the INT8 one and vice versa). It is proven to round-trip an
image before it is renamed into place.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from compressor.errors import CheckpointError, RecipeError
from compressor.fsutil import atomic_dir
from compressor.quant.config import QuantParams, component_graphs
from compressor.runtime import load_codec
from compressor.runtime import manifest as mf

log = logging.getLogger(__name__)


def check_source(folder: Path, params: QuantParams) -> mf.Manifest:
    """The float export, verified; every requested component must exist in it."""
    manifest = mf.read(folder)
    mf.verify(folder, manifest)
    if manifest.extra.get("quantization"):
        raise RecipeError(f"{folder} is already quantized; quantize the float export instead")
    present = mf.GRAPHS[manifest.kind]
    names = component_graphs(manifest.kind)
    for comp in params.components:
        if names.get(comp) not in present:
            raise RecipeError(
                f"component {comp}: a {manifest.kind} codec has no {names.get(comp, comp)} "
                f"graph; its components: {', '.join(c for c, g in names.items() if g in present)}"
            )
    if manifest.extra.get("rewritten") is False and "decoder" in params.components:
        log.warning(
            "%s was exported without the ConvTranspose rewrite: its transposed convolutions "
            "stay float in INT8 (slower than FP32); export with rewrite: true",
            folder,
        )
    return manifest


def write_folder(
    src: Path,
    manifest: mf.Manifest,
    files: dict[str, Path],
    out: Path,
    report: dict[str, Any],
    probe: np.ndarray,
) -> str:
    """The new export folder (atomic): graphs, tables, manifest; returns its model id."""
    with atomic_dir(Path(out)) as tmp:
        for name in manifest.files:
            graph = name.removesuffix(".onnx")
            shutil.copyfile(files[graph] if graph in files else src / name, tmp / name)
        extra = dict(manifest.extra)
        extra["quantization"] = {
            "backend": report["backend"],
            "source_model_id": manifest.model_id,
            "graphs": sorted(files),
            "params": report["params"],
            # h_s picks the entropy tables: quantized, this one graph runs on both sides
            "hyper_decoder_shared": "h_s" in files,
        }
        new = mf.Manifest(
            arch=manifest.arch,
            kind=manifest.kind,
            pad_multiple=manifest.pad_multiple,
            latents=manifest.latents,
            files=mf.hash_files(tmp, list(manifest.files)),
            opset=manifest.opset,
            extra=extra,
        )
        new.write(tmp)
        roundtrip(tmp, probe)
    log.info("wrote INT8 export %s (id %s)", out, new.model_id)
    return new.model_id


def roundtrip(folder: Path, rgb8: np.ndarray) -> None:
    """The quantized codec must decode its own bitstream to the image's size."""
    codec = load_codec(folder, threads=1)
    try:
        rec = codec.decode(codec.encode(rgb8))
    except Exception as e:
        raise CheckpointError(f"the quantized codec cannot decode its own bitstream ({e})") from e
    if rec.shape != rgb8.shape:
        raise CheckpointError(f"the quantized codec decodes to {rec.shape}, not {rgb8.shape}")
