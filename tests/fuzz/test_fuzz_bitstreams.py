"""Fuzzing bitstreams: load_codec(folder).decode(data) returns an HxWx3 uint8 image of the
declared size or raises a CompressorError, in bounded time and memory; `python -m
compressor.runtime decode` refuses a bad file in one line and leaves no output behind.

Most mutations recompute the CRC-32 (zlib.crc32 over everything before it, as
compressor/runtime/container.py lays the file out), so they get past the CRC check and reach
the header and payload parsers instead of stopping at the checksum.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import example, given
from hypothesis import strategies as st

from compressor import bitstream
from compressor.errors import CompressorError
from compressor.export import export_model
from compressor.runtime import OrtCodec, container, load_codec
from compressor.runtime.cli import main as runtime_main
from tests.conftest import REPO, smooth_image, tiny_model
from tests.fuzz import mutate as mu

SIZES = [0, 1, 2, 15, 16, 17, 39, 40, 41, 56, 63, 64, 65, 1000, 4096, 4097, 1 << 15, 2**40]
HEADER_OP = st.one_of(
    st.tuples(st.just("version"), st.integers(0, 255)),
    st.tuples(st.just("model_id"), st.binary(min_size=8, max_size=8)),
    st.tuples(st.just("size"), st.sampled_from(SIZES), st.sampled_from(SIZES)),
    st.tuples(
        st.just("pad"),
        st.lists(st.sampled_from([0, 1, 7, 8, 24, 4095, 4096]), min_size=4, max_size=4),
    ),
    st.tuples(st.just("payload"), st.sampled_from(["empty", "half", "double", "zeros", "ones"])),
    st.tuples(st.just("payload-bytes"), st.binary(max_size=300)),
    st.tuples(st.just("overlong-varint"), st.integers(1, 12)),
)


@dataclass(frozen=True)
class Case:
    header_ops: tuple[Any, ...] = ()
    byte_ops: tuple[Any, ...] = ()
    recrc: bool = True


@st.composite
def bitstream_cases(draw: st.DrawFn) -> Case:
    header_ops = tuple(draw(st.lists(HEADER_OP, max_size=3)))
    byte_ops = tuple(draw(st.lists(mu.BYTE_OP, min_size=0 if header_ops else 1, max_size=3)))
    return Case(header_ops, byte_ops, draw(st.sampled_from([True, True, True, False])))


class Target:
    """One tiny export, its codec and a good file (short repr: hypothesis prints fixtures)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.codec: OrtCodec = load_codec(folder, threads=1)
        self.good = self.codec.encode(smooth_image(40, 56, seed=7))
        self.header, self.payload = container.unpack(self.good)

    def __repr__(self) -> str:
        return f"Target({self.folder.name}, {len(self.good)} bytes)"


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Target:
    model = tiny_model("bmshj2018-hyperprior", seed=2)
    g_a: Any = model.net.g_a
    with torch.no_grad():
        g_a[-1].weight.mul_(8.0)  # latents that cost real bits
    model.finalize()
    return Target(export_model(model, tmp_path_factory.mktemp("fuzz-bits") / "export"))


def build(case: Case, t: Target) -> bytes:
    """The mutated file: header fields rewritten, bytes mutated, the CRC (re)computed."""
    h = t.header
    fields: dict[str, Any] = {
        "version": h.version, "model_id": h.model_id, "size": [h.height, h.width],
        "pad": list(h.pad), "payload": t.payload, "overlong": 0,
    }  # fmt: skip
    for op in case.header_ops:
        kind = op[0]
        if kind in ("version", "model_id"):
            fields[kind] = op[1]
        elif kind == "size":
            fields["size"] = [op[1], op[2]]
        elif kind == "pad":
            fields["pad"] = op[1]
        elif kind == "payload-bytes":
            fields["payload"] = op[1]
        elif kind == "overlong-varint":
            fields["overlong"] = op[1]
        else:
            p = fields["payload"]
            fields["payload"] = {
                "empty": b"", "half": p[: len(p) // 2], "double": p + p,
                "zeros": bytes(len(p)), "ones": b"\xff" * len(p),
            }[op[1]]  # fmt: skip
    body = bytearray(container.MAGIC) + bytes([fields["version"]]) + fields["model_id"]
    for i, value in enumerate([*fields["size"], *fields["pad"]]):
        enc = bytearray(bitstream.write_varint(value))
        if i == 0 and fields["overlong"]:  # the same value in more bytes than needed
            enc[-1] |= 0x80
            enc += b"\x80" * (fields["overlong"] - 1) + b"\x00"
        body += enc
    body += fields["payload"]
    if case.recrc:
        body = bytearray(mu.apply_byte_ops(bytes(body), list(case.byte_ops)))
        return bytes(body) + zlib.crc32(body).to_bytes(4, "little")
    whole = bytes(body) + zlib.crc32(body).to_bytes(4, "little")
    return mu.apply_byte_ops(whole, list(case.byte_ops))


def check(case: Case, t: Target) -> None:
    data = build(case, t)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    try:
        out = t.codec.decode(data)
    except CompressorError as e:
        assert "\n" not in str(e), f"not one line: {e}"
        mu.note(f"refused: {str(e)[:40]}")
    else:
        header, _ = container.unpack(data)
        assert isinstance(out, np.ndarray) and out.dtype == np.uint8, type(out)
        assert out.shape == (header.height, header.width, 3), (out.shape, header)
        mu.note("decoded")
    took = time.perf_counter() - start
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss
    assert took < 5, f"decode took {took:.1f} s"
    assert grew < 1 << 20, f"decode raised peak memory by {grew / 1024:.0f} MiB"


@example(case=Case())
@example(case=Case(header_ops=(("size", 4096, 4096),)))
@example(case=Case(header_ops=(("payload", "empty"),)))
@example(case=Case(header_ops=(("version", 1), ("payload", "half"))))
@example(case=Case(header_ops=(("overlong-varint", 12),)))
@mu.FAST
@given(case=bitstream_cases())
def test_fuzz_bitstreams(case: Case, target: Target) -> None:
    check(case, target)


@pytest.mark.slow
@mu.SLOW
@given(case=bitstream_cases())
def test_fuzz_bitstreams_slow(case: Case, target: Target) -> None:
    check(case, target)


BAD_FILES = {
    "truncated": Case(byte_ops=(("truncate", 30),), recrc=False),
    "empty-payload": Case(header_ops=(("payload", "empty"),)),
    "forged-size": Case(header_ops=(("size", 4096, 4096), ("payload", "half"))),
    "other-model": Case(header_ops=(("model_id", b"\x00" * 8),)),
}


def test_decode_cli_refuses_in_one_line(target: Target, tmp_path: Path) -> None:
    for name, case in BAD_FILES.items():
        src, out = tmp_path / f"{name}.cbin", tmp_path / f"{name}.png"
        src.write_bytes(build(case, target))
        args = ["decode", str(src), "-o", str(out), "--codec", str(target.folder)]
        result = CliRunner().invoke(runtime_main, args)
        assert result.exit_code == 2, (name, result.output, result.exception)
        assert mu.one_error_line(result.stderr), (name, result.stderr)
        assert not out.exists() and sorted(p.suffix for p in tmp_path.iterdir()) == [".cbin"] * (
            len(list(tmp_path.glob("*.cbin")))
        ), name


def test_python_m_runtime_decode_refuses_in_one_line(target: Target, tmp_path: Path) -> None:
    """The deployed entry point, in its own process: exit 2, one line, no file left."""
    src, out = tmp_path / "bad.cbin", tmp_path / "bad.png"
    src.write_bytes(build(BAD_FILES["empty-payload"], target))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "compressor.runtime", "decode", str(src), "-o", str(out),
         "--codec", str(target.folder), "--threads", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert mu.one_error_line(proc.stderr) and "Traceback" not in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.cbin"]
