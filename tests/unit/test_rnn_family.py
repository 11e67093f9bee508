"""The recurrent codec (family `rnn`): training, real bitstream, rate, export, pruning."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from compressor import bitstream, checkpoint
from compressor.codec import TorchCodec
from compressor.errors import BitstreamError, CheckpointError, RecipeError
from compressor.export import export_model
from compressor.models import MODELS
from compressor.models.rnn import RnnAdapter
from compressor.prune import FAMILY_PRUNERS, PruneParams, prune_model
from compressor.quant import QUANTIZERS, QuantParams
from compressor.runtime import container, load_codec, read_rgb8
from compressor.runtime import manifest as mf
from compressor.runtime.rnn import RnnOrtCodec
from compressor.train import rd_loss
from tests.conftest import smooth_image, write_images


def build(seed: int = 0, **config: int) -> RnnAdapter:
    torch.manual_seed(seed)
    model = MODELS.get("rnn").build("rnn", {"N": 8, "M": 12, "iterations": 4, **config})
    assert isinstance(model, RnnAdapter)
    model.eval()
    return model


def photo_batch(n: int, size: int = 32) -> torch.Tensor:
    imgs = [smooth_image(size, size, seed) for seed in range(n)]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return -10 * math.log10(float(((a - b) ** 2).mean()))


@pytest.fixture(scope="module")
def trained() -> tuple[RnnAdapter, list[float]]:
    """A tiny 3-iteration model after 40 Adam steps on 8 photo-like crops; eval losses
    before / after."""
    model, batch = build(iterations=3), photo_batch(8)
    loss_fn = rd_loss(0.0035)
    before = loss_fn(model.eval(), batch)[0].item()
    opt = torch.optim.Adam(model.net.parameters(), lr=1e-2)
    for _ in range(40):
        model.train()
        opt.zero_grad()
        loss_fn(model, batch)[0].backward()
        opt.step()
    with torch.no_grad():
        after = loss_fn(model.eval(), batch)[0].item()
    return model, [before, after]


def test_training_lowers_the_residual_loss(trained: tuple[RnnAdapter, list[float]]) -> None:
    _, (before, after) = trained
    # bpp (3 iterations * 12 bits / 256 pixels = 0.14) is a constant part of the loss
    assert before > 0.8 and after < 0.8 * before, (before, after)


def test_more_iterations_give_better_psnr(trained: tuple[RnnAdapter, list[float]]) -> None:
    model, _ = trained
    x = photo_batch(4)
    with torch.no_grad():
        values = [psnr(model.forward_rd(x, iterations=k).x_hat, x) for k in (1, 2, 3)]
    # after 40 steps the third iteration has barely learnt to add anything (it may be a hair
    # below the second); the trained small model's Kodak numbers are in the report
    assert values[1] > values[0] + 0.3 and values[2] > values[0] + 0.3, values


def test_bitstream_roundtrip_is_the_eval_forward_exactly(
    trained: tuple[RnnAdapter, list[float]],
) -> None:
    model, _ = trained
    x = photo_batch(1, 48)
    for k in (1, 3):
        with torch.no_grad():
            ref = model.forward_rd(x, iterations=k).x_hat
        rec = model.decompress(model.compress(x, iterations=k))
        assert torch.equal(rec, ref)


def test_bpp_is_linear_in_the_iterations() -> None:
    model, x = build(), photo_batch(1, 64)
    sizes = [len(model.compress(x, iterations=k)) for k in range(1, 6)]
    steps = np.diff(sizes)
    assert (steps == 12 * 4 * 4 // 8).all(), sizes  # M bits at each 16x16 block, per iteration
    bpps = [8 * s / (64 * 64) for s in sizes]
    est = [float(model.forward_rd(x, iterations=k).bpp(64 * 64)) for k in range(1, 6)]
    # the forward's rate (one bit per code) is the bitstream's, less its 6-byte header
    assert np.allclose(np.array(bpps) - np.array(est), 8 * 6 / (64 * 64))


def test_bad_iterations_and_streams_are_refused() -> None:
    model, x = build(), photo_batch(1)
    for bad in (0, 33):
        with pytest.raises(RecipeError, match=r"1\.\.32"):
            model.compress(x, iterations=bad)
    with pytest.raises(CheckpointError, match="quality"):
        RnnAdapter.default_config("rnn", 0)
    with pytest.raises(CheckpointError, match="iterations"):
        RnnAdapter.build("rnn", {"N": 8, "M": 12, "iterations": 40})
    data = model.compress(x, iterations=2)
    strings, ints = bitstream.unpack(data)
    with pytest.raises(RecipeError, match="bitstream iterations 0"):
        model.decompress(bitstream.pack(strings, [0, *ints[1:]]))
    with pytest.raises(BitstreamError, match="code bytes"):
        model.decompress(data[:-1])
    with pytest.raises(BitstreamError, match="does not fit"):
        build(M=16).decompress(data)


def exported(tmp_path: Path) -> tuple[RnnAdapter, Path]:
    model = build()
    torch.nn.init.normal_(model.rnet.decoder.conv2.weight, std=0.2)  # non-zero increments
    return model, export_model(model, tmp_path / "rnn")


def torch_payload(data: bytes) -> bytes:
    """TorchCodec's stream less its image size (2 varints): the packed codes."""
    _, pos = bitstream.read_varint(data, 0)
    return data[bitstream.read_varint(data, pos)[1] :]


def test_export_parity_and_ort_bitstream(tmp_path: Path) -> None:
    model, folder = exported(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    diffs = manifest["parity_max_rel_diff"]
    assert diffs["encoder_step"] <= 1e-4 and diffs["decoder_step"] <= 1e-4
    assert diffs["bits_flipped"] == 0.0
    img = smooth_image(40, 56, 3)  # padded to 48x64 inside both codecs
    ort_codec, torch_codec = load_codec(folder, threads=1), TorchCodec(model)
    assert isinstance(ort_codec, RnnOrtCodec) and ort_codec.kind == "rnn"
    data = ort_codec.encode(img)
    # the runtime's container (model id, size, padding, CRC) around the torch model's codes
    header, payload = container.unpack(data)
    assert (header.height, header.width, header.pad) == (40, 56, (4, 4, 4, 4))
    torch_data = torch_codec.encode(img)
    assert payload == torch_payload(torch_data)
    rec = ort_codec.decode(data)
    diff = np.abs(rec.astype(int) - torch_codec.decode(torch_data).astype(int))
    assert diff.max() <= 1
    with pytest.raises(BitstreamError, match="another model"):
        load_codec(export_model(build(seed=1), tmp_path / "other"), threads=1).decode(data)
    with pytest.raises(BitstreamError, match="CRC"):
        ort_codec.decode(data[:-5] + bytes([data[-5] ^ 1]) + data[-4:])


def test_quantized_rnn_export_is_a_runtime_codec(tmp_path: Path) -> None:
    """ort-static quantizes both step graphs through the one backend (by the export's kind)."""
    _, folder = exported(tmp_path)
    images = [smooth_image(48, 64, i) for i in range(3)]
    params = QuantParams.model_validate({"calibration": {"images": 2, "crop": 64}})
    report = QUANTIZERS.get("ort-static")(folder, tmp_path / "q", params, images, 1)
    graphs = {g["graph"]: g for g in report["graphs"]}
    assert set(graphs) == {"encoder_step", "decoder_step"}
    # every Conv: encoder conv + 3 cells x 2 + binarizer, decoder conv1 + 4 cells x 2 + conv2
    assert graphs["encoder_step"]["int8_convs"] == 8 and graphs["decoder_step"]["int8_convs"] == 10
    assert all(g["float_convs"] == [] for g in graphs.values())
    manifest = mf.read(tmp_path / "q")
    assert manifest.kind == "rnn" and manifest.model_id == report["model_id"]
    assert manifest.extra["quantization"]["graphs"] == ["decoder_step", "encoder_step"]
    int8 = load_codec(tmp_path / "q", threads=1)
    rec = int8.decode(int8.encode(images[0]))
    assert rec.shape == images[0].shape
    assert abs(report["quick_check"]["psnr_drop_db"]) < 3.0  # a tiny random-ish model


def test_cli_export_encode_decode_evaluate(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from compressor.cli import main

    model, _ = exported(tmp_path)
    ckpt = checkpoint.save(model, tmp_path / "rnn.pt")
    write_images(tmp_path / "imgs", [(40, 56), (48, 48)])
    runner = CliRunner()

    def ok(*args: str) -> str:
        result = runner.invoke(main, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    assert "(rnn)" in ok("export", str(ckpt), "--out", str(tmp_path / "exp"))
    img, cbin = tmp_path / "imgs" / "img0.png", tmp_path / "img.cbin"
    ok("encode", str(img), "--codec", str(tmp_path / "exp"), "-o", str(cbin), "--threads", "1")
    ok("decode", str(cbin), "--codec", str(tmp_path / "exp"), "-o", str(tmp_path / "rec.png"))
    rec = read_rgb8(tmp_path / "rec.png")
    assert np.array_equal(rec, load_codec(tmp_path / "exp").decode(cbin.read_bytes()))
    out = ok("evaluate", str(tmp_path / "exp"), "--data", str(tmp_path / "imgs"),
             "--out", str(tmp_path / "ev"), "--threads", "1")  # fmt: skip
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert "onnx:exp" in out and len(json.dumps(report)) > 100


def test_structured_prune_keeps_shapes_consistent(tmp_path: Path) -> None:
    model = build(N=16)
    params = PruneParams(
        ratio={"encoder": 0.3, "decoder": 0.3}, round_to=4, latency_repeats=0,
        report_size=(64, 64),
    )  # fmt: skip
    pruned, report = prune_model(model, params)
    widths = pruned.config["widths"]
    assert widths == {"encoder": [8, 44, 88, 88], "decoder": [88, 88, 88, 44, 20]}
    assert isinstance(pruned, RnnAdapter)
    enc = pruned.rnet.encoder
    assert enc.rnn1.ih.out_channels == 4 * 44 and enc.rnn1.hh.in_channels == 44
    assert enc.rnn2.ih.in_channels == 44
    assert pruned.rnet.decoder.rnn2.ih.in_channels == 88 // 4
    assert report["total"]["macs_after"] < 0.6 * report["total"]["macs_before"]
    x = photo_batch(1, 48)
    rec = pruned.decompress(pruned.compress(x))
    assert torch.equal(rec, pruned.forward_rd(x).x_hat)
    path = checkpoint.save(pruned, tmp_path / "p.pt")
    again = checkpoint.load(path)
    assert again.config == pruned.config
    assert again.compress(x) == pruned.compress(x)
    # a bare state dict cannot tell the unpruned N, but its widths rebuild the same layers
    inferred = RnnAdapter.infer_config("rnn", pruned.state_dict())
    assert inferred["widths"] == widths
    RnnAdapter.build("rnn", inferred).load_state_dict(pruned.state_dict())


def test_rnn_pruning_is_the_family_pruner_not_a_model_hook() -> None:
    import compressor.models.rnn as models_rnn
    from compressor.prune import rnn as prune_rnn

    assert FAMILY_PRUNERS.get("rnn") is prune_rnn.prune_rnn
    assert "hific" in FAMILY_PRUNERS
    assert not hasattr(RnnAdapter, "prune_structured")
    # the model families import nothing from prune/, export/, quant/ or the CLI
    upper = ("compressor.prune", "compressor.export", "compressor.quant", "compressor.cli")
    for path in Path(models_rnn.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(upper), (path.name, node.module)


def test_rnn_runtime_never_imports_torch(tmp_path: Path) -> None:
    """The rnn codec is a runtime kind: encode + decode of its export run without torch."""
    import subprocess
    import sys

    _, folder = exported(tmp_path)
    src = write_images(tmp_path / "imgs", [(40, 56)]) / "img0.png"
    script = (
        "import sys\n"
        "from compressor.runtime import load_codec, read_rgb8\n"
        "codec = load_codec(sys.argv[1], threads=1)\n"
        "rgb8 = read_rgb8(sys.argv[2])\n"
        "ok = (codec.decode(codec.encode(rgb8)).shape == rgb8.shape)\n"
        "print(type(codec).__name__, ok, 'torch' in sys.modules)\n"
    )
    repo = Path(__file__).resolve().parents[2]
    run = subprocess.run(
        [sys.executable, "-c", script, str(folder), str(src)],
        cwd=repo, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["RnnOrtCodec", "True", "False"]
