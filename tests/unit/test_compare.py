"""compare(): exact metrics of fake codecs computed by hand, the interleaved and rotated call
order, medians on a fake clock; validate = compare + gates gives the numbers it gave before."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from compressor import compare as compare_mod
from compressor.compare import compare
from compressor.errors import RecipeError
from compressor.evaluate import evaluate, measure_image
from compressor.validate import Gates, validate

Calls = list[tuple[str, str]]


class Clock:
    """perf_counter's stand-in: time moves only when a fake codec says it worked."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Quant:
    """Keeps the top `bits` of every 8-bit value (8: lossless); stream = height, width
    (uint16 each) + the kept bits packed, so bytes = 4 + ceil(h*w*3*bits/8). Reconstruction:
    the middle of each step. Encode / decode cost enc_ms / dec_ms on the fake clock (cycled)."""

    def __init__(
        self,
        name: str,
        bits: int,
        clock: Clock,
        calls: Calls,
        enc_ms: list[float] | float = 1.0,
        dec_ms: list[float] | float = 1.0,
    ) -> None:
        self.name, self.bits, self.clock, self.calls = name, bits, clock, calls
        self.enc: Iterator[float] = itertools.cycle(
            enc_ms if isinstance(enc_ms, list) else [enc_ms]
        )
        self.dec: Iterator[float] = itertools.cycle(
            dec_ms if isinstance(dec_ms, list) else [dec_ms]
        )

    def encode(self, rgb8: np.ndarray) -> bytes:
        self.calls.append((self.name, "encode"))
        self.clock.t += next(self.enc) / 1000
        h, w = rgb8.shape[:2]
        kept = (rgb8 >> (8 - self.bits)).astype(np.uint8).reshape(-1, 1)
        bits = np.unpackbits(kept, axis=1)[:, 8 - self.bits :]
        return np.array([h, w], ">u2").tobytes() + np.packbits(bits.reshape(-1)).tobytes()

    def decode(self, data: bytes) -> np.ndarray:
        self.calls.append((self.name, "decode"))
        self.clock.t += next(self.dec) / 1000
        h, w = (int(v) for v in np.frombuffer(data[:4], ">u2"))
        bits = np.unpackbits(np.frombuffer(data[4:], np.uint8))[: h * w * 3 * self.bits]
        weights = 1 << np.arange(self.bits - 1, -1, -1)
        q = bits.reshape(-1, self.bits).astype(np.int64) @ weights
        step = 1 << (8 - self.bits)
        return (q * step + step // 2 * (self.bits < 8)).reshape(h, w, 3).astype(np.uint8)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(compare_mod, "perf_counter", fake)
    return fake


def images(n: int = 2, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """16x16 images of the values 0, 64, 128, 192: every kept-bits codec misses each value by
    exactly half its step (2 bits: 32, 4 bits: 8), so MSE = (step / 2)^2 everywhere."""
    rng = np.random.default_rng(seed)
    return [(f"im{i}", (rng.integers(0, 4, (16, 16, 3)) * 64).astype(np.uint8)) for i in range(n)]


def test_exact_bytes_bpp_psnr_and_median_times(clock: Clock) -> None:
    calls: Calls = []
    lossless = Quant("lossless", 8, clock, calls, enc_ms=[9.0, 1.0, 7.0, 3.0], dec_ms=2.0)
    two = Quant("two-bit", 2, clock, calls, enc_ms=4.0, dec_ms=[50.0, 6.0, 5.0, 4.0])
    result = compare([lossless, two], images(1), repeats=3)
    (a,), (b,) = result["lossless"].rows, result["two-bit"].rows
    assert (a["bytes"], b["bytes"]) == (4 + 768, 4 + 192)  # 16*16*3 values of 8 / 2 bits
    assert a["bpp"] == 772 * 8 / 256 == 24.125 and b["bpp"] == 196 * 8 / 256 == 6.125
    assert a["psnr"] is None and a["ssim"] == pytest.approx(1.0)  # identical: PSNR inf
    assert b["psnr"] == pytest.approx(20 * math.log10(255 / 32), abs=1e-12)
    assert a["ms_ssim"] is None  # 16 px: too small for five scales
    # the warm-up took the first cost (9 / 50); the medians of the three timed rounds
    assert a["encode_ms"] == pytest.approx(3.0) and a["decode_ms"] == pytest.approx(2.0)
    assert b["encode_ms"] == pytest.approx(4.0) and b["decode_ms"] == pytest.approx(5.0)
    assert result.repeats == 3 and result.labels == ["lossless", "two-bit"]


def test_rounds_interleave_and_rotate(clock: Clock) -> None:
    calls: Calls = []
    codecs = [Quant(n, 4, clock, calls) for n in "ABC"]
    compare(codecs, images(2), repeats=2)
    per_codec = [calls[i][0] for i in range(0, len(calls), 2)]
    assert all(calls[i][1] == "encode" and calls[i + 1] == (calls[i][0], "decode")
               for i in range(0, len(calls), 2))  # fmt: skip
    warmup, rounds = per_codec[:3], per_codec[3:]
    assert warmup == list("ABC")
    # image 0: rounds 0, 1; image 1: rounds 2, 3 -- the first place moves every round
    assert rounds == list("ABCBCACABABC")


def test_three_codecs_side_by_side(clock: Clock) -> None:
    calls: Calls = []
    codecs = {
        "8": Quant("x", 8, clock, calls, enc_ms=8.0, dec_ms=8.0),
        "4": Quant("y", 4, clock, calls, enc_ms=4.0, dec_ms=2.0),
        "2": Quant("z", 2, clock, calls, enc_ms=2.0, dec_ms=1.0),
    }
    result = compare(codecs, images(3), repeats=1, warmup=0)
    assert result.labels == ["8", "4", "2"]  # a mapping's keys label the codecs
    assert [result[k].mean("bpp") for k in codecs] == [24.125, 12.125, 6.125]
    assert result["4"].mean("psnr") == pytest.approx(20 * math.log10(255 / 8), abs=1e-12)
    assert result.geomean_ratio("encode_ms", "8", "2") == pytest.approx(4.0)
    assert result.geomean_ratio("decode_ms", "4", "2") == pytest.approx(2.0)
    side = result.by_image(["bytes", "decode_ms"])
    assert list(side) == ["im0", "im1", "im2"]
    assert side["im1"]["2"]["bytes"] == 196 and side["im1"]["8"]["decode_ms"] == pytest.approx(8)
    assert len(calls) == 3 * 3 * 2  # no warm-up, one round: nothing runs twice


def test_validate_gives_the_same_deltas_and_verdicts_as_before(clock: Clock) -> None:
    """Expectations written down from the measurement loop validate had before compare()
    (same fake codecs and clock): hand values where they exist, its SSIM drop otherwise."""
    calls: Calls = []
    base = Quant("base-codec", 4, clock, calls, enc_ms=4.0, dec_ms=6.0)
    cand = Quant("cand-codec", 2, clock, calls, enc_ms=1.0, dec_ms=2.0)
    gates = Gates(
        max_psnr_drop_db=12.5, max_bpp_increase=0.0, min_speedup=3.5, min_decode_speedup=2.9
    )
    v = validate(base, cand, images(2), gates, repeats=3)
    expected = {
        "psnr_drop_db": 20 * math.log10(4),  # errors 8 -> 32
        "ssim_drop": 0.03677952181269284,
        "bpp_increase": 6.125 / 12.125 - 1,
        "speedup": 10 / 3,
        "encode_speedup": 4.0,
        "decode_speedup": 3.0,
    }
    assert v.deltas["ms_ssim_drop"] is None
    for key, value in expected.items():
        assert v.deltas[key] == pytest.approx(value, rel=1e-12), key
    assert [(g["gate"], g["passed"]) for g in v.gates] == [
        ("max_psnr_drop_db", True),
        ("max_bpp_increase", True),
        ("min_speedup", False),
        ("min_decode_speedup", True),
    ]
    assert not v.passed
    assert (v.baseline.codec, v.candidate.codec) == ("base-codec", "cand-codec")
    assert len(v.baseline.rows) == len(v.candidate.rows) == 2


def test_evaluate_is_a_comparison_of_one(clock: Clock) -> None:
    calls: Calls = []
    codec = Quant("q", 4, clock, calls, enc_ms=3.0, dec_ms=[1.0, 2.0])
    imgs = images(2)
    result = evaluate(codec, imgs, threads=1)
    assert [r["bytes"] for r in result.rows] == [388, 388]
    assert result.summary()["encode_ms"] == pytest.approx(3.0)
    assert result.complexity == [] and result.complexity_size == (16, 16)  # not a torch model
    calls.clear()
    row = measure_image(codec, "one", imgs[0][1])
    assert calls == [("q", "encode"), ("q", "decode")]  # once, no warm-up
    assert row["image"] == "one" and row["bpp"] == 12.125


def test_estimated_bpp_only_where_the_codec_predicts_it(clock: Clock) -> None:
    codec = Quant("q", 2, clock, [])
    codec.estimated_bpp = lambda rgb8: 5.5  # type: ignore[attr-defined]
    assert compare([codec], images(1), 1)["q"].rows[0]["estimated_bpp"] == 5.5
    assert "estimated_bpp" not in compare([codec], images(1), 1, estimate=False)["q"].rows[0]


def test_bad_repeats_and_twin_names(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(n: int) -> None:
        raise AssertionError("compare must leave threads to its caller")

    monkeypatch.setattr(torch, "set_num_threads", forbidden)
    codec = Quant("q", 2, clock, [])
    with pytest.raises(RecipeError, match=r"repeats 0: .* allowed 1 or more"):
        compare([codec], images(1), 0)
    with pytest.raises(ValueError, match="codec names must differ"):
        compare([codec, Quant("q", 4, clock, [])], images(1), 1)
    assert compare({"a": codec, "b": codec}, images(1), 2)["b"].rows[0]["bytes"] == 196
