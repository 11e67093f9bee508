"""ONNX export: graphs per component, checker-clean, dynamic sizes, parity with torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from compressor.cli import main
from compressor.data import Padding, load_images, to_tensor
from compressor.errors import CheckpointError, RecipeError
from compressor.export import export_model, parity, spec_of
from compressor.export import onnx as export_onnx
from compressor.models.compressai_zoo import SCALE_TABLE_LEVELS
from compressor.runtime import manifest as mf
from tests.conftest import BUNDLED, KODAK, need, tiny_model

ARCHS = ["bmshj2018-factorized", "bmshj2018-hyperprior", "mbt2018-mean"]
ATOL = 1e-4


def real_images(count: int, size: int = 128) -> list[torch.Tensor]:
    """Centre crops of scikit-image's bundled photos (real images, always present), padded."""
    out = []
    for _, rgb8 in load_images("skimage")[:count]:
        h, w = rgb8.shape[:2]
        top, left = (h - size) // 2, (w - size + 40) // 2
        crop = rgb8[top : top + size, left : left + size - 40]  # non-square, needs padding
        pad = Padding.to_multiple(*crop.shape[:2], 64)
        out.append(pad.pad(to_tensor(crop)))
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_export_writes_checked_graphs_and_manifest(arch: str, tmp_path: Path) -> None:
    folder = export_model(tiny_model(arch), tmp_path / "exp")
    manifest = json.loads((folder / "manifest.json").read_text())
    graphs = mf.GRAPHS[manifest["kind"]]
    assert len(graphs) == (2 if arch == "bmshj2018-factorized" else 4)
    # hyperprior kinds carry the integer hyper-decoder by default (compressor.runtime.integer)
    integer = {"hyper_int.npz"} if manifest["kind"] in mf.INTEGER_KINDS else set()
    assert set(manifest["files"]) == {f"{g}.onnx" for g in graphs} | {"entropy.npz"} | integer
    assert manifest["hyper"] == ("integer" if integer else "float")
    assert manifest["opset"] == 17 and manifest["arch"] == arch
    assert len(manifest["model_id"]) == 64
    assert {"torch", "onnx", "onnxruntime", "compressai"} <= set(manifest["versions"])
    for g in graphs:
        model = onnx.load(str(folder / f"{g}.onnx"))
        onnx.checker.check_model(model, full_check=True)
        assert model.opset_import[0].version >= 17
        dims = model.graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_param for d in dims[2:]] == ["height", "width"]
        assert manifest["parity_max_abs_diff"][g] <= ATOL
    tables = np.load(folder / "entropy.npz")
    assert tables["eb_cdf"].dtype == np.int32 and tables["eb_medians"].dtype == np.float32
    if arch != "bmshj2018-factorized":
        assert tables["gc_scale_table"].shape == (SCALE_TABLE_LEVELS,)
        assert manifest["latents"]["z"]["stride"] == 64
    assert manifest["latents"]["y"] == {"channels": 12, "stride": 16}


@pytest.mark.parametrize("rewrite", [True, False])
def test_rewrite_removes_conv_transpose(rewrite: bool, tmp_path: Path) -> None:
    folder = export_model(tiny_model(), tmp_path / "exp", rewrite=rewrite)
    for g in ("g_s", "h_s"):
        ops = {n.op_type for n in onnx.load(str(folder / f"{g}.onnx")).graph.node}
        assert ("ConvTranspose" in ops) is not rewrite
        assert ("DepthToSpace" in ops) is rewrite
    # GDN is folded either way: no reparametrisation (Max/Pow of the raw parameters) left
    ga_ops = [n.op_type for n in onnx.load(str(folder / "g_a.onnx")).graph.node]
    assert "Max" not in ga_ops


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("rewrite", [True, False])
def test_parity_on_real_images(arch: str, rewrite: bool, tmp_path: Path) -> None:
    model = tiny_model(arch, seed=5)
    folder = export_model(model, tmp_path / "exp", rewrite=rewrite)
    diffs = parity(spec_of(model), folder, real_images(2))
    assert set(diffs) == set(mf.GRAPHS[spec_of(model).kind])
    assert max(diffs.values()) <= ATOL, diffs


def test_bundled_model_parity_on_kodak(tmp_path: Path) -> None:
    from compressor import checkpoint
    from compressor.data import read_rgb8

    need(BUNDLED, "the bundled trained model")
    kodak = need(KODAK, "the Kodak set")
    model = checkpoint.load(BUNDLED)
    folder = export_model(model, tmp_path / "exp")
    images = [to_tensor(read_rgb8(kodak / f"kodim{i:02d}.png")) for i in (1, 7)]
    diffs = parity(spec_of(model), folder, images)
    assert max(diffs.values()) <= ATOL, diffs


@pytest.mark.parametrize("arch", ["mbt2018", "cheng2020-anchor"])
def test_serial_context_models_are_refused_clearly(arch: str, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not supported yet: its context model"):
        export_model(tiny_model(arch), tmp_path / "exp")
    assert not (tmp_path / "exp").exists()


def test_bad_options_are_refused_before_work(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="opset 13"):
        export_model(tiny_model(), tmp_path / "a", opset=13)
    (tmp_path / "b").mkdir()
    with pytest.raises(RecipeError, match="exists"):
        export_model(tiny_model(), tmp_path / "b")


def test_failed_export_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise CheckpointError("simulated failure in the middle of the export")

    monkeypatch.setattr(export_onnx, "parity", broken)
    with pytest.raises(CheckpointError, match="simulated"):
        export_model(tiny_model(), tmp_path / "exp")
    assert list(tmp_path.iterdir()) == []


def test_cli_export(tiny_ckpt: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "exp"
    result = runner.invoke(main, ["export", str(tiny_ckpt), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert mf.read(out).kind == "scale-hyperprior"
    assert "model id" in result.output
    again = runner.invoke(main, ["export", str(tiny_ckpt), "--out", str(out)])
    assert again.exit_code == 2 and "holds an export; pass --overwrite" in again.output
    replaced = runner.invoke(main, ["export", str(tiny_ckpt), "--out", str(out), "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    # never a user's file or folder, --overwrite or not
    notes = tmp_path / "notes.txt"
    notes.write_text("keep")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"jpeg")
    for target in (notes, photos):
        refused = runner.invoke(
            main, ["export", str(tiny_ckpt), "--out", str(target), "--overwrite"]
        )
        assert refused.exit_code == 2 and refused.output.startswith("error: "), refused.output
    assert notes.read_text() == "keep" and (photos / "a.jpg").read_bytes() == b"jpeg"
    missing = runner.invoke(
        main, ["export", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "x")]
    )
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_exporters_are_one_registry_keyed_by_family() -> None:
    from compressor.export import EXPORTERS
    from compressor.export.rnn import export_rnn
    from compressor.models import MODELS

    families = {MODELS.get(a).family for a in MODELS.names()}
    # every family but mimic (a training wrapper, exported as the model it mimics) exports
    assert EXPORTERS.names() == ["autoencoder", "compressai", "hific", "jpeg", "rnn"]
    assert set(EXPORTERS.names()) <= families
    rnn = EXPORTERS.get("rnn")
    assert rnn.folder is export_rnn and rnn.spec is None
    zoo = EXPORTERS.get("compressai")
    assert zoo.spec is not None and zoo.folder is None
    rnn_model = MODELS.get("rnn").build("rnn", {"N": 8, "M": 12, "iterations": 2})
    with pytest.raises(CheckpointError, match="exports its own folder layout"):
        spec_of(rnn_model)
    with pytest.raises(ValueError, match="registered twice"):
        export_onnx.register_exporter("rnn")(lambda m: spec_of(m))


def test_a_nan_weight_fails_the_parity_check(tmp_path: Path) -> None:
    """One NaN in a weight used to pass (max(0.0, nan) is 0.0) and surface at decode."""
    from compressor.errors import CheckpointError
    from tests.conftest import tiny_model

    model = tiny_model()
    with torch.no_grad():
        next(iter(model.net.g_s.parameters())).view(-1)[0] = float("nan")
    with pytest.raises(CheckpointError, match="differs from torch by nan"):
        export_model(model, tmp_path / "exp")
    assert not (tmp_path / "exp").exists()
