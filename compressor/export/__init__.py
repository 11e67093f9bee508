"""ONNX export: one graph per component, exact rewrites, entropy tables, manifest.json.

`export_model(model, out_dir)` is what the CLI command and the recipe step `export` call;
the folder it writes is loaded by compressor.runtime.load_codec (no torch needed there).
"""

from __future__ import annotations

from compressor.export import (
    autoencoder,  # noqa: F401  (registers the autoencoder exporter)
    hific,  # noqa: F401  (registers the HiFiC exporter)
    jpeg,  # noqa: F401  (registers the JPEG exporter)
    rnn,  # noqa: F401  (registers the rnn step-graph exporter)
    zoo,  # noqa: F401  (registers the CompressAI zoo exporter)
)
from compressor.export.onnx import (
    EXPORTERS,
    Exporter,
    ExportSpec,
    export_model,
    graph_inputs,
    parity,
    register_exporter,
    register_folder_exporter,
    spec_of,
)

__all__ = [
    "EXPORTERS",
    "ExportSpec",
    "Exporter",
    "export_model",
    "graph_inputs",
    "parity",
    "register_exporter",
    "register_folder_exporter",
    "spec_of",
]
