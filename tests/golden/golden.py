"""Hashes of the golden files (shared by the generator and the tests)."""

from __future__ import annotations

import hashlib

import numpy as np


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def symbols_sha(symbols: dict[str, np.ndarray]) -> str:
    """SHA-256 over every latent's name, shape and little-endian int64 symbols, by name."""
    h = hashlib.sha256()
    for name in sorted(symbols):
        a = np.ascontiguousarray(symbols[name], dtype="<i8")
        h.update(f"{name}{a.shape}".encode() + a.tobytes())
    return h.hexdigest()
