"""A content-addressed cache of per-graph sensitivity rows (compressor.quant.sensitivity).

The ranking behind `keep_float_top_k` costs one quantization and one codec round trip per
Conv; trials of a search that differ only in k (or in anything the ranking does not depend
on) would compute the same rows again. Whoever runs many quantizations over the same
calibration data opens a cache folder with `ranking_cache(folder)` around them (a search
opens <search>/cache/sensitivity around every trial, compressor.search.trial); without one,
the rows are computed each time, as before.

A graph's rows are stored as <folder>/<key>.json, where the key hashes everything they
depend on, in the spirit of the search's trial cache (compressor.search.trial.cache_key):
the float export's model id (the bytes of every graph: the other graphs run float while one
layer is measured), the graph's name, the bytes of its calibration inputs and of the measured
images, the quantization parameters a single-layer quantization uses, and the package
versions. A stale or unreadable entry is computed again, never trusted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np

from compressor.artifact import versions
from compressor.fsutil import write_text
from compressor.quant.config import QuantParams

log = logging.getLogger(__name__)

_FOLDER: ContextVar[Path | None] = ContextVar("sensitivity_cache", default=None)
#: the parameters a single-layer quantization reads (calibration size and crop are in the
#: input arrays themselves; the accuracy tolerance only orders the rows, after the cache)
KEY_PARAMS: dict[str, Any] = {
    "calibration": {"method", "percentile"},
    "per_channel": True,
    "activation_type": True,
    "weight_type": True,
    "preprocess": True,
    "int8_gdn": True,
}


@contextlib.contextmanager
def ranking_cache(folder: Path | None) -> Iterator[None]:
    """Sensitivity rows computed inside the block are read from / written to `folder`."""
    token = _FOLDER.set(folder)
    try:
        yield
    finally:
        _FOLDER.reset(token)


def current() -> Path | None:
    return _FOLDER.get()


def _update(h: Any, item: Any) -> None:
    """Hash one calibration item: an array, or a {name: array} feed (rnn's step graphs)."""
    if isinstance(item, dict):
        for name in sorted(item):
            h.update(name.encode())
            _update(h, item[name])
        return
    a = np.ascontiguousarray(item)
    h.update(f"{a.dtype}{a.shape}".encode())
    h.update(a.tobytes())


def key(
    model_id: str, graph: str, inputs: list[Any], images: list[np.ndarray], params: QuantParams
) -> str:
    h = hashlib.sha256()
    meta = {
        "model_id": model_id,
        "graph": graph,
        "params": params.model_dump(mode="json", include=KEY_PARAMS),
        "versions": versions(),
    }
    h.update(json.dumps(meta, sort_keys=True).encode())
    for item in inputs:
        _update(h, item)
    h.update(b"images")
    for img in images:
        _update(h, img)
    return h.hexdigest()


def load(name: str) -> list[dict[str, Any]] | None:
    folder = current()
    if folder is None:
        return None
    try:
        rows = json.loads((folder / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        return None
    return rows


def store(name: str, rows: list[dict[str, Any]]) -> None:
    folder = current()
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / f"{name}.json", json.dumps(rows, indent=1) + "\n")  # atomic
    log.info("sensitivity rows cached in %s", folder / f"{name}.json")
