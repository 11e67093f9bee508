"""The torch-side quantization backends: inc-static (Neural Compressor) and qat."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from compressor import checkpoint
from compressor.errors import CheckpointError, RecipeError
from compressor.export import export_model
from compressor.quant import QUANTIZERS, QuantParams, calib, ort_static
from compressor.quant import graph as qg
from compressor.runtime import load_codec
from compressor.train import TrainConfig, train
from tests.conftest import smooth_image, tiny_model

IMAGES = [smooth_image(96, 128, i) for i in range(4)]
CAL = {"images": 2, "crop": 64}
QAT = {"max_steps": 12, "max_minutes": None, "crop": 64, "val_crop": 64, "batch_size": 2}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A briefly trained tiny model (a random one has an all-zero latent) and its export."""
    folder = tmp_path_factory.mktemp("trained")
    model = tiny_model()
    cfg = TrainConfig(max_steps=40, crop=64, val_crop=64, batch_size=2, lr=3e-3, eval_every=40)
    train(model, IMAGES, cfg, folder / "tiny.pt", resume=False)
    return folder / "tiny.pt", export_model(model.eval(), folder / "fp32")


def run(backend: str, ckpt: Path, src: Path, out: Path, **params: object) -> dict:
    p = QuantParams.model_validate({"backend": backend, "calibration": CAL, **params})
    return QUANTIZERS.get(backend)(src, out, p, IMAGES, 1, checkpoint=ckpt, train_images=IMAGES)


def q_scale(model: onnx.ModelProto, tensor: str) -> float:
    """The scale of the QuantizeLinear that quantizes `tensor` in a QDQ graph."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    nodes = model.graph.node
    (node,) = [n for n in nodes if n.op_type == "QuantizeLinear" and n.input[0] == tensor]
    return float(inits[node.input[1]])


def assert_int8_codec(folder: Path) -> None:
    g_s = onnx.load(folder / "g_s.onnx")
    assert qg.float_convs(g_s) == [] and len(qg.conv_names(g_s)) == 7
    codec = load_codec(folder, threads=1)
    rec = codec.decode(codec.encode(IMAGES[0]))
    assert rec.shape == IMAGES[0].shape and rec.std() > 1  # a picture, not a constant


def test_inc_static_carries_incs_scales(trained: tuple[Path, Path], tmp_path: Path) -> None:
    report = run("inc-static", *trained, tmp_path / "q")
    assert_int8_codec(tmp_path / "q")
    rows = report["inc"]["inputs"]
    assert len(rows) == 14 and report["inc"]["observer"] == "minmax"
    g_s = onnx.load(tmp_path / "q" / "g_s.onnx")
    for row in (r for r in rows if r["graph"] == "g_s"):
        assert q_scale(g_s, row["tensor"]) == pytest.approx(row["inc_scale"], rel=1e-6)
    # INC's moving-average observer is not ORT's global min/max: some input scale differs
    assert any(abs(r["inc_scale"] / r["ort_scale"] - 1) > 1e-3 for r in rows)
    assert abs(report["quick_check"]["psnr_drop_db"]) < 1.0


def test_qat_lowers_rd_loss_and_exports_int8(trained: tuple[Path, Path], tmp_path: Path) -> None:
    report = run("qat", *trained, tmp_path / "q", qat={**QAT, "lr": 1e-3, "eval_every": 4})
    qat = report["qat"]
    assert qat["steps"] == 12 and qat["stopped"] == "max_steps"
    assert qat["rd_loss_after"] < qat["rd_loss_before"] - 0.01, qat
    assert_int8_codec(tmp_path / "q")
    assert report["graphs"][1]["int8_convs"] == 7
    # a new float model underneath: its hyperprior and entropy tables were fine-tuned too
    assert (tmp_path / "q" / "h_s.onnx").read_bytes() != (trained[1] / "h_s.onnx").read_bytes()


def test_fake_quantized_torch_is_the_ort_int8_graph(trained: tuple[Path, Path], tmp_path: Path):
    """Without training, the fake-quantized decoder and ORT's INT8 graph built from its
    ranges compute the same thing (up to a few rounding-boundary flips)."""
    from compressor.quant import overrides, qat
    from compressor.quant.fakequant import Scheme

    params = QuantParams(components=["decoder"], calibration=CAL)  # type: ignore[arg-type]
    model = checkpoint.load(trained[0])
    codec = load_codec(trained[1], threads=1)
    inputs = calib.calibration_inputs(codec, [a[:64, :64] for a in IMAGES[:2]], ["g_s"])
    jobs = ort_static.prepare_jobs(trained[1], params, inputs, tmp_path)
    ort_static.quantize_all(jobs, params, tmp_path)
    wrapped = qat.fake_quantize(model, jobs, Scheme())
    table = qat.learned_overrides(wrapped, jobs, params)
    files = overrides.quantize_with(jobs, params, tmp_path, table)
    y = calib.graph_inputs(codec, IMAGES[3])["g_s"]
    sess = ort.InferenceSession(str(files["g_s"]), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": y})[0]
    with torch.no_grad():
        g_s = model.net.g_s
        assert isinstance(g_s, torch.nn.Module)
        fake = g_s.eval()(torch.from_numpy(y)).numpy()
        plain = codec.sessions["g_s"].run(None, {"input": y})[0]
    step = float(wrapped["g_s"][-1].out.qparams()[0])  # one output quantization step
    assert np.abs(got - fake).mean() < 0.1 * step
    assert np.abs(got - fake).mean() < 0.2 * np.abs(plain - fake).mean()  # far nearer than float


def test_torch_backends_need_the_checkpoint(trained: tuple[Path, Path], tmp_path: Path) -> None:
    p = QuantParams(backend="qat", calibration=CAL)  # type: ignore[arg-type]
    with pytest.raises(RecipeError, match="works on the torch model"):
        QUANTIZERS.get("qat")(trained[1], tmp_path / "q", p, IMAGES, 1)
    other = tmp_path / "other.pt"
    checkpoint.save(tiny_model(seed=5), other)
    with pytest.raises(CheckpointError, match="not the model that was exported"):
        run("inc-static", other, trained[1], tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_qat_refuses_an_unrewritten_export(trained: tuple[Path, Path], tmp_path: Path) -> None:
    src = export_model(checkpoint.load(trained[0]), tmp_path / "orig", rewrite=False)
    with pytest.raises(RecipeError, match="export with rewrite: true"):
        run("qat", trained[0], src, tmp_path / "q", qat=QAT)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"backend": "qat", "qat": {"max_steps": 0}}, "greater than or equal to 1"),
        ({"backend": "qat", "qat": {"max_minutes": 0}}, "greater than 0"),
        ({"backend": "qat", "qat": {"epochs": 3}}, "Extra inputs are not permitted"),
        ({"backend": "ort-static", "qat": {}}, "qat: is an option of backend qat"),
        ({"backend": "inc-static", "sensitivity": True}, "does not run them"),
        ({"backend": "inc-static", "calibration": {"method": "percentile"}}, "got percentile"),
        ({"backend": "tflite"}, "allowed: ort-static, inc-static, qat"),
    ],
)
def test_bad_params(params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        QuantParams.model_validate(params)
