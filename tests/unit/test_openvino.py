"""OpenVINO beside ONNX Runtime: one backend abstraction, the same export and container format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

from compressor.errors import BitstreamError, CheckpointError, RecipeError
from compressor.export import export_model
from compressor.metrics.psnr import psnr
from compressor.pipeline import check_provider
from compressor.runtime import OrtCodec, container, load_codec
from compressor.runtime import backends as be
from compressor.runtime.cli import main as runtime_main
from tests.conftest import smooth_image, tiny_model

HAS_BF16 = "BF16" in be._ov_capabilities()


def loud(arch: str) -> torch.nn.Module:
    model = tiny_model(arch, seed=2)
    with torch.no_grad():
        model.net.g_a[-1].weight.mul_(6.0)  # latents that cost real bits
    model.finalize()
    return model.eval()


@pytest.fixture(scope="module", params=["bmshj2018-hyperprior", "mbt2018-mean"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_model(loud(request.param), tmp_path_factory.mktemp("ov") / request.param)


def test_sessions_have_ort_interface(exported: Path) -> None:
    ort_c = OrtCodec(exported, threads=1)
    ov_c = OrtCodec(exported, threads=1, runtime="openvino")
    y = np.random.default_rng(0).normal(0, 3, (1, 12, 4, 6)).astype(np.float32)
    for graph in ("g_s", "h_a"):
        a, b = ort_c.sessions[graph], ov_c.sessions[graph]
        assert [i.name for i in b.get_inputs()] == [i.name for i in a.get_inputs()]
        first = b.run(None, {b.get_inputs()[0].name: y})[0]
        kept = first.copy()
        b.run(None, {b.get_inputs()[0].name: y * 2})  # must not overwrite the first result
        assert np.array_equal(first, kept)
        ref = a.run(None, {a.get_inputs()[0].name: y})[0]
        assert first.shape == ref.shape and np.abs(first - ref).max() < 1e-4


def test_integer_path_files_cross_runtimes(exported: Path) -> None:
    """Format 3: either runtime decodes the other's files to the same symbols."""
    ort_c = OrtCodec(exported, threads=1)
    ov_c = load_codec(exported, threads=1, runtime="openvino")
    rgb8 = smooth_image(96, 128, seed=5)
    for enc in (ort_c, ov_c):
        data = enc.encode(rgb8)
        assert data[4] == container.FORMAT_VERSION
        _, sym_a, _ = ort_c.decode_latents(data)
        _, sym_b, _ = ov_c.decode_latents(data)
        assert all(np.array_equal(sym_a[k], sym_b[k]) for k in sym_a)
        a, b = ort_c.decode(data), ov_c.decode(data)
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
        assert psnr(a, b) > 40  # an untrained model: compare the runtimes, not the picture


def test_float_path_records_runtime_and_refuses_mismatch(exported: Path, tmp_path: Path) -> None:
    ort_f = OrtCodec(exported, threads=1, hyper="float")
    ov_f = OrtCodec(exported, threads=1, hyper="float", provider="openvino")  # a recipe's value
    assert ov_f.backend.runtime == "openvino"
    rgb8 = smooth_image(80, 96, seed=2)
    ov_data, ort_data = ov_f.encode(rgb8), ort_f.encode(rgb8)
    assert ort_data[4] == container.FLOAT_VERSION  # ONNX Runtime FP32 files are unchanged
    header, _ = container.unpack(ov_data)
    assert header.version == container.TAGGED_VERSION == 4
    assert header.hyper_tag == be.TAGS["openvino-fp32"]
    assert psnr(ov_f.decode(ov_data), ort_f.decode(ort_data)) > 35
    with pytest.raises(BitstreamError, match=r"ran on openvino-fp32.*runs it on ort-fp32"):
        ort_f.decode(ov_data)
    with pytest.raises(BitstreamError, match=r"ran on ort-fp32.*--runtime ort --precision fp32"):
        ov_f.decode(ort_data)
    (tmp_path / "f.cbin").write_bytes(ov_data)
    args = ["decode", str(tmp_path / "f.cbin"), "--codec", str(exported), "-o"]
    res = CliRunner().invoke(runtime_main, [*args, str(tmp_path / "a.png")])
    assert res.exit_code == 2 and "--runtime openvino --precision fp32" in res.output
    res = CliRunner().invoke(
        runtime_main, [*args, str(tmp_path / "b.png"), "--runtime", "openvino"]
    )
    assert res.exit_code == 0, res.output
    # an unknown tag (a newer writer) is refused by name as well
    forged = container.pack(container.Header(header.model_id, 80, 96, header.pad, 4, 77), b"x" * 8)
    with pytest.raises(BitstreamError, match="unknown tag 77"):
        ov_f.decode(forged)


def test_format_4_header_roundtrip_and_truncation() -> None:
    h = container.Header(b"\x01" * 8, 10, 20, (0, 1, 2, 3), container.TAGGED_VERSION, 2)
    data = container.pack(h, b"payload!")
    assert container.unpack(data) == (h, b"payload!")
    with pytest.raises(ValueError, match="only format 4"):
        container.pack(container.Header(b"\x01" * 8, 10, 20, (0, 1, 2, 3), 2, 1), b"")


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no native BF16 (AVX512_BF16/AMX)")
def test_bf16_is_a_choice_close_to_fp32(exported: Path) -> None:
    fp32 = OrtCodec(exported, threads=1, runtime="openvino")
    bf16 = OrtCodec(exported, threads=1, runtime="openvino", precision="bf16")
    y = np.random.default_rng(1).normal(0, 3, (1, 12, 6, 8)).astype(np.float32)
    a = fp32.sessions["g_s"].run(None, {"input": y})[0]
    b = bf16.sessions["g_s"].run(None, {"input": y})[0]
    diff = np.abs(a - b).max()
    assert 0 < diff < 0.05  # bf16 really ran (not silently fp32) and stays close
    rgb8 = smooth_image(96, 128, seed=7)
    data = bf16.encode(rgb8)  # integer path: format 3, any runtime decodes it
    assert data[4] == 3 and psnr(fp32.decode(data), bf16.decode(data)) > 35


def test_precision_and_runtime_errors(exported: Path) -> None:
    with pytest.raises(RecipeError, match=r"precision 'bf16' is not offered by runtime ort"):
        OrtCodec(exported, precision="bf16")
    with pytest.raises(RecipeError, match="runtime 'tflite' is not known; allowed: ort, openvino"):
        load_codec(exported, runtime="tflite")
    with pytest.raises(RecipeError, match="precision 'fp16'"):
        be.Backend("openvino", "fp16")
    check_provider("openvino")  # a recipe's `provider: openvino` passes the plan
    check_provider("cpu")
    with pytest.raises(RecipeError, match="provider 'nonsense' is not available"):
        check_provider("nonsense")
    res = CliRunner().invoke(runtime_main, ["encode", "x.png", "--codec", str(exported),
                                            "-o", "y.cbin", "--precision", "bf16"])  # fmt: skip
    assert res.exit_code == 2


class _Reader(CalibrationDataReader):
    def __init__(self, name: str) -> None:
        rng = np.random.default_rng(0)
        self.items = iter([{name: rng.random((1, 3, 64, 64), np.float32)} for _ in range(2)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.items, None)


def test_int8_qdq_graph_runs_in_openvino_as_it_is(exported: Path, tmp_path: Path) -> None:
    src, qdq = exported / "g_a.onnx", tmp_path / "g_a_int8.onnx"
    name = onnx.load(src).graph.input[0].name
    quantize_static(str(src), str(qdq), _Reader(name), quant_format=QuantFormat.QDQ)
    x = np.random.default_rng(3).random((1, 3, 64, 96), np.float32)
    ort_s = be.Backend("ort", threads=1).session(qdq)
    ov_s = be.Backend("openvino", threads=1).session(qdq)
    a, b = ort_s.run(None, {name: x})[0], ov_s.run(None, {name: x})[0]
    fp = be.Backend("ort", threads=1).session(src).run(None, {name: x})[0]
    scale = np.abs(fp).max()
    # both run the same quantized graph; they differ by rounding, far less than from fp32
    assert np.abs(a - b).max() <= 0.1 * scale
    assert np.abs(b - fp).max() > 0  # it really is the quantized graph


def test_runtime_auto_keeps_the_faster_runtime_per_graph(
    exported: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # which runtime is faster is this machine's business: the clock is replaced so that
    # OpenVINO wins g_s only, and the choice must follow the times, graph by graph
    ticks = {"now": 0.0}
    slow = {("ort", "g_s"), ("openvino", "g_a"), ("openvino", "h_a")}
    real_run = {}

    def timed(kind: str, graph: str, session: object) -> None:
        run = session.run  # type: ignore[attr-defined]
        real_run[(kind, graph)] = run

        def run_and_tick(names: object, feeds: dict) -> list:
            ticks["now"] += 2.0 if (kind, graph) in slow else 1.0
            return run(names, feeds)

        session.run = run_and_tick  # type: ignore[attr-defined]

    real_session = be.Backend.session

    def session(self: be.Backend, path: Path) -> object:
        s = real_session(self, path)
        if not isinstance(s, be.OvSession):
            s = _Wrapped(s)  # ORT's InferenceSession takes no new attributes
        timed(self.runtime, path.stem, s)
        return s

    monkeypatch.setattr(be.Backend, "session", session)
    monkeypatch.setattr(be.time, "perf_counter", lambda: ticks["now"])
    codec = load_codec(exported, threads=1, runtime="auto")
    assert codec.runtimes == {"g_a": "ort", "h_a": "ort", "h_s": "ort", "g_s": "openvino"}
    assert isinstance(codec.sessions["g_s"], be.OvSession)
    assert codec.name.startswith("auto:") and codec.backend.tag == "ort-fp32"
    # every graph was timed in both runtimes but h_s (ORT: it picks a float file's indexes)
    assert {g for _, g in real_run} == {"g_a", "h_a", "g_s", "h_s"}
    assert ("openvino", "h_s") not in real_run
    # the codec works as any other: the file decodes with the plain ORT codec too
    rgb8 = smooth_image(96, 128, seed=4)
    data = codec.encode(rgb8)
    plain = OrtCodec(exported, threads=1)
    assert np.abs(plain.decode(data).astype(int) - codec.decode(data).astype(int)).max() <= 1


class _Wrapped:
    """An ONNX Runtime session whose run() a test may replace."""

    def __init__(self, session: object) -> None:
        self._s = session
        self.run = session.run  # type: ignore[attr-defined]

    def get_inputs(self) -> list:
        return self._s.get_inputs()  # type: ignore[attr-defined,no-any-return]


def test_runtime_auto_refusals(exported: Path) -> None:
    with pytest.raises(RecipeError, match="provider 'cuda' is not the CPU"):
        load_codec(exported, provider="cuda", runtime="auto")
    with pytest.raises(RecipeError, match="fp32 hints only"):
        load_codec(exported, runtime="auto", precision="bf16")
    with pytest.raises(RecipeError, match="allowed: ort, openvino, auto"):
        load_codec(exported, runtime="tvm")


def test_runtime_auto_falls_back_to_ort_where_openvino_refuses_a_graph(
    exported: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: object, path: Path, *args: object) -> None:
        raise CheckpointError(f"{path} cannot be loaded by OpenVINO (refused)")

    monkeypatch.setattr(be.OvSession, "__init__", refuse)
    codec = load_codec(exported, threads=1, runtime="auto")
    assert set(codec.runtimes.values()) == {"ort"}
    rgb8 = smooth_image(64, 64, seed=1)
    assert codec.decode(codec.encode(rgb8)).shape == rgb8.shape
