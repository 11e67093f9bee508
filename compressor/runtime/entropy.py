"""Entropy coding of integer latents with CompressAI's quantized CDF tables, torch-free.

The coder is `constriction`'s ANS (Rust, memory-safe: damaged data gives an exception or wrong
symbols, never an out-of-bounds read). The probability tables are CompressAI's own
(`_quantized_cdf`, `_cdf_length`, `_offset`, 16-bit precision) exported beside the graphs, so
the rate matches `compress()`; out-of-range values use CompressAI's escape rule (the last symbol
of every table) with their magnitude coded after the latent, Elias-gamma style.

All latents of one image share one ANS stack: the encoder collects segments in decode order
and pushes them in reverse, so the decoder pops z, runs h_s, then pops y.

End check (container format 2): before anything else the encoder pushes a fixed 32-bit word,
so the decoder pops it last. An ANS decoder that runs out of words does not fail: it keeps
returning symbol 0 (an empty payload decodes to a plausible-looking latent of noise). Since
encoding never shrinks the coder's state, a valid stream holds at least the check's 32 bits
until the check is popped; fewer valid bits after any latent means the payload ran out, and
the check word itself must come back unchanged with nothing left after it. Format 1 files
have no check word: `Decoder(payload, check=False)` reads them with the old end test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import constriction
import numpy as np

from compressor.errors import BitstreamError, CheckpointError

PRECISION = 16
#: values beyond this are clipped before coding; keeps escape magnitudes below 2**31
MAX_ABS_VALUE = 1 << 29
_MAX_OFFSET = 1 << 20
_NBITS = 32  # escape magnitudes have 0..31 significant bits
_CHUNK = 16  # escape bits are coded in chunks of at most this many bits
#: latent elements the encoder turns into symbols at a time (a bound on its working memory)
CHUNK = 1 << 20
#: the end check, two 16-bit halves (top bit set: the coder's state holds >= 32 bits under it)
CHECK = np.array([0xC0DE, 0x5AFE], dtype=np.int32)
CHECK_BITS = 32

_model = constriction.stream.model


@dataclass
class Tables:
    """One entropy model: per-table categorical distributions, offsets and escape symbols."""

    offsets: np.ndarray  # (T,) int64: value of symbol 0 of each table
    escape: np.ndarray  # (T,) int64: the escape symbol of each table (= cdf_length - 2)
    models: list[Any] = field(repr=False)

    @classmethod
    def from_arrays(
        cls, cdf: np.ndarray, lengths: np.ndarray, offsets: np.ndarray, name: str
    ) -> Tables:
        """Checked against CompressAI's layout, so a doctored table file cannot mislead."""
        if cdf.ndim != 2 or lengths.shape != (cdf.shape[0],) or offsets.shape != lengths.shape:
            raise CheckpointError(f"entropy table {name}: inconsistent shapes")
        if cdf.shape[0] < 1 or lengths.min() < 3 or lengths.max() > cdf.shape[1]:
            raise CheckpointError(f"entropy table {name}: CDF lengths out of range")
        if np.abs(offsets).max() > _MAX_OFFSET:
            raise CheckpointError(f"entropy table {name}: offsets out of range")
        models = []
        for k, n in enumerate(lengths.tolist()):
            row = cdf[k, :n].astype(np.int64)
            freqs = np.diff(row)
            if row[0] != 0 or row[-1] != 1 << PRECISION or freqs.min() < 1:
                raise CheckpointError(
                    f"entropy table {name}[{k}] is not a {PRECISION}-bit quantized CDF"
                )
            models.append(_model.Categorical(freqs.astype(np.float64), perfect=False))
        return cls(offsets.astype(np.int64), lengths.astype(np.int64) - 2, models)

    def __len__(self) -> int:
        return len(self.models)


class Encoder:
    """Collects the segments of every latent in decode order; `finish()` gives the bytes.

    `chunk`: elements turned into symbols at a time. Only memory depends on it (a 4096 x 4096
    image has 12.6 M latent elements; whole-size int64 temporaries were ~100 MB each): the
    symbols of table k are still all of k's elements in flat order, and the escapes all
    escaped elements in flat order, so the bytes are the same for any chunk (tested).
    """

    def __init__(self, chunk: int = CHUNK) -> None:
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1 element, got {chunk}")
        self.chunk = chunk
        self._segments: list[tuple[np.ndarray, Any]] = []

    def latent(self, values: np.ndarray, indexes: np.ndarray, tables: Tables) -> None:
        values, indexes = values.reshape(-1), indexes.reshape(-1)
        per_table: list[list[np.ndarray]] = [[] for _ in range(len(tables))]
        escapes: list[np.ndarray] = []
        for start in range(0, values.size, self.chunk):
            part = slice(start, start + self.chunk)
            escapes.append(self._symbols(values[part], indexes[part], tables, per_table))
        for k, parts in enumerate(per_table):
            if parts:
                self._segments.append((np.concatenate(parts), tables.models[k]))
        self._escapes(np.concatenate(escapes) if escapes else np.empty(0, np.int64))

    @staticmethod
    def _symbols(
        values: np.ndarray, indexes: np.ndarray, tables: Tables, per_table: list[list[np.ndarray]]
    ) -> np.ndarray:
        """Append one chunk's symbols to their tables' lists; its escape magnitudes."""
        values = np.clip(values.astype(np.int64), -MAX_ABS_VALUE, MAX_ABS_VALUE)
        idx = indexes.astype(np.int64)
        sym = values - tables.offsets[idx]
        top = tables.escape[idx]
        low, high = sym < 0, sym >= top
        raw = np.zeros_like(sym)
        raw[low] = -2 * sym[low] - 1
        raw[high] = 2 * (sym[high] - top[high])
        escaped = low | high
        sym = np.where(escaped, top, sym)
        order = _table_order(idx, len(tables))
        counts = np.bincount(idx, minlength=len(tables))
        ordered = sym[order].astype(np.int32)
        start = 0
        for k, n in enumerate(counts.tolist()):
            if n:
                per_table[k].append(ordered[start : start + n])
                start += n
        return raw[escaped]

    def _escapes(self, raw: np.ndarray) -> None:
        nbits = _bit_length(raw)
        self._segments.append((nbits.astype(np.int32), _model.Uniform(_NBITS)))
        rest = np.where(nbits > 0, raw - (np.int64(1) << np.maximum(nbits - 1, 0)), 0)
        for extra in range(1, _NBITS - 1):
            part = rest[nbits - 1 == extra]
            if part.size == 0:
                continue
            lo = min(extra, _CHUNK)
            self._segments.append(
                ((part & ((1 << lo) - 1)).astype(np.int32), _model.Uniform(1 << lo))
            )
            if extra > _CHUNK:
                hi_bits = extra - _CHUNK
                self._segments.append(
                    ((part >> _CHUNK).astype(np.int32), _model.Uniform(1 << hi_bits))
                )

    def finish(self, check: bool = True) -> bytes:
        """The payload; `check=False` writes format 1 (no end check), for tests of old files."""
        coder = constriction.stream.stack.AnsCoder()
        if check:
            coder.encode_reverse(CHECK, _model.Uniform(1 << 16))
        for symbols, model in reversed(self._segments):
            coder.encode_reverse(symbols, model)
        words = coder.get_compressed()
        return np.asarray(words, dtype="<u4").tobytes()


class Decoder:
    """Pops latents in the order the encoder added them; `finish()` checks nothing is left.

    `check`: the payload ends with the end check (format 2); each latent then verifies the
    data did not run out under it, so a short payload fails before any graph runs on it.
    """

    def __init__(self, payload: bytes, check: bool = True) -> None:
        if len(payload) % 4:
            raise BitstreamError(
                f"bitstream is corrupt (payload of {len(payload)} bytes is not whole 32-bit words)"
            )
        if not payload:
            # no latent of any image is free to code: an empty payload is never a valid one
            raise BitstreamError("bitstream is corrupt (the entropy-coded payload is empty)")
        self.check = check
        words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
        try:
            self._coder = constriction.stream.stack.AnsCoder(words)
        except ValueError as e:
            raise BitstreamError(f"bitstream is corrupt ({e})") from None

    def _pop(self, model: Any, count: int) -> np.ndarray:
        try:
            return np.asarray(self._coder.decode(model, count), dtype=np.int64)
        except (ValueError, RuntimeError, OverflowError) as e:
            raise BitstreamError(f"bitstream is corrupt ({e})") from None

    def latent(self, indexes: np.ndarray, tables: Tables) -> np.ndarray:
        """The integer values of one latent (flat, in `indexes`' order)."""
        idx = indexes.ravel().astype(np.int64)
        order = _table_order(idx, len(tables))
        counts = np.bincount(idx, minlength=len(tables))
        parts = [self._pop(tables.models[k], n) for k, n in enumerate(counts.tolist()) if n]
        sym = np.empty(idx.size, dtype=np.int64)
        sym[order] = np.concatenate(parts) if parts else np.empty(0, np.int64)
        top = tables.escape[idx]
        escaped = sym == top
        raw = self._escapes(int(escaped.sum()))
        odd = (raw & 1).astype(bool)
        sym[escaped] = np.where(odd, -((raw + 1) >> 1), (raw >> 1) + top[escaped])
        if self.check and self._coder.num_valid_bits() < CHECK_BITS:
            raise BitstreamError(
                "bitstream is corrupt (the entropy-coded data ran out before the end: "
                "truncated or forged payload)"
            )
        return sym + tables.offsets[idx]

    def _escapes(self, count: int) -> np.ndarray:
        nbits = self._pop(_model.Uniform(_NBITS), count)
        rest = np.zeros(count, dtype=np.int64)
        for extra in range(1, _NBITS - 1):
            sel = nbits - 1 == extra
            n = int(sel.sum())
            if n == 0:
                continue
            lo = min(extra, _CHUNK)
            part = self._pop(_model.Uniform(1 << lo), n)
            if extra > _CHUNK:
                part |= self._pop(_model.Uniform(1 << (extra - _CHUNK)), n) << _CHUNK
            rest[sel] = part
        return np.where(nbits > 0, rest + (np.int64(1) << np.maximum(nbits - 1, 0)), 0)

    def finish(self) -> None:
        if self.check and not np.array_equal(self._pop(_model.Uniform(1 << 16), 2), CHECK):
            raise BitstreamError("bitstream is corrupt (its end check does not match)")
        if not self._coder.is_empty():
            raise BitstreamError("bitstream is corrupt (data left over after the last latent)")


def _table_order(idx: np.ndarray, tables: int) -> np.ndarray:
    """The elements grouped by table, each group in flat order (a stable argsort).

    A stable sort's result is unique, so the key's dtype cannot change it; numpy radix-sorts
    8- and 16-bit keys (0.6 ms for a Kodak image's 295k indexes against 11 ms as int64)."""
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= tables):
        raise ValueError(f"table indexes outside 0..{tables - 1}")
    if tables <= 1 << 8:
        return np.argsort(idx.astype(np.uint8), kind="stable")
    if tables <= 1 << 16:
        return np.argsort(idx.astype(np.uint16), kind="stable")
    return np.argsort(idx, kind="stable")


def _bit_length(values: np.ndarray) -> np.ndarray:
    """Bits needed for each non-negative value (0 for 0), exact for int64."""
    out = np.zeros(values.shape, dtype=np.int64)
    rest = values.copy()
    while rest.size and rest.max() > 0:
        out += rest > 0
        rest >>= 1
    return out
