"""ONNX Runtime static PTQ of export folders: INT8 convolutions, valid exports, search."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from compressor.errors import BitstreamError, RecipeError
from compressor.export import export_model
from compressor.quant import QUANTIZERS, QuantParams, ort_static
from compressor.quant import graph as qg
from compressor.runtime import load_codec
from compressor.runtime import manifest as mf
from tests.conftest import smooth_image, tiny_model

IMAGES = [smooth_image(96, 128, i) for i in range(3)]


@pytest.fixture(scope="module")
def float_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_model(tiny_model(), tmp_path_factory.mktemp("exp") / "fp32")


def quantize(src: Path, out: Path, **params: object) -> dict:
    return QUANTIZERS.get("ort-static")(src, out, QuantParams.model_validate(params), IMAGES, 1)


def ort_ops(path: Path, tmp: Path) -> Counter:
    """The op types ONNX Runtime actually runs after its graph optimizations (QDQ fusion)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp / f"{path.stem}.opt.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)


def test_every_decoder_conv_runs_int8(float_export: Path, tmp_path: Path) -> None:
    report = quantize(float_export, tmp_path / "q")
    g_s = onnx.load(tmp_path / "q" / "g_s.onnx")
    assert qg.float_convs(g_s) == []  # the 4 former ConvTranspose + 3 IGDN convs included
    assert len(qg.conv_names(g_s)) == 7
    ops = ort_ops(tmp_path / "q" / "g_s.onnx", tmp_path)
    assert ops["QLinearConv"] == 7 and ops["Conv"] == 0 and ops["ConvTranspose"] == 0
    assert {g["graph"]: g["int8_convs"] for g in report["graphs"]} == {"g_a": 7, "g_s": 7}
    # the hyper-decoder is not a default component: copied byte for byte
    assert (tmp_path / "q" / "h_s.onnx").read_bytes() == (float_export / "h_s.onnx").read_bytes()


def test_float_count_is_what_recipe_keeps(float_export: Path, tmp_path: Path) -> None:
    quantize(float_export, tmp_path / "q", keep_float=["gdn", "decoder:last"])
    g_s = onnx.load(tmp_path / "q" / "g_s.onnx")
    expected = {*qg.gdn_convs(g_s), qg.rule_nodes(g_s, "last")[0]}
    assert set(qg.float_convs(g_s)) == expected and len(expected) == 4
    assert ort_ops(tmp_path / "q" / "g_s.onnx", tmp_path)["QLinearConv"] == 3


def test_unrewritten_decoder_keeps_transposed_convs_float(tmp_path: Path) -> None:
    src = export_model(tiny_model(), tmp_path / "orig", rewrite=False)
    quantize(src, tmp_path / "q")
    g_s = onnx.load(tmp_path / "q" / "g_s.onnx")
    assert Counter(n.op_type for n in g_s.graph.node)["ConvTranspose"] == 4
    assert ort_ops(tmp_path / "q" / "g_s.onnx", tmp_path)["ConvTranspose"] == 4


def test_quantized_folder_is_a_valid_export(float_export: Path, tmp_path: Path) -> None:
    report = quantize(float_export, tmp_path / "q")
    manifest = mf.read(tmp_path / "q")
    mf.verify(tmp_path / "q", manifest)
    assert manifest.model_id == report["model_id"] != mf.read(float_export).model_id
    assert manifest.extra["quantization"]["graphs"] == ["g_a", "g_s"]
    fp32, int8 = load_codec(float_export, threads=1), load_codec(tmp_path / "q", threads=1)
    data = int8.encode(IMAGES[0])
    assert int8.decode(data).shape == IMAGES[0].shape
    with pytest.raises(BitstreamError, match="another model"):
        fp32.decode(data)
    assert abs(report["quick_check"]["psnr_drop_db"]) < 0.5


def test_hyper_decoder_runs_the_same_graph_on_both_sides(
    float_export: Path, tmp_path: Path
) -> None:
    quantize(float_export, tmp_path / "q", components=["decoder", "hyper_decoder"])
    manifest = mf.read(tmp_path / "q")
    assert manifest.extra["quantization"]["hyper_decoder_shared"] is True
    h_s = onnx.load(tmp_path / "q" / "h_s.onnx")
    assert qg.float_convs(h_s) == [] and len(qg.conv_names(h_s)) == 3
    codec = load_codec(tmp_path / "q", threads=1)
    for rgb8 in IMAGES:
        data = codec.encode(rgb8)
        assert codec.encode(rgb8) == data  # deterministic: the decoder rebuilds the same tables
        assert codec.decode(data).shape == rgb8.shape


def test_unknown_node_name_names_the_real_ones(float_export: Path, tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"no Conv node '/nope'.*/inner/inner.0/conv/Conv"):
        quantize(float_export, tmp_path / "q", keep_float=["decoder:/nope"])
    assert not (tmp_path / "q").exists()


def test_already_quantized_source_is_refused(float_export: Path, tmp_path: Path) -> None:
    quantize(float_export, tmp_path / "q")
    with pytest.raises(RecipeError, match="already quantized"):
        quantize(tmp_path / "q", tmp_path / "q2")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"backend": "tensorrt"}, "unknown quantization backend 'tensorrt'; allowed: ort-static"),
        ({"components": ["entropy"]}, "components must be a non-empty list"),
        ({"keep_float": ["middle"]}, "a rule (first, last, gdn)"),
        ({"accuracy": {"max_psnr_drop_db": -0.3}}, "a tolerance is the largest loss allowed"),
        ({"accuracy": {"max_bpp_increase": -0.01}}, "so it is >= 0"),
    ],
)
def test_bad_params(params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        QuantParams.model_validate(params)


def test_sensitivity_and_accuracy_aware_search(float_export: Path, tmp_path: Path) -> None:
    # a tolerance of 0 dB cannot hold for INT8: the search spends its whole budget
    report = quantize(
        float_export,
        tmp_path / "q",
        sensitivity=True,
        accuracy={"max_psnr_drop_db": 0.0, "max_bpp_increase": None, "max_trials": 3, "images": 1},
    )
    table = report["sensitivity"]
    assert len(table) == 14 and sum(r["gdn"] for r in table) == 6
    drops = [r["psnr_drop_db"] for r in table]
    assert drops == sorted(drops, reverse=True) and drops[0] > 0
    search = report["accuracy_aware"]
    assert len(search["trials"]) == 3 and search["met"] is False
    kept = [k["node"] for k in search["kept"]]
    assert kept == [r["node"] for r in table[:2]]  # most sensitive first, one per trial
    assert "most sensitive layer left" in search["kept"][0]["reason"]
    floats = {g["graph"]: set(g["float_convs"]) for g in report["graphs"]}
    assert set(kept) == floats["g_a"] | floats["g_s"]
    saved = json.loads(json.dumps(report))  # the report is plain JSON
    assert saved["accuracy_aware"]["tolerance"]["max_trials"] == 3


def test_accuracy_met_at_once_keeps_nothing(float_export: Path, tmp_path: Path) -> None:
    report = quantize(float_export, tmp_path / "q", accuracy={"max_psnr_drop_db": 5.0})
    assert report["accuracy_aware"]["met"] is True and report["accuracy_aware"]["kept"] == []
    assert report["sensitivity"] is None  # not needed, not computed


def test_preprocessing_runs_for_a_relative_source_path(
    float_export: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Recipes give relative paths; pre-processing changes into a scratch directory, so a
    path resolved only after that pointed nowhere and pre-processing silently never ran."""
    monkeypatch.chdir(float_export.parent)
    with caplog.at_level(logging.WARNING):
        report = quantize(Path(float_export.name), tmp_path / "q")
    assert [g["preprocess"] for g in report["graphs"]] == ["done", "done"]
    assert "skipped" not in caplog.text
    assert "Please consider" not in caplog.text  # ORT's advice: the graphs are pre-processed
    # ORT tags what its pre-processing wrote; the quantized graphs carry the tag on
    props = {p.key for p in onnx.load(tmp_path / "q" / "g_a.onnx").metadata_props}
    assert "onnx.quant.pre_process" in props


def test_ort_preprocessing_advice_is_silenced(
    float_export: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Without pre-processing ORT logs "Please consider pre-processing" (with a URL) twice
    per graph on the root logger; the user sees our progress and summary instead."""
    with caplog.at_level(logging.WARNING):
        report = quantize(float_export, tmp_path / "q", preprocess=False)
    assert [g["preprocess"] for g in report["graphs"]] == ["not requested"] * 2
    assert "Please consider" not in caplog.text
    root = logging.getLogger()
    assert not any(isinstance(f, ort_static._DropPreprocessAdvice) for f in root.filters)


def test_calibration_inputs_match_the_codec(float_export: Path) -> None:
    from compressor.quant import calib

    codec = load_codec(float_export, threads=1)
    inputs = calib.graph_inputs(codec, IMAGES[0])
    assert inputs["g_a"].shape == (1, 3, 128, 128)
    assert np.array_equal(inputs["g_s"], np.rint(inputs["g_s"]))  # a rounded latent
    assert inputs["g_s"].shape[1] == 12 and inputs["h_s"].shape[2] == 2


@pytest.mark.slow
def test_bundled_int8_quality_on_kodak(tmp_path: Path) -> None:
    """The bundled model: every decoder conv INT8, PSNR loss <= 0.3 dB, bpp within +2%."""
    from compressor import checkpoint
    from compressor.data import load_images
    from compressor.metrics.psnr import psnr
    from compressor.quant import calib
    from tests.conftest import BUNDLED, KODAK, WIKI, need

    model = checkpoint.load(need(BUNDLED, "bundled model"))
    kodak = load_images(need(KODAK, "Kodak"))[:2]
    cal = [calib.centre_crop(a, 256) for _, a in load_images(need(WIKI, "training photos"))[:8]]
    src = export_model(model, tmp_path / "fp32")
    QUANTIZERS.get("ort-static")(src, tmp_path / "q", QuantParams(), cal, 1)
    assert qg.float_convs(onnx.load(tmp_path / "q" / "g_s.onnx")) == []
    fp32, int8 = load_codec(src, threads=1), load_codec(tmp_path / "q", threads=1)
    drops, rates = [], []
    for _, rgb8 in kodak:
        a, b = fp32.encode(rgb8), int8.encode(rgb8)
        drops.append(psnr(rgb8, fp32.decode(a)) - psnr(rgb8, int8.decode(b)))
        rates.append(len(b) / len(a) - 1)
    assert np.mean(drops) <= 0.3 and np.mean(rates) <= 0.02
