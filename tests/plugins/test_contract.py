"""THE CONTRACT, run over every registered model family and the test-only one
(tests/plugins/tiny_family.py): train a step, export at parity, prune, quantize, evaluate
through the runtime. Where families differ, tests/plugins/contract.py says how and why.

One tiny model per arch (tests/conftest.py tiny_model) and one export per arch (module
scope) keep all of it to a few seconds per family.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from compressor import checkpoint
from compressor.codec import TorchCodec
from compressor.errors import CheckpointError, CompressorError, RecipeError
from compressor.evaluate import measure_image
from compressor.export import export_model, graph_inputs, spec_of
from compressor.export.onnx import PARITY_TOL, example_image
from compressor.metrics import psnr
from compressor.models import MODELS
from compressor.prune import PruneParams, prune_model
from compressor.quant import QUANTIZERS, QuantParams
from compressor.runtime import load_codec
from compressor.runtime import manifest as mf
from compressor.train import TrainConfig, rd_loss, train
from tests.conftest import smooth_image, tiny_model
from tests.plugins import contract

#: two Adam steps of the train loop (rnn's decoder output conv starts at zero, so the first
#: step's gradient reaches only that conv; the second reaches every layer)
LR = 1e-3
STEPS = 2
#: Adam moves a parameter by lr * m_hat / (sqrt(v_hat) + eps) per step; for step t <= 2 with
#: betas (0.9, 0.999) Cauchy-Schwarz bounds |m_hat| / sqrt(v_hat) by
#: sqrt(sum_i a_i^2 / b_i) = 1.00136 (a = (0.09, 0.1) / 0.19, b = (0.000999, 0.001) / 0.001999),
#: and step 1 by 1: no parameter moves more than this after STEPS steps, whatever the
#: gradients (+ float32 rounding of parameters near 1, e.g. BatchNorm weights: ulp 1.2e-7)
MAX_MOVE = LR * (1 + 1.00136) + 2.5e-7
TRAIN = {"crop": 64, "val_crop": 64, "batch_size": 2, "lr": LR, "max_steps": STEPS,
         "eval_every": STEPS}  # fmt: skip
IMAGE = smooth_image(70, 90, 1)  # not a multiple of any pad: padding and cropping exercised


@pytest.fixture(scope="module")
def model(arch: str) -> Any:
    return tiny_model(arch)


@pytest.fixture(scope="module")
def exported(arch: str, model: Any, tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """The export folder of the arch's tiny model; None where the exporter refuses the arch
    (test_export_refusal_or_parity asserts the refusal)."""
    out = tmp_path_factory.mktemp("export") / arch
    if arch in contract.NOT_EXPORTABLE:
        return None
    return export_model(model, out)


def main_parameters(model: Any) -> dict[str, torch.Tensor]:
    aux = {id(p) for p in model.aux_parameters()}
    return {
        n: p.detach().clone()
        for n, p in model.net.named_parameters()
        if id(p) not in aux and p.requires_grad
    }


# -- (a) train a step ---------------------------------------------------------------------
def test_train_steps_move_the_parameters_and_the_loss(arch: str, tmp_path: Path) -> None:
    model = tiny_model(arch)
    images = [smooth_image(64, 80, 20 + i) for i in range(3)]
    batch = torch.from_numpy(np.stack([a[:64, :64] for a in images])).permute(0, 3, 1, 2) / 255
    loss_fn = rd_loss(0.0035)

    def loss() -> float:
        with torch.no_grad():
            return float(loss_fn(model.eval(), batch.float())[0])

    before, params = loss(), main_parameters(model)
    cfg = TrainConfig.model_validate({**TRAIN, "threads": 1})
    result = train(model, images, cfg, tmp_path / "t.pt", resume=False)
    after = loss()
    assert result.steps == STEPS and len(result.history) == 1
    assert result.best_val_loss == result.history[0]["loss"]
    moved = {n: float((p - params[n]).abs().max()) for n, p in main_parameters(model).items()}
    # a parameter whose gradient keeps its sign moves ~lr per step (measured: 2.0012..2.0014
    # lr in every family), none past MAX_MOVE; and every trained parameter moved
    assert 1.9 * LR <= max(moved.values()) <= MAX_MOVE, moved
    assert all(v > 0 for v in moved.values()), [n for n, v in moved.items() if v == 0]
    # two steps on other crops of the same kind of image lower the RD loss on these (measured
    # in every family, from 0.4 % (jpeg, rnn) to 64 % (hific's first GAN-free steps))
    assert after < before, (before, after)
    # the loop saved the trained state; it reloads weights-only to the same parameters
    loaded = checkpoint.load(tmp_path / "t.pt")
    again = main_parameters(loaded)
    assert all(torch.equal(again[n], p) for n, p in main_parameters(model).items())


# -- (b) export with parity ---------------------------------------------------------------
def test_export_refusal_or_parity(arch: str, model: Any, exported: Path | None) -> None:
    if exported is None:
        with pytest.raises(CheckpointError, match=contract.NOT_EXPORTABLE[arch]):
            export_model(model, Path("never-written"))
        return
    manifest = mf.read(exported)
    mf.verify(exported, manifest)  # the files are the ones the manifest hashes
    assert manifest.arch == arch and manifest.extra["family"] == model.family
    if "parity_max_rel_diff" in manifest.extra:  # a folder exporter (rnn): relative already
        diffs = manifest.extra["parity_max_rel_diff"]
        assert diffs.pop("bits_flipped") == 0.0  # the binarizer's bits match torch's exactly
        assert set(diffs) == {n.removesuffix(".onnx") for n in manifest.files}
        assert all(0 <= d <= PARITY_TOL for d in diffs.values()), diffs
        return
    diffs = manifest.extra["parity_max_abs_diff"]
    spec = spec_of(model)
    assert set(diffs) == set(spec.graphs) == set(mf.GRAPHS[manifest.kind])
    m = model.pad_multiple
    for name, diff in diffs.items():
        # the documented tolerance: PARITY_TOL relative to the largest torch output (>= 1),
        # over the two sizes export_model checks
        with torch.no_grad():
            scale = max(
                1.0,
                *(
                    float(spec.graphs[name](graph_inputs(spec, x)[name]).abs().max())
                    for x in (example_image(2 * m, 3 * m), example_image(3 * m, m))
                ),
            )
        assert 0 <= diff <= PARITY_TOL * scale, (name, diff, scale)


# -- (c) prune ----------------------------------------------------------------------------
def test_structured_prune_or_documented_refusal(arch: str, model: Any, tmp_path: Path) -> None:
    ratios = contract.PRUNE_RATIOS.get(arch, {"all": contract.PRUNE_RATIO})
    params = PruneParams(ratio=ratios, round_to=1, report_size=(64, 64), latency_repeats=0)
    if arch in contract.UNPRUNABLE:
        with pytest.raises(RecipeError, match=contract.UNPRUNABLE[arch]) as refused:
            prune_model(model, params)
        assert isinstance(refused.value, CompressorError) and refused.value.exit_code == 2
        assert model.unprunable and contract.UNPRUNABLE[arch] in model.unprunable
        return
    for refused_arch, refused_ratios, reason in contract.PRUNE_REFUSALS:
        if refused_arch == arch:
            with pytest.raises(RecipeError, match=reason):
                prune_model(model, params.model_copy(update={"ratio": refused_ratios}))
    pruned, report = prune_model(model, params)
    rows = {r["component"]: r for r in report["components"]}
    cut = contract.pruned_components(arch, list(rows))
    assert cut, rows
    for name, row in rows.items():
        if name in cut:
            assert row["macs_after"] <= contract.MAX_PRUNED_MACS_RATIO * row["macs_before"], row
            assert row["params_after"] < row["params_before"], row
        elif row["macs_before"] is not None:
            assert row["macs_after"] == row["macs_before"], row  # untouched components
    assert report["total"]["macs_after"] < report["total"]["macs_before"]
    path = checkpoint.save(pruned, tmp_path / "p.pt")
    torch.load(path, map_location="cpu", weights_only=True)  # plain tensors and containers
    reloaded = checkpoint.load(path)
    assert reloaded.config == pruned.config and "widths" in reloaded.config
    x = model.example_inputs(2 * model.pad_multiple, 2 * model.pad_multiple)
    with torch.no_grad():
        assert reloaded.compress(x) == pruned.compress(x)
        assert reloaded.decompress(pruned.compress(x)).shape == x.shape


# -- (d) quantize -------------------------------------------------------------------------
def test_ort_static_int8_of_the_export(arch: str, exported: Path | None, tmp_path: Path) -> None:
    if exported is None:
        pytest.skip(f"{arch} has no export to quantize (its refusal: test_export_refusal...)")
    params = QuantParams.model_validate({"calibration": {"images": 2, "crop": 64}})
    calibration = [smooth_image(64, 64, 40 + i) for i in range(3)]
    report = QUANTIZERS.get("ort-static")(exported, tmp_path / "q", params, calibration, 1)
    kind = mf.read(exported).kind
    graphs = {g["graph"]: g for g in report["graphs"]}
    assert set(graphs) == set(params.graphs(kind))
    for name, row in graphs.items():
        assert (
            row["int8_convs"] > 0 and row["int8_convs"] + len(row["float_convs"]) == row["convs"]
        ), (name, row)
    manifest = mf.read(tmp_path / "q")
    assert manifest.model_id == report["model_id"] != mf.read(exported).model_id
    assert manifest.extra["quantization"]["graphs"] == sorted(graphs)
    codec = load_codec(tmp_path / "q", threads=1)
    rec = codec.decode(codec.encode(IMAGE))
    assert rec.shape == IMAGE.shape and rec.dtype == np.uint8


# -- (e) evaluate through the runtime -----------------------------------------------------
def test_runtime_codec_matches_torch(arch: str, model: Any, exported: Path | None) -> None:
    if exported is None:
        pytest.skip(f"{arch} has no export to run (its refusal: test_export_refusal...)")
    codec = load_codec(exported, threads=1)
    row = measure_image(codec, "img", IMAGE)  # the evaluator's path: real bytes, metrics
    data = codec.encode(IMAGE)
    h, w = IMAGE.shape[:2]
    assert row["bytes"] == len(data)  # encoding is deterministic
    assert row["bpp"] == len(data) * 8 / (h * w)
    rec = codec.decode(data)
    assert rec.shape == IMAGE.shape and rec.dtype == np.uint8
    assert row["psnr"] == psnr(IMAGE, rec)
    torch_codec = TorchCodec(model)
    reference = torch_codec.decode(torch_codec.encode(IMAGE))
    tol = contract.RUNTIME_TOLERANCE.get(arch, contract.RUNTIME_DEFAULT)
    level_diff = int(np.abs(rec.astype(int) - reference.astype(int)).max())
    gap = abs(psnr(IMAGE, rec) - psnr(IMAGE, reference))
    agreement = psnr(reference, rec)  # inf when identical
    assert level_diff <= tol.max_level_diff, (level_diff, tol)
    assert gap <= tol.max_psnr_gap_db, (gap, tol)
    assert agreement >= tol.min_agreement_db, (agreement, tol)


def test_every_family_is_in_the_contract() -> None:
    """The tables name only registered archs (a renamed arch would silently lose its rule)."""
    named = {*contract.NOT_EXPORTABLE, *contract.PRUNE_RATIOS, *contract.UNPRUNABLE}
    named |= {*contract.RUNTIME_TOLERANCE, *(a for a, _, _ in contract.PRUNE_REFUSALS)}
    assert named <= set(MODELS.names()), named - set(MODELS.names())


# -- (f) the same through the command line a user types -----------------------------------
def test_cli_encode_decode_evaluate(arch: str, exported: Path | None, tmp_path: Path) -> None:
    """`cli.py encode`, `decode` and `evaluate` on the export give what the library gives."""
    from click.testing import CliRunner
    from PIL import Image

    from compressor.cli import main

    if exported is None:
        pytest.skip(f"{arch} has no export to run (its refusal: test_export_refusal...)")
    image = tmp_path / "img.png"
    Image.fromarray(IMAGE).save(image)
    runner = CliRunner()
    enc = runner.invoke(
        main, ["encode", str(image), "--codec", str(exported), "-o", str(tmp_path / "f.cbin")]
    )
    assert enc.exit_code == 0, enc.output
    data = (tmp_path / "f.cbin").read_bytes()
    codec = load_codec(exported, threads=1)
    assert data == codec.encode(IMAGE)
    dec = runner.invoke(
        main,
        [
            "decode",
            str(tmp_path / "f.cbin"),
            "--codec",
            str(exported),
            "-o",
            str(tmp_path / "d.png"),
        ],
    )
    assert dec.exit_code == 0, dec.output
    decoded = np.asarray(Image.open(tmp_path / "d.png").convert("RGB"))
    assert np.array_equal(decoded, codec.decode(data))
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(IMAGE).save(folder / "img.png")
    ev = runner.invoke(
        main,
        ["evaluate", str(exported), "--data", str(folder), "--out", str(tmp_path / "ev"),
         "--threads", "1"],
    )  # fmt: skip
    assert ev.exit_code == 0, ev.output
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    rows = report.get("rows") or report.get("images")
    assert rows and rows[0]["bytes"] == len(data), report.keys()
