"""N codecs on the same images in one process: real bitstreams, the same metrics for every
codec, latency interleaved.

Per image, every timed round runs each codec once (encode, then decode of what it just
wrote), codec after codec; the order rotates by one codec each round, so no codec always
runs first (first place pays for caches the previous codec filled). A noisy machine then
slows every codec alike and the ratios hold. Encode / decode ms are the medians of the
rounds, after `warmup` untimed rounds on the first image; PSNR / SSIM / MS-SSIM and bpp
(bytes * 8 / pixels of the real stream) come from the first timed round's output.

Threads are the caller's business (compressor.threads); this module never sets them.
`evaluate` is a comparison of one codec; `validate` is a comparison of two plus gates.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import numpy as np

from compressor.codec import Codec
from compressor.errors import RecipeError
from compressor.metrics import METRICS, bpp_from_bytes
from compressor.metrics.latency import rotation, summarize
from compressor.progress import NullReporter, Reporter

Images = list[tuple[str, np.ndarray]]
#: the per-image keys a summary averages (as CompressAI's eval averages per-image metrics)
SUMMARY_KEYS = (
    "bpp",
    "psnr",
    "ssim",
    "ms_ssim",
    "bytes",
    "encode_ms",
    "decode_ms",
    "estimated_bpp",
)


@dataclass
class EvalResult:
    """One codec's rows, one per image (image_row's keys plus encode_ms / decode_ms)."""

    codec: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    threads: int | None = None
    #: params / MACs / size per component (torch models), at `complexity_size`
    complexity: list[dict[str, Any]] = field(default_factory=list)
    complexity_size: tuple[int, int] | None = None

    def mean(self, key: str) -> float | None:
        values = [r[key] for r in self.rows if r.get(key) is not None]
        return float(statistics.fmean(values)) if values else None

    def summary(self) -> dict[str, Any]:
        """Means over images, and the p95 over images of the per-image latencies."""
        out: dict[str, Any] = {"codec": self.codec, "images": len(self.rows)}
        out.update({k: self.mean(k) for k in SUMMARY_KEYS})
        for stage in ("encode_ms", "decode_ms"):
            lat = summarize([r[stage] / 1000 for r in self.rows], self.threads)
            out[f"{stage[:-3]}_p95_ms"] = lat.p95_ms
        out["threads"] = self.threads
        return out


@dataclass
class Comparison:
    """Every codec's EvalResult, keyed by label, in the order the codecs were given."""

    results: dict[str, EvalResult]
    repeats: int

    def __getitem__(self, label: str) -> EvalResult:
        return self.results[label]

    @property
    def labels(self) -> list[str]:
        return list(self.results)

    def by_image(self, keys: Sequence[str]) -> dict[str, dict[str, dict[str, Any]]]:
        """image -> label -> {key: value}: the rows side by side, image by image."""
        rows = {label: r.rows for label, r in self.results.items()}
        images = [row["image"] for row in next(iter(rows.values()))]
        return {
            image: {label: {k: rows[label][i][k] for k in keys} for label in rows}
            for i, image in enumerate(images)
        }

    def geomean_ratio(self, key: str, num: str, den: str) -> float:
        """The geometric mean over images of num's `key` / den's `key` (e.g. a speed ratio)."""
        pairs = zip(self[num].rows, self[den].rows, strict=True)
        return math.exp(statistics.fmean(math.log(a[key] / b[key]) for a, b in pairs))


def image_row(name: str, rgb8: np.ndarray, data: bytes, rec: np.ndarray) -> dict[str, Any]:
    """The record of one image through one codec, from its real bytes and reconstruction:
    size, bpp and every registered quality metric (None where undefined or infinite)."""
    h, w = rgb8.shape[:2]
    row: dict[str, Any] = {
        "image": name,
        "height": h,
        "width": w,
        "bytes": len(data),
        "bpp": bpp_from_bytes(len(data), h, w),
    }
    for metric in METRICS:
        value = METRICS.get(metric)(rgb8, rec)
        row[metric] = None if value is None or math.isinf(value) else value
    return row


def _labelled(codecs: Mapping[str, Codec] | Sequence[Codec]) -> dict[str, Codec]:
    pairs = list(codecs.items()) if isinstance(codecs, Mapping) else [(c.name, c) for c in codecs]
    labels = [label for label, _ in pairs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"codec names must differ to be compared: {labels}")
    return dict(pairs)


def _time_image(
    codecs: dict[str, Codec], rgb8: np.ndarray, repeats: int, first_turn: int
) -> tuple[dict[str, tuple[float, float]], dict[str, tuple[bytes, np.ndarray]]]:
    """`repeats` rounds over the codecs, rotating; per codec the median encode and decode
    ms, and the first round's (bytes, reconstruction)."""
    samples: dict[str, list[tuple[float, float]]] = {label: [] for label in codecs}
    outputs: dict[str, tuple[bytes, np.ndarray]] = {}
    for r in range(repeats):
        for label in rotation(list(codecs), first_turn + r):
            codec = codecs[label]
            t0 = perf_counter()
            data = codec.encode(rgb8)
            t1 = perf_counter()
            rec = codec.decode(data)
            t2 = perf_counter()
            samples[label].append(((t1 - t0) * 1000, (t2 - t1) * 1000))
            outputs.setdefault(label, (data, rec))
    medians = {
        label: (statistics.median(e for e, _ in s), statistics.median(d for _, d in s))
        for label, s in samples.items()
    }
    return medians, outputs


def compare(
    codecs: Mapping[str, Codec] | Sequence[Codec],
    images: Images,
    repeats: int = 3,
    *,
    warmup: int = 1,
    estimate: bool = True,
    threads: int | None = None,
    reporter: Reporter | None = None,
    description: str = "comparing",
) -> Comparison:
    """Measure every codec on every image (see the module docstring). `codecs` is a sequence
    (labelled by codec.name) or a label -> codec mapping; labels must differ. `estimate`
    adds estimated_bpp for codecs that predict their rate; `threads` is recorded only."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise RecipeError(f"repeats {repeats!r}: the timed rounds per image; allowed 1 or more")
    table = _labelled(codecs)
    results = {label: EvalResult(label, threads=threads) for label in table}
    for _ in range(warmup if images else 0):  # first calls pay for allocation, kernel choice
        for codec in table.values():
            codec.decode(codec.encode(images[0][1]))
    reporter = reporter or NullReporter()
    reporter.start(description, len(images))
    for i, (name, rgb8) in enumerate(images):
        medians, outputs = _time_image(table, rgb8, repeats, i * repeats)
        for label, codec in table.items():
            row = image_row(name, rgb8, *outputs[label])
            row["encode_ms"], row["decode_ms"] = medians[label]
            predict = getattr(codec, "estimated_bpp", None) if estimate else None
            if predict is not None:
                row["estimated_bpp"] = predict(rgb8)
            results[label].rows.append(row)
        first = results[next(iter(table))].rows[-1]
        reporter.advance(1, psnr=first["psnr"] or 0.0, bpp=first["bpp"])
    reporter.finish()
    return Comparison(results, repeats)
