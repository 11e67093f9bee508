"""Bad pruning input: a clear one-line error, exit code 2, and nothing written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from pydantic import ValidationError
from torch import nn

from compressor.cli import main
from compressor.errors import RecipeError
from compressor.models import CodecAdapter, RDOutput
from compressor.prune import PruneParams, prune_model
from tests.conftest import tiny_model


def run(args: list[str]) -> Any:
    return CliRunner().invoke(main, ["prune", *args])


@pytest.mark.parametrize(
    ("ratio", "message"),
    [
        ("encoder=1.0", "outside [0, 1)"),
        ("encoder=-0.1", "outside [0, 1)"),
        ("1.5", "outside [0, 1)"),
        ("encoderr=0.3", "unknown component 'encoderr'"),
        ("encoder:0.3", "expected COMPONENT=FLOAT"),
        ("encoder=0", "nothing to prune"),
    ],
)
def test_bad_ratio_exits_2_and_writes_nothing(
    tiny_ckpt: Path, tmp_path: Path, ratio: str, message: str
) -> None:
    out = tmp_path / "p.pt"
    result = run([str(tiny_ckpt), "--ratio", ratio, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_zero_channels_is_an_error(tiny_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.pt"
    result = run([str(tiny_ckpt), "--ratio", "encoder=0.3", "--out", str(out)])  # 8*0.7 -> 0
    assert result.exit_code == 2
    assert "leaves 0 of the 8 channels of encoder layer g_a" in result.output
    assert not out.exists()


def test_component_missing_from_the_arch() -> None:
    with pytest.raises(RecipeError, match="has no component 'hyper_encoder'"):
        prune_model(
            tiny_model("bmshj2018-factorized"),
            PruneParams(ratio={"hyper_encoder": 0.5}, round_to=1, latency_repeats=0),
        )


def test_pixelshuffle_decoder_refused_and_taylor_needs_images() -> None:
    with pytest.raises(RecipeError, match="PixelShuffle"):
        prune_model(tiny_model("cheng2020-anchor"), PruneParams(ratio={"decoder": 0.5}))
    with pytest.raises(RecipeError, match="calibration images"):
        prune_model(
            tiny_model(), PruneParams(ratio={"encoder": 0.5}, round_to=4, importance="taylor")
        )


def test_unknown_params_field_and_method() -> None:
    with pytest.raises(ValidationError, match="Extra inputs"):
        PruneParams.model_validate({"ratio": {"encoder": 0.3}, "ratios": 1})
    with pytest.raises(ValidationError, match="unknown component 'latent'"):
        PruneParams(method="unstructured", ratio={"latent": 0.3})


class _NoConvAdapter(CodecAdapter):
    """A model family whose only layers are activations."""

    family = "test"

    @classmethod
    def build(cls, arch: str, config: dict[str, Any]) -> CodecAdapter:
        return cls(arch, config, nn.Sequential(nn.ReLU()))

    @classmethod
    def default_config(cls, arch: str, quality: int) -> dict[str, Any]:
        return {}

    @classmethod
    def infer_config(cls, arch: str, state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
        return {}

    def components(self) -> dict[str, nn.Module]:
        return {"encoder": self.net, "decoder": self.net}

    def forward_rd(self, x: torch.Tensor) -> RDOutput:
        return RDOutput(x_hat=self.net(x))

    def compress(self, x: torch.Tensor) -> bytes:
        return b""

    def decompress(self, data: bytes) -> torch.Tensor:
        return torch.zeros(1, 3, 64, 64)


@pytest.mark.parametrize("method", ["structured", "unstructured"])
def test_model_without_prunable_layers(method: str) -> None:
    model = _NoConvAdapter.build("noconv", {})
    ratio = {"encoder": 0.5}
    with pytest.raises(RecipeError, match="no prunable"):
        prune_model(model, PruneParams(method=method, ratio=ratio, latency_repeats=0))
