"""Checkpoint formats, arch inference, and the refusal of unsafe or broken files."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from compressor import checkpoint
from compressor.errors import CheckpointError
from tests.conftest import tiny_model


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "arch",
    ["bmshj2018-factorized", "bmshj2018-hyperprior", "mbt2018-mean", "mbt2018", "cheng2020-anchor"],
)
def test_foreign_layouts_load_with_arch_guessed(arch: str, tmp_path: Path) -> None:
    model = tiny_model(arch)
    sd = model.state_dict()
    torch.save({"epoch": 3, "state_dict": sd}, tmp_path / "trainer.pth.tar")  # CompressAI trainer
    torch.save(sd, tmp_path / "bare.pt")
    for name in ("trainer.pth.tar", "bare.pt"):
        loaded = checkpoint.load(tmp_path / name)
        assert loaded.arch == arch
        assert loaded.config == model.config
        assert _same_weights(loaded.state_dict(), sd)


def test_own_format_roundtrip_keeps_meta(tmp_path: Path) -> None:
    model = tiny_model()
    checkpoint.save(model, tmp_path / "m.pt", {"quality": 2})
    loaded = checkpoint.load(tmp_path / "m.pt")
    assert loaded.meta == {"quality": 2}
    assert _same_weights(loaded.state_dict(), model.state_dict())


def test_checkpoint_of_another_arch_is_refused(tmp_path: Path) -> None:
    checkpoint.save(tiny_model("bmshj2018-factorized"), tmp_path / "f.pt")
    with pytest.raises(CheckpointError, match="is a bmshj2018-factorized model, not mbt2018"):
        checkpoint.load(tmp_path / "f.pt", "mbt2018")
    torch.save(tiny_model("bmshj2018-factorized").state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="does not fit bmshj2018-hyperprior"):
        checkpoint.load(tmp_path / "bare.pt", "bmshj2018-hyperprior")


def test_truncated_checkpoint(tmp_path: Path) -> None:
    checkpoint.save(tiny_model(), tmp_path / "m.pt")
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        checkpoint.load(tmp_path / "cut.pt")


class _RunsCode:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path("/tmp/compressor-pwned").touch, ())


def test_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    marker = Path("/tmp/compressor-pwned")
    marker.unlink(missing_ok=True)
    torch.save({"state_dict": {}, "evil": _RunsCode()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="could run code"):
        checkpoint.load(tmp_path / "evil.pt")
    with (tmp_path / "evil.pkl").open("wb") as f:
        pickle.dump(_RunsCode(), f)
    with pytest.raises(CheckpointError):
        checkpoint.load(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_unknown_arch_names_the_allowed_ones(tmp_path: Path) -> None:
    checkpoint.save(tiny_model(), tmp_path / "m.pt")
    with pytest.raises(
        Exception, match=r"unknown model arch 'resnet'; allowed: .*bmshj2018-hyperprior"
    ):
        checkpoint.load(tmp_path / "m.pt", "resnet")


def test_half_precision_storage_loads_close_and_keeps_tiny_constants(tmp_path: Path) -> None:
    model = tiny_model()
    checkpoint.save(model, tmp_path / "full.pt")
    checkpoint.save(model, tmp_path / "half.pt", half=True)
    stored = torch.load(tmp_path / "half.pt", weights_only=True)["state_dict"]
    assert stored["g_a.0.weight"].dtype == torch.float16
    # GDN's pedestal (~1.5e-11) flushes to 0 in float16: it must stay float32 and exact
    pedestal = "g_a.1.beta_reparam.pedestal"
    assert stored[pedestal].dtype == torch.float32
    assert torch.equal(stored[pedestal], model.state_dict()[pedestal])
    loaded = checkpoint.load(tmp_path / "half.pt")
    for name, full in model.state_dict().items():
        got = loaded.state_dict()[name]
        assert got.dtype == full.dtype, name
        if full.is_floating_point() and full.numel():
            assert float((got - full).abs().max()) <= 1e-3 * float(full.abs().max()), name
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = model.decompress(model.compress(x)), loaded.decompress(loaded.compress(x))
    assert float((a - b).abs().max()) < 1e-2
    # the float weights take half the bytes (a tiny model's file is mostly int32 CDF tables)
    float_bytes = [
        sum(t.numel() * t.element_size() for t in sd.values() if t.is_floating_point())
        for sd in (model.state_dict(), stored)
    ]
    assert float_bytes[1] < 0.51 * float_bytes[0]


def test_cli_pack_writes_a_half_checkpoint_and_never_overwrites(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from compressor.cli import main

    checkpoint.save(tiny_model(), tmp_path / "full.pt")
    out = tmp_path / "half.pt"
    ok = CliRunner().invoke(main, ["pack", str(tmp_path / "full.pt"), "--out", str(out)])
    assert ok.exit_code == 0, ok.output
    assert torch.load(out, weights_only=True)["state_dict"]["g_a.0.weight"].dtype == torch.float16
    again = CliRunner().invoke(main, ["pack", str(tmp_path / "full.pt"), "--out", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.output
    folder = tmp_path / "folder"
    folder.mkdir()
    into_dir = CliRunner().invoke(
        main, ["pack", str(tmp_path / "full.pt"), "--out", str(folder), "--overwrite"]
    )
    assert into_dir.exit_code == 2 and "is a directory" in into_dir.output
    assert folder.is_dir() and not list(folder.iterdir())
    bad = CliRunner().invoke(
        main, ["pack", str(tmp_path / "none.pt"), "--out", str(tmp_path / "x.pt")]
    )
    assert bad.exit_code == 2 and not (tmp_path / "x.pt").exists()
