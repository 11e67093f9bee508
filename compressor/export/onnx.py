"""Export a CodecAdapter: one ONNX graph per component, entropy tables, manifest.json.

EXPORTERS holds one `Exporter` per model family (the adapter's `family`). Most families
give an `ExportSpec` (their graphs as torch modules, their entropy tables, their kind;
`register_exporter(family)`), and everything else (rewrites, ONNX export with dynamic
height/width, checker, parity against torch, hashes, manifest) is shared here. A family whose
graphs are not one tensor in, one out (rnn: recurrent steps with states) writes its whole
folder itself (`register_folder_exporter(family)`). The runtime (compressor.runtime) reads
what either writes.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from compressor.artifact import versions
from compressor.errors import CheckpointError, RecipeError
from compressor.export import rewrites
from compressor.fsutil import atomic_dir
from compressor.models.base import CodecAdapter
from compressor.registry import Registry
from compressor.runtime import integer as ri
from compressor.runtime import manifest as mf

log = logging.getLogger(__name__)

MIN_OPSET = 17
MAX_OPSET = 20  # highest the TorchScript exporter writes (torch.onnx._constants)
#: export-time parity bound, relative to the largest reference magnitude (at least 1)
PARITY_TOL = 1e-4
#: how hyperprior kinds pick their scale indexes: "integer" (runtime.integer, format 3 files
#: that decode bit-exactly anywhere) or "float" (h_s.onnx, format 2, tied to one machine)
HYPER_PATHS = ("integer", "float")
DEFAULT_HYPER = "integer"
GDN_NEEDS_REWRITE = (
    "gdn_in_phases moves the (I)GDN onto the phase convolutions of the rewritten decoder: "
    "it needs rewrite: true"
)


@dataclass
class ExportSpec:
    """What a model family hands to the exporter."""

    kind: str  # one of compressor.runtime.manifest.KINDS
    graphs: dict[str, nn.Module]  # g_a, g_s (+ h_a, h_s): exactly what each graph computes
    tables: dict[str, np.ndarray]  # eb_* (+ gc_*) arrays, see compressor.runtime.codec


Hook = Callable[[CodecAdapter], ExportSpec]
#: (model, out_dir, *, rewrite, opset, overwrite) -> out_dir
FolderHook = Callable[..., Path]


@dataclass(frozen=True)
class Exporter:
    """How a family exports: `spec` gives the graphs and tables export_model writes;
    `folder` writes the whole export folder itself (exactly one of the two is set)."""

    spec: Hook | None = None
    folder: FolderHook | None = None


EXPORTERS: Registry[Exporter] = Registry("exporter of model family")


def register_exporter(family: str) -> Callable[[Hook], Hook]:
    def add(hook: Hook) -> Hook:
        EXPORTERS.add(family, Exporter(spec=hook))
        return hook

    return add


def register_folder_exporter(family: str) -> Callable[[FolderHook], FolderHook]:
    def add(hook: FolderHook) -> FolderHook:
        EXPORTERS.add(family, Exporter(folder=hook))
        return hook

    return add


def exporter_of(model: CodecAdapter) -> Exporter:
    if model.family not in EXPORTERS:
        raise CheckpointError(
            f"model family {model.family!r} ({model.arch}) has no ONNX exporter; families "
            f"with one: {', '.join(EXPORTERS.names())}"
        )
    return EXPORTERS.get(model.family)


def spec_of(model: CodecAdapter) -> ExportSpec:
    """The graphs and tables of a spec-exporting family (all but the folder-writing ones)."""
    hook = exporter_of(model).spec
    if hook is None:
        raise CheckpointError(
            f"model family {model.family!r} ({model.arch}) exports its own folder layout, "
            "not one graph per component; use export_model"
        )
    spec = hook(model)
    if spec.kind not in mf.KINDS or set(spec.graphs) != set(mf.GRAPHS[spec.kind]):
        raise CheckpointError(f"exporter of {model.family} gave an invalid spec ({spec.kind})")
    return spec


def example_image(h: int, w: int) -> torch.Tensor:
    """A deterministic photo-like input (gradients and texture), 1x3xHxW in [0, 1]."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    texture = 0.5 + 0.25 * torch.sin(23.0 * xx + 17.0 * yy) * torch.cos(11.0 * yy)
    x = torch.stack([xx, yy, texture]) * 0.8 + 0.1
    return x[None].clamp(0, 1)


def graph_inputs(spec: ExportSpec, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input each graph sees when compressing `x` (quantized as CompressAI does)."""
    g = spec.graphs
    medians = torch.from_numpy(spec.tables["eb_medians"]).reshape(1, -1, 1, 1)
    with torch.no_grad():
        y = g["g_a"](x)
        if spec.kind == "factorized":
            return {"g_a": x, "g_s": torch.round(y - medians) + medians}
        z = g["h_a"](y)
        z_hat = torch.round(z - medians) + medians
        params = g["h_s"](z_hat)
        if spec.kind == "mean-scale-hyperprior":
            means = params.chunk(2, 1)[1]
            y_hat = torch.round(y - means) + means
        else:
            y_hat = torch.round(y)
    return {"g_a": x, "h_a": y, "h_s": z_hat, "g_s": y_hat}


def export_graph(module: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    """One module to ONNX, dynamic batch/height/width, checked by onnx.checker."""
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings(), torch.no_grad():
        # the TorchScript exporter is the one that needs no onnxscript; its deprecation
        # notice and tracer warnings say nothing about this fixed-shape-free CNN
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": axes, "output": axes},
            do_constant_folding=True,
        )
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as e:
        raise CheckpointError(f"exported graph {path.name} fails onnx.checker: {e}") from None


def parity(
    spec: ExportSpec, folder: Path, images: list[torch.Tensor], threads: int = 1
) -> dict[str, float]:
    """Max abs difference of every exported graph vs torch, over padded 1x3xHxW images."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    worst = dict.fromkeys(spec.graphs, 0.0)
    for x in images:
        inputs = graph_inputs(spec, x)
        for name, module in spec.graphs.items():
            sess = ort.InferenceSession(
                str(folder / f"{name}.onnx"), opts, providers=["CPUExecutionProvider"]
            )
            with torch.no_grad():
                ref = module(inputs[name]).numpy()
            got = sess.run(None, {"input": inputs[name].numpy()})[0]
            if got.shape != ref.shape:
                raise CheckpointError(f"graph {name} gives shape {got.shape}, torch {ref.shape}")
            # np.max, not max(): one NaN must fail the check (max(0.0, nan) is 0.0)
            worst[name] = float(np.max([worst[name], np.abs(got - ref).max()]))
    return worst


def export_model(
    model: CodecAdapter,
    out_dir: Path,
    *,
    rewrite: bool = True,
    opset: int = 17,
    overwrite: bool = False,
    hyper: str = DEFAULT_HYPER,
    gdn_in_phases: bool = False,
) -> Path:
    """Write the export folder of `model` (atomically) and return it. `gdn_in_phases`: run
    each (I)GDN that follows a phase-decomposed deconvolution on its phases (rewrites.
    gdn_into_phases; exact in float, recorded in the manifest for the torch-side quantizers)."""
    _check_options(model, opset, hyper, rewrite=rewrite, gdn_in_phases=gdn_in_phases)
    folder_hook = exporter_of(model).folder
    if folder_hook is not None:
        return folder_hook(model, out_dir, rewrite=rewrite, opset=opset, overwrite=overwrite)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise RecipeError(f"export folder {out_dir} exists; choose another or allow overwrite")
    model.eval()
    spec = spec_of(model)
    m = model.pad_multiple
    probe = graph_inputs(spec, example_image(2 * m, 3 * m))
    latents = _latents(spec, probe, m)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        for name, module in spec.graphs.items():
            graph = rewrites.rewrite(module, subpixel=rewrite, move_gdn=gdn_in_phases)
            export_graph(graph, probe[name], tmp / f"{name}.onnx", opset)
        # compressed: the Gaussian CDFs are ~3 MB raw, ~0.1 MB packed (np.load reads both)
        np.savez_compressed(tmp / mf.TABLES, **spec.tables)
        integer = _integer_tables(spec, tmp) if hyper == "integer" else None
        # a second, transposed size proves the height/width axes really are dynamic
        images = [example_image(2 * m, 3 * m), example_image(3 * m, m)]
        diffs = parity(spec, tmp, images)
        _check_parity(spec, diffs, probe)
        names = [f"{g}.onnx" for g in spec.graphs] + [mf.TABLES] + ([ri.FILE] if integer else [])
        manifest = mf.Manifest(
            arch=model.arch,
            kind=spec.kind,
            pad_multiple=m,
            latents=latents,
            files=mf.hash_files(tmp, names),
            opset=opset,
            extra={
                "family": model.family,
                "config": model.config,
                "rewritten": rewrite,
                # torch_src.rewrite_like reads both: QAT / inc-static rewrite the same way
                "gdn_in_phases": gdn_in_phases,
                "parity_max_abs_diff": diffs,
                "hyper": "integer" if integer else "float",
                **({"integer_hyper": integer} if integer else {}),
                "versions": versions(),
            },
        )
        manifest.write(tmp)
    log.info("exported %s (%s) to %s, id %s", model.arch, spec.kind, out_dir, manifest.model_id)
    return out_dir


def _check_options(
    model: CodecAdapter, opset: int, hyper: str, *, rewrite: bool, gdn_in_phases: bool
) -> None:
    """The export options, before any work."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise RecipeError(f"opset {opset} is not supported; allowed: {MIN_OPSET}..{MAX_OPSET}")
    if hyper not in HYPER_PATHS:
        raise RecipeError(f"hyper path {hyper!r} is not known; allowed: {', '.join(HYPER_PATHS)}")
    if gdn_in_phases and not rewrite:
        raise RecipeError(GDN_NEEDS_REWRITE)
    if gdn_in_phases and exporter_of(model).folder is not None:
        # such a family (rnn) writes its own graphs: none is rewritten by `rewrites.rewrite`
        raise RecipeError(
            f"gdn_in_phases applies to families exported one graph per component; "
            f"{model.family} ({model.arch}) writes its own graphs: drop gdn_in_phases"
        )


def _integer_tables(spec: ExportSpec, folder: Path) -> dict[str, float] | None:
    """Write hyper_int.npz for a hyperprior kind (None for others); its agreement with h_s."""
    if spec.kind not in mf.INTEGER_KINDS:
        return None
    from compressor.export import integer_hs  # torch side of the integer path

    calib = [graph_inputs(spec, example_image(h, w))["h_s"] for h, w in ((256, 384), (384, 128))]
    medians = spec.tables["eb_medians"]
    hyper = integer_hs.build(
        spec.graphs["h_s"], spec.kind, medians, spec.tables["gc_scale_table"], calib
    )
    np.savez_compressed(folder / ri.FILE, **hyper.to_arrays())
    return integer_hs.agreement(spec, hyper, calib)


def _latents(
    spec: ExportSpec, probe: dict[str, torch.Tensor], multiple: int
) -> dict[str, dict[str, int]]:
    """Channels and downsampling factor of y (and z), measured on the probe input."""
    h = probe["g_a"].shape[2]
    named = (
        {"y": probe["g_s"]}
        if spec.kind == "factorized"
        else {
            "y": probe["g_s"],
            "z": probe["h_s"],
        }
    )
    out = {}
    for name, t in named.items():
        stride = h // t.shape[2]
        if stride * t.shape[2] != h or multiple % stride:
            raise CheckpointError(
                f"latent {name} stride {h}/{t.shape[2]} does not divide {multiple}"
            )
        out[name] = {"channels": int(t.shape[1]), "stride": int(stride)}
    return out


def _check_parity(
    spec: ExportSpec, diffs: dict[str, float], probe: dict[str, torch.Tensor]
) -> None:
    for name, diff in diffs.items():
        with torch.no_grad():
            scale = max(1.0, float(spec.graphs[name](probe[name]).abs().max()))
        if not diff <= PARITY_TOL * scale:
            raise CheckpointError(
                f"exported graph {name} differs from torch by {diff:.3g} (allowed "
                f"{PARITY_TOL * scale:.3g}); the export or a rewrite is wrong"
            )
