"""The integer hyper-decoder: exact arithmetic, format 3, golden bitstreams, the session matrix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from compressor.errors import BitstreamError, CheckpointError, RecipeError
from compressor.export import export_model
from compressor.imageio import read_rgb8
from compressor.metrics.psnr import psnr
from compressor.runtime import OrtCodec, container
from compressor.runtime import integer as ri
from compressor.runtime.cli import main as runtime_main
from tests.conftest import BUNDLED, KODAK, need, smooth_image, tiny_model
from tests.golden.golden import digest, symbols_sha

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
KINDS = ["bmshj2018-hyperprior", "mbt2018-mean"]


def loud(arch: str, seed: int = 2) -> torch.nn.Module:
    model = tiny_model(arch, seed=seed)
    with torch.no_grad():
        model.net.g_a[-1].weight.mul_(6.0)  # latents that cost real bits
    model.finalize()
    return model.eval()


@pytest.fixture(scope="module", params=KINDS)
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_model(loud(request.param), tmp_path_factory.mktemp("int") / request.param)


# -- the arithmetic -------------------------------------------------------------------------
@pytest.mark.parametrize("transposed", [False, True])
def test_integer_convolutions_equal_exact_int64(transposed: bool) -> None:
    """float64 GEMM on integers == an int64 computation summed in another order, bit for bit,
    at the largest magnitudes the format allows (12-bit weights, 16-bit activations)."""
    rng = np.random.default_rng(0)
    cin, cout, k = 16, 8, 5
    x = rng.integers(0, 2**ri.A_BITS, (cin, 7, 9))
    shape = (cin, cout, k, k) if transposed else (cout, cin, k, k)
    w = rng.integers(-(2 ** (ri.W_BITS - 1)) + 1, 2 ** (ri.W_BITS - 1), shape)
    meta = np.array([int(transposed), 2 if transposed else 1, 2, int(transposed), 0, 0, 0, 1])
    layer = ri.Layer(
        w.astype(np.int32), np.zeros(cout, np.int64), *(np.ones(cout, np.int64),) * 2, meta
    )
    got = layer.accumulate(x.astype(np.float64))
    ref = torch.from_numpy(x[None].astype(np.float64))
    wt = torch.from_numpy(w.astype(np.float64))
    if transposed:
        out = torch.nn.functional.conv_transpose2d(ref, wt, stride=2, padding=2, output_padding=1)
    else:
        out = torch.nn.functional.conv2d(ref, wt, padding=2)
    assert got.shape == tuple(out.shape[1:])
    # an independent exact reference: int64 tap-by-tap sums (no float at all)
    assert np.array_equal(got, out[0].numpy().astype(np.int64))
    assert layer.bound(2**ri.A_BITS - 1) < ri.ACC_LIMIT


@pytest.mark.parametrize("table", ["geometric", "ragged"])
def test_threshold_counts_equal_the_per_channel_search(table: str) -> None:
    """The whole-array count of thresholds <= acc is the binary search's, exactly: values on,
    beside and beyond every threshold, on CompressAI-like (geometric) and arbitrary
    nondecreasing rows with repeats (where the guess is poor and the search takes over)."""
    rng = np.random.default_rng(1)
    c, n = 6, 63
    if table == "geometric":
        steps = np.exp(np.linspace(np.log(0.11), np.log(256), n + 1))[:-1]
        t = np.floor(steps[None] / rng.uniform(1e-6, 1e-3, (c, 1))).astype(np.int64) + 1
    else:
        t = np.sort(rng.integers(-(2**40), 2**40, (c, n)), axis=1)
        t[:, 10:14] = t[:, 10:11]  # repeated thresholds
    near = (t[:, :, None] + np.array([-1, 0, 1])).reshape(c, -1)
    far = rng.integers(-(2**46), 2**46, (c, 40))
    acc = np.concatenate([near, far, np.zeros((c, 2), np.int64)], axis=1)
    acc = acc[:, rng.permutation(acc.shape[1])][:, : 8 * 24].reshape(c, 8, 24)
    ref = ri._count_by_search(t, acc)
    for block in (1, 500, 1 << 16):  # a channel, a few, all of them at a time
        got = ri.count_at_or_below(t, acc, block=block)
        assert np.array_equal(got, ref)
    assert ref.min() == 0 and ref.max() == n


def test_requantisation_rounds_half_up() -> None:
    meta = np.array([0, 1, 0, 0, ri.RELU, 0, 2**16 - 1, 2])
    layer = ri.Layer(np.zeros((1, 1, 1, 1), np.int32), np.zeros(1, np.int64),
                     np.array([1]), np.array([1]), meta)  # fmt: skip
    acc = np.array([[[-3, -2, 1, 2, 3, 5, 6]]], dtype=np.int64)  # / 4 ->
    assert layer.requantize(acc).ravel().tolist() == [0, 0, 0, 1, 1, 1, 2]


def test_tables_that_could_overflow_are_refused(exported: Path) -> None:
    hyper = ri.IntegerHyper.load(str(exported / ri.FILE))
    arrays = hyper.to_arrays()
    arrays["w0"] = np.full_like(arrays["w0"], 2047)
    arrays["in_offset"] = np.full_like(arrays["in_offset"], 2**30)
    with pytest.raises(CheckpointError, match="not exact"):
        ri.IntegerHyper.from_arrays(arrays)


def test_integer_hyper_agrees_with_float_h_s(exported: Path) -> None:
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["hyper"] == "integer"
    assert manifest["integer_hyper"]["index_agreement"] >= 0.95
    if "means_max_abs_diff" in manifest["integer_hyper"]:
        assert manifest["integer_hyper"]["means_max_abs_diff"] < 0.02


# -- format 3 -------------------------------------------------------------------------------
def test_format_3_roundtrip_and_float_path_of_the_same_export(exported: Path) -> None:
    rgb8 = smooth_image(96, 128, seed=3)
    codec, flt = OrtCodec(exported, threads=1), OrtCodec(exported, threads=1, hyper="float")
    data, fdata = codec.encode(rgb8), flt.encode(rgb8)
    assert data[4] == container.FORMAT_VERSION == 3 and fdata[4] == container.FLOAT_VERSION
    a, b = codec.decode(data), codec.decode(fdata)  # the integer export reads both
    assert psnr(a, b) > 40
    assert abs(len(data) - len(fdata)) <= max(4, len(fdata) // 50)


def test_encode_runs_the_hyper_decoder_once_per_image(
    exported: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mean-scale encode needs h_s's means before y's symbols and its indexes after: one
    integer h_s gives both (it is a third of an INT8 codec's encode time on Kodak)."""
    codec = OrtCodec(exported, threads=1)
    calls = []
    real = codec._hyper
    monkeypatch.setattr(codec, "_hyper", lambda *a, **k: calls.append(1) or real(*a, **k))
    data = codec.encode(smooth_image(96, 128, seed=4))
    assert len(calls) == 1
    monkeypatch.undo()
    header, symbols, _ = codec.decode_latents(data)  # the indexes it reused are h_s's own
    assert codec.encode_symbols(header, symbols) == data


def test_format_3_file_on_float_only_export_exits_2(tmp_path: Path) -> None:
    model = loud("bmshj2018-hyperprior", seed=4)
    folder = export_model(model, tmp_path / "float", hyper="float")
    assert not (folder / ri.FILE).exists()
    codec = OrtCodec(folder, threads=1)
    data = codec.encode(smooth_image(64, 64, seed=1))
    assert data[4] == 2
    header, payload = container.unpack(data)
    forged = container.pack(container.Header(codec.model_id, 64, 64, header.pad, 3), payload)
    with pytest.raises(BitstreamError, match=r"format 3 \(integer.*formats 1-2"):
        codec.decode(forged)
    (tmp_path / "f.cbin").write_bytes(forged)
    res = CliRunner().invoke(
        runtime_main, ["decode", str(tmp_path / "f.cbin"), "--codec", str(folder),
                       "-o", str(tmp_path / "o.png")],
    )  # fmt: skip
    assert res.exit_code == 2
    assert "format 3" in res.output and "formats 1-2" in res.output
    with pytest.raises(RecipeError, match="not available"):
        OrtCodec(folder, hyper="integer")


# -- golden bitstreams ----------------------------------------------------------------------
GOLDEN_TABLE = json.loads((GOLDEN / "golden.json").read_text())


@pytest.fixture(scope="module")
def golden_codec() -> OrtCodec:
    return OrtCodec(GOLDEN / "export", threads=1)


@pytest.mark.parametrize("name", sorted(GOLDEN_TABLE))
def test_golden_bitstreams(golden_codec: OrtCodec, name: str) -> None:
    """Must match on every machine: the symbols of the committed file, and the file coded
    again from them (integers only). The pixels pass through the float g_s: their hash is
    this machine's, so elsewhere a mismatch skips instead of failing."""
    entry = GOLDEN_TABLE[name]
    data = (GOLDEN / f"{name}.cbin").read_bytes()
    assert digest(data) == entry["bitstream_sha256"]
    header, symbols, _ = golden_codec.decode_latents(data)
    assert symbols_sha(symbols) == entry["symbols_sha256"]
    assert golden_codec.encode_symbols(header, symbols) == data
    # the whole encode also runs float g_a / h_a: the same bytes unless a latent of this
    # machine lands on the other side of a rounding boundary (none does here)
    assert golden_codec.encode(read_rgb8(GOLDEN / f"{name}.png")) == data
    pixels = digest(golden_codec.decode(data).tobytes())
    if pixels != entry["pixels_sha256_this_machine"]:
        pytest.skip("decoded pixels differ from the generating machine's (float g_s)")


# -- the session matrix and the perturbation ------------------------------------------------
def test_session_matrix_gives_identical_symbols(exported: Path) -> None:
    rgb8 = smooth_image(128, 192, seed=9)
    data = OrtCodec(exported).encode(rgb8)
    seen = set()
    for threads in (1, 2):
        for level in ("disabled", "basic", "all"):
            codec = OrtCodec(exported, threads=threads, optimization=level)
            _, symbols, y_hat = codec.decode_latents(data)
            seen.add(symbols_sha(symbols) + digest(y_hat.tobytes()))
    assert len(seen) == 1


@pytest.mark.slow
def test_one_ulp_on_float_h_s_breaks_float_path_not_integer(tmp_path: Path) -> None:
    """Kodak-size latent, bundled model: +-1 ULP on h_s's output flips scale indexes and the
    float decode fails or collapses; the integer path never runs a float stage before the
    symbols, so the same perturbation leaves the decode bit-identical."""
    from compressor import checkpoint

    need(BUNDLED, "bundled model")
    rgb8 = read_rgb8(need(KODAK, "Kodak") / "kodim01.png")
    folder = export_model(checkpoint.load(BUNDLED), tmp_path / "exp")
    results = {}
    for hyper in ("float", "integer"):
        codec = OrtCodec(folder, threads=1, hyper=hyper)
        data = codec.encode(rgb8)
        _, ref_sym, _ = codec.decode_latents(data)
        ref = codec.decode(data)
        run = codec._run
        broken = 0
        for direction in (np.inf, -np.inf):

            def noisy(graph, x, what, error=BitstreamError, d=direction, run=run):  # type: ignore[no-untyped-def]
                out = run(graph, x, what, error)
                return (
                    np.nextafter(out, np.float32(d)).astype(np.float32) if graph == "h_s" else out
                )

            codec._run = noisy  # type: ignore[method-assign]
            try:
                _, sym, _ = codec.decode_latents(data)
                out = codec.decode(data)
                same = symbols_sha(sym) == symbols_sha(ref_sym) and np.array_equal(out, ref)
                broken += not same and psnr(rgb8, out) < psnr(rgb8, ref) - 3
            except BitstreamError:
                broken += 1
            finally:
                codec._run = run  # type: ignore[method-assign]
        results[hyper] = broken
    assert results["float"] >= 1 and results["integer"] == 0


# -- the fine-tune --------------------------------------------------------------------------
@pytest.mark.parametrize("arch", KINDS)
def test_straight_through_forward_matches_the_runtime(arch: str, tmp_path: Path) -> None:
    from compressor.export.onnx import spec_of
    from compressor.integer_train import calibration, integer_forward

    model = loud(arch, seed=6)
    folder = export_model(model, tmp_path / "e")
    hyper = ri.IntegerHyper.load(str(folder / ri.FILE))
    z_hat = calibration(model)[0]
    medians = spec_of(model).tables["eb_medians"].reshape(1, -1, 1, 1)
    idx, _ = hyper(np.rint(z_hat.numpy() - medians).astype(np.int64))
    table = torch.from_numpy(spec_of(model).tables["gc_scale_table"][:-1])
    with torch.no_grad(), integer_forward(model.net.h_s, calibration(model)):
        params = model.net.h_s(z_hat)
    scales = params[:, : hyper.thresholds.shape[0]].reshape(-1, 1)
    ste_idx = (table[None, :] < scales).sum(1).numpy()
    assert (ste_idx == idx).mean() >= 0.99  # what training sees is what the runtime does


def test_finetune_trains_only_h_s_and_leaves_plain_names(tmp_path: Path) -> None:
    from compressor.integer_train import finetune_integer
    from compressor.train import TrainConfig

    model = loud("bmshj2018-hyperprior", seed=7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = [smooth_image(96, 96, seed=s) for s in range(6)]
    cfg = TrainConfig(crop=64, val_crop=64, batch_size=2, max_steps=2, eval_every=1, lr=1e-3)
    finetune_integer(model, images, cfg, tmp_path / "ft.pt")
    after = model.state_dict()
    assert set(after) == set(before) and (tmp_path / "ft.pt").exists()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("h_s.") for k in changed)
    assert not any(k.startswith(("g_a.", "g_s.", "h_a.")) for k in changed)
    assert all(p.requires_grad for p in model.net.parameters())
    assert not model.net.h_s[0]._forward_hooks  # the hooks are gone
