"""Artifacts: what each pipeline step leaves in exported/<run>/NN_<step>/, with manifest.json."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import compressor
from compressor.report import write_json

#: kinds: a torch checkpoint file, an exported ONNX folder, or a report only
KINDS = ("checkpoint", "export", "report")
PACKAGES = (
    "torch",
    "torchvision",
    "compressai",
    "onnx",
    "onnxruntime",
    "torch-pruning",
    "neural-compressor-pt",
    "numpy",
    "constriction",
)


@dataclass
class Artifact:
    id: str
    kind: str
    path: Path  # the model file / export folder (for a report: the step folder)
    step: str
    parent: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)  # headline numbers for the run table
    failed: bool = False  # a validation gate failed
    #: the step's full report (its report.json), for the CLI to render without re-reading it
    report: dict[str, Any] | None = field(default=None, repr=False)

    def relocated(self, old_dir: Path, new_dir: Path) -> Artifact:
        """The same artifact after its temporary folder was renamed into place."""
        path = self.path
        if path == old_dir or old_dir in path.parents:
            path = new_dir / path.relative_to(old_dir)
        return dataclasses.replace(self, path=path)


def sha256(path: Path) -> str:
    """Hash of a file, or of every file of a folder (names and contents, sorted)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "compressor": compressor.__version__}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def write_manifest(
    folder: Path,
    art: Artifact,
    inputs: dict[str, Path],
    recipe: dict[str, Any] | None = None,
    fingerprint: str | None = None,
    run_dir: Path | None = None,
) -> None:
    """manifest.json of a step folder; `fingerprint` lets --resume keep the step, and input
    paths inside `run_dir` are stored relative to it (a run folder may be renamed)."""
    write_json(
        folder / "manifest.json",
        {
            "id": art.id,
            "kind": art.kind,
            "step": art.step,
            "parent": art.parent,
            "params": art.params,
            "path": art.path.name if art.kind != "report" else None,
            "summary": art.summary,
            "failed": art.failed,
            "fingerprint": fingerprint,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "inputs": {
                name: {"path": _relative(p, run_dir), "sha256": sha256(p)}
                for name, p in inputs.items()
            },
            "recipe": recipe,
            "versions": versions(),
        },
    )


def _relative(path: Path, run_dir: Path | None) -> str:
    if run_dir is not None and Path(run_dir) in Path(path).parents:
        return str(Path(path).relative_to(run_dir))
    return str(path)


def read_manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text())
