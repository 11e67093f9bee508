"""Latency: warm-up, then repeated timings; several callables interleaved (A B A B ...) so a
noisy machine slows all of them alike and their ratio holds. (Codecs on images are compared
by compressor.compare, which rotates the order of each round with `rotation`.)"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class Latency:
    median_ms: float
    p95_ms: float
    repeats: int
    threads: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def summarize(samples_s: list[float], threads: int | None = None) -> Latency:
    ms = sorted(s * 1000.0 for s in samples_s)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return Latency(statistics.median(ms), p95, len(ms), threads or torch.get_num_threads())


def rotation(items: Sequence[T], turn: int) -> list[T]:
    """The order of round `turn` of an interleaved run: `items` starting at turn mod len, so
    over len(items) rounds every item runs first once."""
    k = turn % len(items) if items else 0
    return [*items[k:], *items[:k]]


def interleaved(
    calls: dict[str, Callable[[], object]],
    repeats: int = 5,
    warmup: int = 1,
    threads: int | None = None,
) -> dict[str, Latency]:
    """Time each callable `repeats` times, alternating between them after `warmup` rounds."""
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {name: summarize(s, threads) for name, s in samples.items()}
