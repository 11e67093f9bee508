"""keep_float_top_k: the k most sensitive Convs left float, ranked once per graph and cached
so that trials differing only in k (a search space key) do not rank again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import pytest
import yaml
from click.testing import CliRunner

from compressor.cli import main
from compressor.export import export_model
from compressor.quant import QUANTIZERS, QuantParams, sensitivity
from compressor.quant import graph as qg
from compressor.quant.rank_cache import ranking_cache
from tests.conftest import smooth_image, tiny_model, write_images

IMAGES = [smooth_image(64, 80, i) for i in range(3)]


@pytest.fixture(scope="module")
def float_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_model(tiny_model(), tmp_path_factory.mktemp("exp") / "fp32")


def quantize(src: Path, out: Path, **params: object) -> dict:
    return QUANTIZERS.get("ort-static")(src, out, QuantParams.model_validate(params), IMAGES, 1)


def floats(folder: Path) -> dict[str, set[str]]:
    """The Conv nodes that run float in each quantized graph, read from the graphs."""
    return {g: set(qg.float_convs(onnx.load(folder / f"{g}.onnx"))) for g in ("g_a", "g_s")}


def count_rankings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every graph whose rows are computed (not read from the cache)."""
    calls: list[str] = []
    real = sensitivity.graph_rows

    def spy(job: Any, *args: Any) -> list[dict[str, Any]]:
        calls.append(job.name)
        return real(job, *args)

    monkeypatch.setattr(sensitivity, "graph_rows", spy)
    return calls


def test_top_1_leaves_exactly_the_top_ranked_conv_float(float_export: Path, tmp_path: Path) -> None:
    plain = quantize(float_export, tmp_path / "k0", calibration={"images": 2, "crop": 64})
    assert floats(tmp_path / "k0") == {"g_a": set(), "g_s": set()}
    assert plain["keep_float_top_k"] is None
    report = quantize(
        float_export,
        tmp_path / "k1",
        calibration={"images": 2, "crop": 64},
        keep_float_top_k=1,
        sensitivity=True,
    )
    top = report["sensitivity"][0]
    assert top["psnr_drop_db"] == max(r["psnr_drop_db"] for r in report["sensitivity"])
    other = "g_s" if top["graph"] == "g_a" else "g_a"
    assert floats(tmp_path / "k1") == {top["graph"]: {top["node"]}, other: set()}
    assert report["keep_float_top_k"]["k"] == 1
    assert [(r["graph"], r["node"]) for r in report["keep_float_top_k"]["kept"]] == [
        (top["graph"], top["node"])
    ]


def test_top_k_adds_to_keep_float_and_reuses_the_cached_ranking(
    float_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_rankings(monkeypatch)
    cal = {"images": 2, "crop": 64}
    with ranking_cache(tmp_path / "cache"):
        one = quantize(float_export, tmp_path / "k1", calibration=cal, keep_float_top_k=1)
        assert sorted(calls) == ["g_a", "g_s"]  # ranked once per graph
        two = quantize(
            float_export,
            tmp_path / "k2",
            calibration=cal,
            keep_float_top_k=2,
            keep_float=["encoder:first"],
        )
    assert sorted(calls) == ["g_a", "g_s"]  # k=2 ranked nothing again
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2
    first = one["keep_float_top_k"]["kept"][0]
    kept2 = [(r["graph"], r["node"]) for r in two["keep_float_top_k"]["kept"]]
    first_conv = qg.rule_nodes(onnx.load(float_export / "g_a.onnx"), "first")[0]
    assert len(kept2) == 2 and ("g_a", first_conv) not in kept2  # k more, beyond keep_float
    if (first["graph"], first["node"]) != ("g_a", first_conv):
        assert kept2[0] == (first["graph"], first["node"])  # the same ranking, read back
    got = floats(tmp_path / "k2")
    assert got["g_a"] | got["g_s"] == {first_conv} | {node for _, node in kept2}
    # another calibration is another ranking: computed, not read from the cache
    with ranking_cache(tmp_path / "cache"):
        quantize(
            float_export,
            tmp_path / "k3",
            calibration={**cal, "method": "entropy"},
            keep_float_top_k=1,
        )
    assert len(calls) == 4 and len(list((tmp_path / "cache").glob("*.json"))) == 4


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"keep_float_top_k": -1}, "0 (none) to 1000"),
        ({"keep_float_top_k": 1, "backend": "qat"}, "backends ort-static and inc-static"),
    ],
)
def test_bad_top_k_is_refused(params: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        QuantParams.model_validate(params)


def int8_recipe(tmp_path: Path, model: Path, **extra: Any) -> Path:
    body = {
        "name": "topk",
        "model": str(model),
        "data": {
            "eval": str(write_images(tmp_path / "eval", [(64, 64), (64, 80)], seed=1)),
            "calibration": str(write_images(tmp_path / "cal", [(64, 64), (80, 64)], seed=11)),
        },
        "threads": 1,
        "steps": [
            {"export": {"rewrite": True}},
            {"quantize": {"calibration": {"images": 2, "crop": 64}}},
            {"validate": {"repeats": 1}},
        ],
        **extra,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def _one_line_exit_2(result: Any, out: Path, needle: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert needle in result.stderr, result.stderr
    assert not out.exists()


def test_negative_top_k_is_one_line_exit_2_before_any_weights_load(
    tiny_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_weights(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("weights loaded before the recipe was checked")

    monkeypatch.setattr("compressor.checkpoint.load", no_weights)
    space = {"steps.quantize.keep_float_top_k": [1, -2]}
    r = int8_recipe(tmp_path, tiny_ckpt, search={"space": space, "max_trials": 2})
    out = tmp_path / "search"
    result = CliRunner().invoke(main, ["search", str(r), "--output", str(out)])
    _one_line_exit_2(result, out, "keep_float_top_k")
    assert "= -2" in result.stderr and "(got -2)" in result.stderr
    data = yaml.safe_load(r.read_text())
    del data["search"]
    data["steps"][1]["quantize"]["keep_float_top_k"] = -1
    r.write_text(yaml.safe_dump(data, sort_keys=False))
    result = CliRunner().invoke(main, ["run", str(r), "--output", str(out)])
    _one_line_exit_2(result, out, "steps[1].quantize.keep_float_top_k: ")


def test_a_search_over_k_ranks_each_graph_once(
    tiny_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_rankings(monkeypatch)
    block = {
        "space": {"steps.quantize.keep_float_top_k": [1, 2]},
        "sampler": "brute-force",
        "max_trials": 2,
        "constraints": {"max_psnr_drop_db": 100.0},
    }
    out = tmp_path / "search"
    r = int8_recipe(tmp_path, tiny_ckpt, search=block)
    result = CliRunner().invoke(main, ["search", str(r), "--output", str(out)])
    assert result.exit_code == 0, result.output
    # two trials and the final check on data.eval: g_a and g_s ranked once, in the first
    assert sorted(calls) == ["g_a", "g_s"]
    assert len(list((out / "cache" / "sensitivity").glob("*.json"))) == 2
    kept = {}
    for trial in sorted((out / "trials").iterdir()):
        report = json.loads((trial / "02_quantize" / "report.json").read_text())
        top = report["keep_float_top_k"]
        kept[top["k"]] = [(r["graph"], r["node"]) for r in top["kept"]]
        floats_now = {n for g in report["graphs"] for n in g["float_convs"]}
        assert floats_now == {n for _, n in kept[top["k"]]}
    assert kept[2][:1] == kept[1]  # one ranking: k=2 keeps k=1's layer and the next
    final = json.loads((out / "final" / "02_quantize" / "report.json").read_text())
    chosen = json.loads((out / "search.json").read_text())["chosen"]["values"]
    k = chosen["steps.quantize.keep_float_top_k"]
    assert [(r["graph"], r["node"]) for r in final["keep_float_top_k"]["kept"]] == kept[k]


@pytest.mark.slow
def test_inc_static_keeps_the_top_k_float_too(tmp_path: Path) -> None:
    """inc-static ranks with ORT's per-layer quantization and leaves the top k float (INC's
    import alone takes long on 2 cores: slow)."""
    from compressor.train import TrainConfig, train

    model = tiny_model()  # briefly trained: a random tiny model has an all-zero latent
    cfg = TrainConfig(max_steps=20, crop=64, val_crop=64, batch_size=2, lr=3e-3, eval_every=20)
    train(model, IMAGES, cfg, tmp_path / "tiny.pt", resume=False)
    src = export_model(model.eval(), tmp_path / "fp32")
    params = QuantParams.model_validate(
        {"backend": "inc-static", "calibration": {"images": 2, "crop": 64}, "keep_float_top_k": 2}
    )
    report = QUANTIZERS.get("inc-static")(
        src, tmp_path / "q", params, IMAGES, 1, checkpoint=tmp_path / "tiny.pt"
    )
    kept = {(r["graph"], r["node"]) for r in report["keep_float_top_k"]["kept"]}
    got = floats(tmp_path / "q")
    assert len(kept) == 2 and {(g, n) for g, nodes in got.items() for n in nodes} == kept
    assert not {(r["graph"], r["node"]) for r in report["inc"]["inputs"]} & kept
