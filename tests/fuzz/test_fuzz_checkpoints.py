"""Fuzzing checkpoints (ours and CompressAI's layouts): compressor.checkpoint.load returns a
model or raises a CompressorError, nothing else; pickles that would run code never do."""

from __future__ import annotations

import functools
import io
import os
import pickle
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from hypothesis import example, given
from hypothesis import strategies as st

from compressor import checkpoint
from compressor.cli import main
from compressor.errors import CheckpointError, CompressorError
from compressor.models import CodecAdapter
from tests.conftest import tiny_model, write_images
from tests.fuzz import mutate as mu

BASES = ("own", "compressai", "compressai-train", "bare")
DTYPES = ["float16", "float64", "bfloat16", "int64", "int8", "uint8", "bool", "complex64"]
TENSOR_OP = st.one_of(
    st.tuples(st.sampled_from(["nan", "inf", "-inf", "empty", "scalar", "sparse", "transpose"])),
    st.tuples(st.just("dtype"), st.sampled_from(DTYPES)),
    st.tuples(st.just("shape"), st.lists(st.integers(0, 40), max_size=5)),
    st.tuples(st.just("quantized")),
)
CONFIG_VALUE = st.one_of(
    st.sampled_from([0, -1, 1, 3, 7, 9, 16, 4096, 10**6, 2**40, 8.0, "8", True, None, [8, 8]]),
    mu.WEIRD,
)
CONFIG_KEY = st.sampled_from(["N", "M", "H", "D", "widths", "quality", "extra", ""])


@dataclass(frozen=True)
class Case:
    base: str
    tree_ops: tuple[Any, ...] = ()
    tensor_ops: tuple[Any, ...] = ()  # (which tensor, op)
    config_ops: tuple[Any, ...] = ()  # (key, value)
    zip_ops: tuple[Any, ...] = ()  # (kind, which entry, arg)
    byte_ops: tuple[Any, ...] = ()


ZIP_OP = st.one_of(
    st.tuples(st.sampled_from(["drop", "empty", "rename", "dup"]), st.integers(0, 999), st.none()),
    st.tuples(st.just("bytes"), st.integers(0, 999), mu.BYTE_OPS),
    st.tuples(st.just("pickle"), st.just(0), mu.BYTE_OPS),  # the data.pkl, mutated
)


@st.composite
def checkpoint_cases(draw: st.DrawFn) -> Case:
    base = draw(st.sampled_from(BASES))
    kinds = draw(st.sets(st.sampled_from(["tree", "tensor", "config", "zip", "bytes"]), min_size=1))
    return Case(
        base,
        tuple(draw(mu.TREE_OPS)) if "tree" in kinds else (),
        tuple(draw(st.lists(st.tuples(st.integers(0, 999), TENSOR_OP), min_size=1, max_size=3)))
        if "tensor" in kinds
        else (),
        tuple(draw(st.lists(st.tuples(CONFIG_KEY, CONFIG_VALUE), min_size=1, max_size=2)))
        if "config" in kinds and base == "own"
        else (),
        tuple(draw(st.lists(ZIP_OP, min_size=1, max_size=2))) if "zip" in kinds else (),
        tuple(draw(mu.BYTE_OPS)) if "bytes" in kinds else (),
    )


@functools.cache
def _bases() -> dict[str, Any]:
    own = checkpoint.to_dict(tiny_model())
    sd = own["state_dict"]
    return {
        "own": own,
        "compressai": {"state_dict": sd},
        # CompressAI's examples/train.py saves these fields beside the weights
        "compressai-train": {
            "epoch": 3,
            "state_dict": sd,
            "loss": 1.25,
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
            "lr_scheduler": {"patience": 20},
        },
        "bare": sd,
    }


@pytest.fixture(scope="module")
def bases() -> dict[str, Any]:
    return _bases()


def mutate_tensor(t: torch.Tensor, op: tuple[Any, ...]) -> Any:
    kind = op[0]
    if t.layout != torch.strided or t.is_quantized:  # mutated already: start from a plain one
        t = torch.ones(3, 2)
    if kind in ("nan", "inf", "-inf"):
        t = t.float().clone()
        t.view(-1)[: max(1, t.numel() // 2)] = float(kind)
        return t
    if kind == "empty":
        return torch.empty(0)
    if kind == "scalar":
        return torch.tensor(1.5)
    if kind == "sparse":
        return t.reshape(-1).to_sparse() if t.numel() else t
    if kind == "transpose":
        return t.t() if t.dim() == 2 else t.flip(0) if t.dim() else t
    if kind == "dtype":
        return t.to(getattr(torch, op[1]))
    if kind == "shape":
        return torch.zeros(op[1])
    return torch.quantize_per_tensor(t.float(), 0.1, 0, torch.qint8)


def build(case: Case, bases: dict[str, Any]) -> bytes:
    """The bytes of the mutated checkpoint file."""
    obj: Any = mu._copy(bases[case.base])
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else {}
    names = sorted(sd)
    for which, op in case.tensor_ops:
        name = names[which % len(names)]
        sd[name] = mutate_tensor(sd[name], op)
    for key, value in case.config_ops:
        obj["config"][key] = value
    for op in case.tree_ops:
        obj = mu.apply_tree_op(obj, op)
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    for op in case.zip_ops:
        data = mutate_zip(data, op)
    return mu.apply_byte_ops(data, list(case.byte_ops))


def mutate_zip(data: bytes, op: tuple[Any, Any, Any]) -> bytes:
    """Rewrite the zip archive with one entry dropped, emptied, renamed or mutated."""
    try:
        src = zipfile.ZipFile(io.BytesIO(data))
        entries = [(i.filename, src.read(i)) for i in src.infolist()]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return data  # an earlier op broke the archive: leave it broken
    kind, which, arg = op
    if kind == "pickle":
        which = next((i for i, (n, _) in enumerate(entries) if n.endswith("data.pkl")), 0)
    i = which % len(entries)
    name, body = entries[i]
    if kind == "drop":
        del entries[i]
    elif kind == "empty":
        entries[i] = (name, b"")
    elif kind == "rename":
        entries[i] = (name + ".x", body)
    elif kind == "dup":
        entries.append((name, body[: len(body) // 2]))
    else:
        entries[i] = (name, mu.apply_byte_ops(body, list(arg)))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for n, b in entries:
            dst.writestr(n, b)
    return out.getvalue()


def check(case: Case) -> None:
    bases = _bases()
    with tempfile.TemporaryDirectory(prefix="fz-ckpt-") as d:
        path = Path(d) / "model.pt"
        path.write_bytes(build(case, bases))
        expect_model_or_error(path)


def expect_model_or_error(path: Path) -> None:
    start = time.perf_counter()
    try:
        model = checkpoint.load(path)
    except CompressorError as e:
        text = str(e)
        assert "\n" not in text and len(text) < 1000, f"not one short line: {text[:2000]!r}"
        mu.note(f"refused: {type(e).__name__}")
    else:
        assert isinstance(model, CodecAdapter)
        mu.note("loaded")
    assert time.perf_counter() - start < 30, "load took more than 30 s"


@example(case=Case("own"))
@example(case=Case("own", config_ops=(("N", 4096), ("M", 4096))))
@example(case=Case("bare", tensor_ops=((5, ("sparse",)),)))
@example(case=Case("own", zip_ops=(("drop", 0, None),)))
@mu.FAST
@given(case=checkpoint_cases())
def test_fuzz_checkpoints(case: Case) -> None:
    check(case)


@pytest.mark.slow
@mu.SLOW
@given(case=checkpoint_cases())
def test_fuzz_checkpoints_slow(case: Case) -> None:
    check(case)


#: examples the fuzzers found, each failing when it was added (see the commit message)
REGRESSIONS = {
    # not a zip any more ("PK" -> "QK"): torch reads it as a legacy pickle and its
    # weights-only unpickler raises IndexError (pop from empty list)
    "first-byte-flipped": Case("compressai", byte_ops=(("flip", 0, 0),)),
    # data.pkl cut short: IndexError (index out of range) from the weights-only unpickler
    "data-pkl-truncated": Case("compressai", zip_ops=(("pickle", 0, [("truncate", 652)]),)),
    # a mutated data.pkl rebuilds a tensor from a wrong storage: TypeError from torch's
    # _rebuild_tensor (set_() received an invalid combination of arguments)
    "data-pkl-rebuild": Case(
        "compressai",
        tensor_ops=((998, ("-inf",)),),
        zip_ops=(
            ("pickle", 0, [("duplicate", 73269, 127), ("delete", 1048576, 1)]),
            ("pickle", 0, [("duplicate", 73269, 127)]),
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_found_by_fuzzing(name: str) -> None:
    check(REGRESSIONS[name])


# -- pickles that would run code -----------------------------------------------------------


class Payload:
    """Unpickling this calls os.mkdir(marker): the side effect that must never happen."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def evil_files(folder: Path, marker: Path) -> dict[str, Path]:
    """The same payload in every place torch.load could meet it."""
    own = checkpoint.to_dict(tiny_model())
    files: dict[str, Path] = {}
    own["meta"] = {"x": Payload(marker)}
    torch.save(own, files.setdefault("in-our-format", folder / "own.pt"))
    torch.save({"state_dict": Payload(marker)}, files.setdefault("compressai", folder / "ca.pt"))
    # the legacy (non-zip) format: a bare pickle stream
    files["legacy-pickle"] = folder / "legacy.pt"
    files["legacy-pickle"].write_bytes(pickle.dumps(Payload(marker), protocol=2))
    # our zip, its data.pkl swapped for the payload
    buf = io.BytesIO()
    torch.save({"format": "compressor/1"}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    files["zip-data-pkl"] = folder / "zip.pt"
    with zipfile.ZipFile(files["zip-data-pkl"], "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            body = src.read(info)
            if info.filename.endswith("data.pkl"):
                body = pickle.dumps(Payload(marker), protocol=2)
            dst.writestr(info.filename, body)
    return files


@pytest.mark.parametrize("where", ["in-our-format", "compressai", "legacy-pickle", "zip-data-pkl"])
def test_code_in_a_pickle_never_runs(where: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = evil_files(tmp_path, marker)[where]
    with pytest.raises(CheckpointError):
        checkpoint.load(path)
    assert not marker.exists()


def test_evaluate_refuses_bad_checkpoints_in_one_line(
    tmp_path: Path, bases: dict[str, Any]
) -> None:
    """Through `cli.py evaluate`: exit 2, one line, no report folder, no payload run."""
    marker = tmp_path / "pwned"
    images = write_images(tmp_path / "imgs", [(32, 32)])
    bad = {"evil": evil_files(tmp_path, marker)["in-our-format"]}
    for name, case in {
        "truncated": Case("own", byte_ops=(("truncate", 5000),)),
        "nan": Case("own", tensor_ops=((30, ("nan",)),)),
        "widths": Case("own", config_ops=(("N", 4096),)),
    }.items():
        bad[name] = tmp_path / f"{name}.pt"
        bad[name].write_bytes(build(case, bases))
    for name, path in bad.items():
        out = tmp_path / f"report-{name}"
        result = CliRunner().invoke(
            main, ["evaluate", str(path), "--data", str(images), "--out", str(out)]
        )
        assert result.exit_code == 2, (name, result.output, result.exception)
        assert mu.one_error_line(result.stderr), (name, result.stderr)
        assert "Traceback" not in result.output and not out.exists(), name
    assert not marker.exists()
