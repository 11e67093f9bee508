"""manifest.json of an exported codec folder: what is in it, and proof it is whole.

Torch-free, so both the exporter and the deployable runtime (and later the ONNX quantizer,
which writes new graphs into a new folder) read and write it through this one module.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compressor.errors import CheckpointError
from compressor.fsutil import write_text

log = logging.getLogger(__name__)

FORMAT = "compressor-export/1"
MANIFEST = "manifest.json"
TABLES = "entropy.npz"
MAX_CHANNELS = 4096
#: the entropy-model layouts the runtime decodes; the manifest's "kind"
KINDS = ("factorized", "scale-hyperprior", "mean-scale-hyperprior", "rnn")
#: graphs each kind needs, in run order on the encoder side
GRAPHS = {
    "factorized": ("g_a", "g_s"),
    "scale-hyperprior": ("g_a", "h_a", "h_s", "g_s"),
    "mean-scale-hyperprior": ("g_a", "h_a", "h_s", "g_s"),
    "rnn": ("encoder_step", "decoder_step"),  # recurrent steps (compressor.runtime.rnn)
}
#: latents each kind's manifest describes (rnn: the code bits, one bit each)
LATENTS = {
    "factorized": ("y",),
    "scale-hyperprior": ("y", "z"),
    "mean-scale-hyperprior": ("y", "z"),
    "rnn": ("bits",),
}
#: kinds whose scale indexes may come from the integer hyper-decoder (runtime.integer)
INTEGER_KINDS = ("scale-hyperprior", "mean-scale-hyperprior")
#: kinds whose codes are stored as they are, without entropy tables
NO_TABLES = ("rnn",)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_id_of(kind: str, files: dict[str, str]) -> str:
    """The identity of an export: a hash over its kind and every file's hash.

    Any change of a graph or a table (a re-export, a quantized copy) gives a new id, so a
    bitstream is only ever decoded by exactly the graphs and tables that made it.
    """
    text = kind + "\n" + "\n".join(f"{name}:{digest}" for name, digest in sorted(files.items()))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Manifest:
    """The fields the runtime relies on; `extra` carries informational ones (versions...)."""

    arch: str
    kind: str
    pad_multiple: int
    latents: dict[str, dict[str, int]]  # "y"/"z" -> {"channels": C, "stride": s}
    files: dict[str, str]  # file name -> sha256
    opset: int
    model_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model_id": self.model_id or model_id_of(self.kind, self.files),
            "arch": self.arch,
            "kind": self.kind,
            "pad_multiple": self.pad_multiple,
            "latents": self.latents,
            "opset": self.opset,
            "files": self.files,
            **self.extra,
        }

    def write(self, folder: Path) -> Path:
        self.model_id = model_id_of(self.kind, self.files)
        path = Path(folder) / MANIFEST
        write_text(path, json.dumps(self.to_json(), indent=2, sort_keys=False) + "\n")
        return path


def hash_files(folder: Path, names: list[str]) -> dict[str, str]:
    return {name: file_sha256(Path(folder) / name) for name in names}


def locate(folder: Path) -> Path:
    """The export folder itself, or the one a pipeline step folder's manifest names."""
    folder = Path(folder)
    data = _load_json(folder)
    if data.get("format") != FORMAT and data.get("kind") == "export" and data.get("path"):
        inner = folder / str(data["path"])
        if inner.parent == folder and inner.is_dir():
            return inner
    return folder


def read(folder: Path) -> Manifest:
    """The manifest of an export folder, checked field by field (never trusted blindly)."""
    folder = Path(folder)
    data = _load_json(folder)
    if data.get("format") != FORMAT:
        raise CheckpointError(
            f"{folder} is not an exported codec (manifest format {data.get('format')!r}; "
            f"expected {FORMAT!r}); make one with `cli.py export`"
        )
    kind = _field(data, "kind", str, folder)
    if kind not in KINDS:
        raise CheckpointError(
            f"{folder}: codec kind {kind!r} is not supported by this runtime; "
            f"supported: {', '.join(KINDS)}"
        )
    latents = _field(data, "latents", dict, folder)
    needed = LATENTS[kind]
    for name in needed:
        entry = latents.get(name)
        if not (isinstance(entry, dict) and _positive_ints(entry, ("channels", "stride"))):
            raise CheckpointError(f"{folder}: manifest latents.{name} needs channels and stride")
    files = _field(data, "files", dict, folder)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise CheckpointError(f"{folder}: manifest files must map names to sha256 strings")
    known = {"format", "model_id", "arch", "kind", "pad_multiple", "latents", "opset", "files"}
    manifest = Manifest(
        arch=_field(data, "arch", str, folder),
        kind=kind,
        pad_multiple=_field(data, "pad_multiple", int, folder),
        latents=latents,
        files=files,
        opset=_field(data, "opset", int, folder),
        model_id=_field(data, "model_id", str, folder),
        extra={k: v for k, v in data.items() if k not in known},
    )
    if not 1 <= manifest.pad_multiple <= 1024:
        raise CheckpointError(f"{folder}: pad_multiple {manifest.pad_multiple} not in 1..1024")
    for name in needed:
        entry = latents[name]
        # Bounds keep a doctored manifest from sizing huge buffers; strides must divide the
        # padding multiple so every latent has a whole number of elements.
        if entry["channels"] > MAX_CHANNELS or manifest.pad_multiple % entry["stride"]:
            raise CheckpointError(
                f"{folder}: latent {name} needs at most {MAX_CHANNELS} channels and a stride "
                f"that divides pad_multiple {manifest.pad_multiple}"
            )
    return manifest


def verify(folder: Path, manifest: Manifest) -> None:
    """Every file the manifest lists exists with its hash, and the id matches the files."""
    folder = Path(folder)
    needed = [f"{g}.onnx" for g in GRAPHS[manifest.kind]]
    needed += [] if manifest.kind in NO_TABLES else [TABLES]
    missing = [n for n in needed if n not in manifest.files]
    if missing:
        raise CheckpointError(
            f"{folder}: manifest lists no {missing[0]} (a {manifest.kind} needs it)"
        )
    for name, digest in manifest.files.items():
        path = folder / name
        if "/" in name or "\\" in name or name.startswith("."):
            raise CheckpointError(f"{folder}: manifest file name {name!r} is not a plain name")
        if not path.is_file():
            raise CheckpointError(f"{folder}: {name} is missing; the export is incomplete")
        if file_sha256(path) != digest:
            raise CheckpointError(
                f"{folder}: {name} differs from the manifest's hash; the export was modified "
                "or damaged, export it again"
            )
    if model_id_of(manifest.kind, manifest.files) != manifest.model_id:
        raise CheckpointError(f"{folder}: manifest model_id does not match its files")


def _load_json(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not folder.is_dir():
        raise CheckpointError(f"codec {folder} is not a folder (an exported codec is a folder)")
    if not path.is_file():
        raise CheckpointError(
            f"{folder} is not an exported codec (no {MANIFEST}); make one with `cli.py export`"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def _field(data: dict[str, Any], key: str, kind: type, folder: Path) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise CheckpointError(
            f"{folder}: manifest field {key!r} must be a {kind.__name__}, got {value!r}"
        )
    return value


def _positive_ints(entry: dict[str, Any], keys: tuple[str, ...]) -> bool:
    return all(
        isinstance(entry.get(k), int) and not isinstance(entry.get(k), bool) and entry[k] > 0
        for k in keys
    )
