"""The export option gdn_in_phases: each IGDN of the decoder runs on the phase convolutions of
the deconvolution before it (rewrites.gdn_into_phases), recorded in the manifest so that the
torch-side quantizers (qat, inc-static) rewrite the checkpoint the same way; refused where it
cannot apply, and together with int8_gdn (which adds nothing to the moved form)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml
from click.testing import CliRunner

from compressor import checkpoint
from compressor.cli import main
from compressor.errors import CheckpointError, RecipeError
from compressor.export import export_model
from compressor.export.rewrites import PhaseConv
from compressor.models import MODELS, CodecAdapter
from compressor.quant import QUANTIZERS, QuantParams, calib, ort_static, qat, torch_src
from compressor.quant import graph as qg
from compressor.quant.fakequant import Scheme
from compressor.runtime import container, load_codec
from compressor.runtime import manifest as mf
from tests.conftest import smooth_image, tiny_model, write_images

IMAGES = [smooth_image(64, 64, i) for i in range(2)]
#: g_s of the N=16 model: 3 deconvs with 16 outputs (>= PHASE_MIN_CHANNELS: 4 phase convs
#: each, an IGDN after each) and the 3-channel image layer (one sub-pixel conv)
PLAIN_CONVS = 3 * 4 + 1 + 3
MOVED_CONVS = 3 * 4 + 1 + 3 * 4


def phase_model() -> CodecAdapter:
    """The tiny hyperprior, but with N=16 so that its decoder's deconvs become PhaseConvs
    (N=8 gives sub-pixel convs only: nothing to move). g_a's last conv is scaled up so that
    the latent is not all zeros (a random model's is), for calibration to see real ranges;
    the IGDNs' betas and gammas are made distinct (equal ones are merged behind Identity)."""
    torch.manual_seed(0)
    model = MODELS.get("bmshj2018-hyperprior").build("bmshj2018-hyperprior", {"N": 16, "M": 12})
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.net.named_parameters():
            if name.endswith(("beta", "gamma")):
                param.add_(0.01 * torch.rand(param.shape, generator=gen))
        model.net.g_a[-1].weight.mul_(30)
    model.finalize()
    return model.eval()


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The checkpoint and its export without and with the option."""
    folder = tmp_path_factory.mktemp("gdn")
    model = phase_model()
    checkpoint.save(model, folder / "m.pt")
    plain = export_model(model, folder / "plain")
    moved = export_model(model, folder / "moved", gdn_in_phases=True)
    return {"ckpt": folder / "m.pt", "plain": plain, "moved": moved}


def test_the_igdn_convs_run_per_phase(exports: dict[str, Any]) -> None:
    plain, moved = (onnx.load(exports[k] / "g_s.onnx") for k in ("plain", "moved"))
    assert len(qg.conv_names(plain)) == PLAIN_CONVS
    assert len(qg.conv_names(moved)) == MOVED_CONVS
    per_phase = [n for n in qg.conv_names(moved) if "/gdns." in n]
    assert len(per_phase) == 3 * 4 and not any("/gdns." in n for n in qg.conv_names(plain))
    # the other graphs have no IGDN after a phase conv: unchanged
    for g in ("g_a", "h_a", "h_s"):
        a, b = (onnx.load(exports[k] / f"{g}.onnx") for k in ("plain", "moved"))
        assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node], g


def test_the_manifest_records_it(exports: dict[str, Any]) -> None:
    assert mf.read(exports["moved"]).extra["gdn_in_phases"] is True
    assert mf.read(exports["plain"]).extra["gdn_in_phases"] is False


def test_decodes_as_the_plain_export_in_float(exports: dict[str, Any]) -> None:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    runs = [
        ort.InferenceSession(str(exports[k] / "g_s.onnx"), opts, providers=["CPUExecutionProvider"])
        for k in ("plain", "moved")
    ]
    gen = torch.Generator().manual_seed(1)
    for h, w in [(4, 6), (5, 3)]:
        y = (torch.randn(1, 12, h, w, generator=gen) * 4).round().numpy()
        a, b = (r.run(None, {"input": y})[0] for r in runs)
        assert a.shape == b.shape == (1, 3, 16 * h, 16 * w)
        assert float(np.abs(a - b).max()) <= 1e-5
    codecs = [load_codec(exports[k], threads=1) for k in ("plain", "moved")]
    bits = [c.encode(IMAGES[0]) for c in codecs]
    payloads = [container.unpack(b)[1] for b in bits]
    assert payloads[0] == payloads[1]  # the same latents (the headers differ: the model id)
    assert np.array_equal(codecs[0].decode(bits[0]), codecs[1].decode(bits[1]))


def test_torch_side_rewrites_as_the_manifest_says(exports: dict[str, Any]) -> None:
    """inc-static's torch_src.rewritten finds the export's conv order; a manifest without the
    key (an older export) means not moved, which the moved export's convs do not match."""
    model = checkpoint.load(exports["ckpt"])
    for key in ("plain", "moved"):
        manifest = mf.read(exports[key])
        sites = torch_src.conv_sites(onnx.load(exports[key] / "g_s.onnx"))
        module = torch_src.rewritten(model, manifest, "g_s")
        y = torch.zeros(1, 12, 4, 6)
        torch_src.check_same("g_s", sites, torch_src.conv_weights(module, y))
    old = mf.read(exports["moved"])
    del old.extra["gdn_in_phases"]
    module = torch_src.rewritten(model, old, "g_s")
    assert not any(isinstance(m, PhaseConv) and m.gdns for m in module.modules())
    with pytest.raises(CheckpointError, match="not the model that was exported"):
        torch_src.check_same("g_s", sites, torch_src.conv_weights(module, y))


def test_qat_fake_quantizes_and_reexports_the_moved_form(
    exports: dict[str, Any], tmp_path: Path
) -> None:
    """QAT pairs its fake-quantized convs with the moved export's (the manifest's flag), and
    its re-export after training is moved again and says so (learned_overrides pairs them)."""
    src = exports["moved"]
    params = QuantParams(components=["decoder"], calibration={"images": 2, "crop": 64})  # type: ignore[arg-type]
    codec = load_codec(src, threads=1)
    inputs = calib.calibration_inputs(codec, IMAGES, ["g_s"])
    (tmp_path / "ptq").mkdir()
    jobs = ort_static.prepare_jobs(src, params, inputs, tmp_path / "ptq")
    ort_static.quantize_all(jobs, params, tmp_path / "ptq")
    model = checkpoint.load(exports["ckpt"])
    with pytest.raises(CheckpointError, match="runs 16 convolutions, the export has 25"):
        qat.fake_quantize(copy.deepcopy(model), jobs, Scheme())  # as before: not moved
    wrapped = qat.fake_quantize(model, jobs, Scheme(), mf.read(src))
    assert len(wrapped["g_s"]) == MOVED_CONVS
    jobs, files = qat.export_trained(model, wrapped, params, IMAGES, tmp_path, 1, True)
    assert mf.read(tmp_path / "qat-fp32").extra["gdn_in_phases"] is True
    g_s = onnx.load(files["g_s"])
    assert len(qg.conv_names(g_s)) == MOVED_CONVS and qg.float_convs(g_s) == []


def test_refused_without_the_rewrite_or_for_a_folder_family(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="needs rewrite: true"):
        export_model(tiny_model(), tmp_path / "a", rewrite=False, gdn_in_phases=True)
    with pytest.raises(RecipeError, match=r"rnn .* writes its own graphs"):
        export_model(tiny_model("rnn"), tmp_path / "b", gdn_in_phases=True)
    assert list(tmp_path.iterdir()) == []


def test_a_family_without_gdn_exports_unchanged(tmp_path: Path) -> None:
    """A spec family with nothing to move (autoencoder: ReLU after its deconvs) takes the
    option harmlessly: the same graphs, the flag recorded as asked."""
    model = tiny_model("autoencoder")
    a = export_model(model, tmp_path / "a")
    b = export_model(model, tmp_path / "b", gdn_in_phases=True)
    for name in mf.read(a).files:
        if name.endswith(".onnx"):
            ga, gb = onnx.load(a / name), onnx.load(b / name)
            assert [n.op_type for n in ga.graph.node] == [n.op_type for n in gb.graph.node]
    assert mf.read(b).extra["gdn_in_phases"] is True


def test_ort_static_refuses_int8_gdn_on_a_moved_export(
    exports: dict[str, Any], tmp_path: Path
) -> None:
    params = QuantParams(int8_gdn=True, calibration={"images": 2, "crop": 64})  # type: ignore[arg-type]
    with pytest.raises(RecipeError, match=r"int8_gdn adds nothing .* gdn_in_phases"):
        QUANTIZERS.get("ort-static")(exports["moved"], tmp_path / "q", params, IMAGES, 1)
    assert not (tmp_path / "q").exists()


def _recipe(tmp_path: Path, model: Path, export: dict, quantize: dict) -> Path:
    body = {
        "name": "gdn",
        "model": str(model),
        "data": {
            "eval": str(write_images(tmp_path / "eval", [(64, 64)], seed=1)),
            "calibration": str(write_images(tmp_path / "cal", [(64, 64), (80, 64)], seed=11)),
        },
        "threads": 1,
        "steps": [{"export": export}, {"quantize": quantize}],
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("export", "quantize", "needle"),
    [
        ({"rewrite": False, "gdn_in_phases": True}, {}, "gdn_in_phases .* needs rewrite: true"),
        ({"gdn_in_phases": True}, {"int8_gdn": True}, "step 2 \\(quantize\\): int8_gdn adds"),
    ],
)
def test_recipe_refusals_are_one_line_exit_2_before_weights_load(
    tiny_ckpt: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    export: dict,
    quantize: dict,
    needle: str,
) -> None:
    def no_weights(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("weights loaded before the recipe was checked")

    monkeypatch.setattr("compressor.checkpoint.load", no_weights)
    out = tmp_path / "run"
    result = CliRunner().invoke(
        main, ["run", str(_recipe(tmp_path, tiny_ckpt, export, quantize)), "--output", str(out)]
    )
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert re.search(needle, result.stderr), result.stderr
    assert not out.exists()


def test_export_command_option(exports: dict[str, Any], tmp_path: Path) -> None:
    """`cli.py export --gdn-in-phases`: the moved export; without the rewrite, one line and
    exit 2 before the checkpoint loads, nothing written."""
    ckpt, out = str(exports["ckpt"]), tmp_path / "cli"
    result = CliRunner().invoke(main, ["export", ckpt, "--out", str(out), "--gdn-in-phases"])
    assert result.exit_code == 0, result.output
    assert mf.read(out).extra["gdn_in_phases"] is True
    assert len(qg.conv_names(onnx.load(out / "g_s.onnx"))) == MOVED_CONVS
    bad = tmp_path / "bad"
    args = ["export", ckpt, "--out", str(bad), "--gdn-in-phases", "--no-rewrite"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "it needs --rewrite" in result.output
    assert not bad.exists()
