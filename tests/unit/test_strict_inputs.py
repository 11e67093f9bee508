"""Hostile-but-ordinary inputs on the torch side: each is one CompressorError with a message
that names the problem and what is allowed, never a traceback (KeyError, TypeError, ...)."""

from __future__ import annotations

import math
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from compressor import checkpoint
from compressor.data import load_folder, load_images
from compressor.errors import CheckpointError, CompressorError, DataError, RecipeError
from compressor.metrics.ssim import ssim
from compressor.recipe import MAX_RECIPE_BYTES, load_recipe, read_recipe_file
from compressor.train import TrainConfig, resume_path, train
from tests.conftest import REPO, tiny_model, write_images


# -- checkpoints: our format, field by field ---------------------------------------------------
@pytest.fixture(scope="module")
def good() -> dict[str, Any]:
    return checkpoint.to_dict(tiny_model())


def _save(tmp_path: Path, obj: Any, name: str = "m.pt") -> Path:
    torch.save(obj, tmp_path / name)
    return tmp_path / name


def _refused(tmp_path: Path, obj: Any, *fragments: str) -> str:
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(_save(tmp_path, obj))
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def _with(good: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {**good, **fields}


def _config(good: dict[str, Any], **values: Any) -> dict[str, Any]:
    return _with(good, config={**good["config"], **values})


def test_field_types_of_our_format(good: dict[str, Any], tmp_path: Path) -> None:
    sd = good["state_dict"]
    _refused(tmp_path, _with(good, state_dict=list(sd.values())), "state_dict must be a non-empty")
    _refused(tmp_path, _with(good, state_dict={}), "state_dict must be a non-empty", "(empty)")
    no_arch = {k: v for k, v in good.items() if k != "arch"}
    _refused(tmp_path, no_arch, "has no field 'arch'", "fields: format, arch, config")
    _refused(tmp_path, _with(good, arch=7), "arch must be a model name", "allowed: ")
    _refused(tmp_path, _with(good, arch="squeezenet"), "'squeezenet' model; allowed: ")
    _refused(tmp_path, _with(good, config=[8, 12]), "config must be a mapping")
    _refused(tmp_path, _with(good, meta=[1, 2]), "meta must be a mapping")
    _refused(tmp_path, _with(good, meta={"train": [1]}), "meta.train must be a mapping")
    _refused(tmp_path, _with(good, meta={"train": {"lmbda": "x"}}), "positive number")
    _refused(tmp_path, _with(good, extra=1), "unknown field 'extra'")
    _refused(tmp_path, _with(good, format="compressor/9"), "reads compressor/1 only")
    entry = {**sd, "g_a.0.weight": [1.0]}
    _refused(tmp_path, _with(good, state_dict=entry), "entry 'g_a.0.weight' is a list")


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"N": -8}, "config 'N' of bmshj2018-hyperprior = -8; allowed: an integer 1..4096"),
        ({"N": 0}, "allowed: an integer 1..4096"),
        ({"M": "12"}, "config 'M' of bmshj2018-hyperprior = '12'; allowed: an integer 1..4096"),
        ({"M": True}, "= True; allowed: an integer 1..4096"),
        ({"M": 12.5}, "= 12.5; allowed: an integer 1..4096"),  # int() would truncate it
        ({"N": None}, "= None; allowed: an integer"),
        ({"quality": float("nan")}, "'quality' of bmshj2018-hyperprior = nan; allowed: integers"),
        ({"quality": -1}, "= -1; allowed: an integer 0..2147483647"),
        ({"quality": [2]}, "= list; allowed: integers"),
    ],
)
def test_config_values(good: dict[str, Any], tmp_path: Path, values: dict, fragment: str) -> None:
    _refused(tmp_path, _config(good, **values), fragment)


def _refused_fast(tmp_path: Path, obj: Any, *fragments: str) -> float:
    """Seconds the refusal took; also asserts the process's peak memory did not grow by
    the hundreds of megabytes that building the model would take."""
    path = _save(tmp_path, obj)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    t0 = time.perf_counter()
    _refused_at = None
    try:
        checkpoint.load(path)
    except CheckpointError as e:
        _refused_at = time.perf_counter() - t0
        for fragment in fragments:
            assert fragment in str(e), str(e)
    assert _refused_at is not None, "the checkpoint was accepted"
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
    assert grown_mib < 200, grown_mib
    return _refused_at


def test_absurd_widths_are_refused_before_any_tensor_is_built(
    good: dict[str, Any], tmp_path: Path
) -> None:
    # N=M=40000 would be 438 G parameters (the brief's 6.4 GB is just its first GDN)
    took = _refused_fast(tmp_path, _config(good, N=40000, M=40000), "= 40000", "1..4096")
    assert took < 1.0
    # within the per-width bound, the parameter count is the limit: counted on fake tensors
    took = _refused_fast(
        tmp_path,
        _config(good, N=4096, M=4096),
        "implies 4,597,899,267 parameters",
        "allowed: at most 268,435,456",
    )
    assert took < 5.0  # the fake build; well under a second here, slack for a busy machine
    # a plausible config that still needs more weights than the file holds
    _refused_fast(
        tmp_path,
        _config(good, N=128, M=192),
        "does not fit bmshj2018-hyperprior",
        "implies 5,075,843 parameters",
    )


@pytest.mark.parametrize(
    ("widths", "fragment"),
    [
        ([1, 2], "must be a map {module path: [widths]}, got list"),
        ({"g_a.0": [3, -8]}, "'g_a.0' = [3, -8]; allowed: a list of 1..8 integers"),
        ({"g_a.0": [3, 40000]}, "each 1..4096 channels"),
        ({"g_a.0": "wide"}, "'g_a.0' = 'wide'"),
        ({"g_a.0": [3.0, 8.0]}, "allowed: a list of"),
        ({"g_a.0": []}, "allowed: a list of"),
        ({7: [3, 8]}, "give 7 = [3, 8]"),
        ({"g_a.nope": [3, 8]}, "not a resizable module"),
    ],
)
def test_malformed_widths(good: dict[str, Any], tmp_path: Path, widths: Any, fragment: str) -> None:
    _refused(tmp_path, _config(good, widths=widths), fragment)


def test_one_nan_or_inf_is_refused_with_the_tensor_name(
    good: dict[str, Any], tmp_path: Path
) -> None:
    for bad in (math.nan, math.inf):
        sd = {k: v.clone() for k, v in good["state_dict"].items()}
        sd["h_s.2.bias"][3] = bad
        _refused(tmp_path, _with(good, state_dict=sd), "tensor 'h_s.2.bias' holds 1 NaN/Inf")
        # a foreign (CompressAI) file: both layouts
        _refused(tmp_path, {"state_dict": sd}, "'h_s.2.bias' holds 1 NaN/Inf")
        _refused(tmp_path, sd, "'h_s.2.bias' holds 1 NaN/Inf")


def test_entropy_bottleneck_range_is_bounded(good: dict[str, Any], tmp_path: Path) -> None:
    # finite but absurd quantiles: finalize() would build 2e6-long tables per channel
    q = good["state_dict"]["entropy_bottleneck.quantiles"].clone()
    q[:, 0, 0], q[:, 0, 2] = -1e6, 1e6
    sd = {**good["state_dict"], "entropy_bottleneck.quantiles": q}
    took = _refused_fast(
        tmp_path,
        _with(good, state_dict=sd),
        "'entropy_bottleneck.quantiles' spans 2,000,000 symbols in one channel",
        "allowed: at most 1,024 per channel",
    )
    assert took < 1.0


def test_foreign_state_dicts(good: dict[str, Any], tmp_path: Path) -> None:
    sd = good["state_dict"]
    _refused(tmp_path, {"state_dict": {**sd, "g_a.0.weight": 3}}, "entry 'g_a.0.weight' is a int")
    _refused(tmp_path, {"state_dict": {}}, "state_dict must be a non-empty mapping")
    # the arch is guessed, its config inferred from shapes: a 1-d g_a.6.weight breaks both
    broken = {**sd, "g_a.6.weight": torch.zeros(3)}
    _refused(tmp_path, broken, f"checkpoint {tmp_path / 'm.pt'}")
    assert checkpoint.load(_save(tmp_path, {"state_dict": sd})).arch == "bmshj2018-hyperprior"


def _mutations(good: dict[str, Any]) -> list[Any]:
    """A small hand-made fuzz corpus: every field replaced by values of other types."""
    odd: list[Any] = [None, 0, -1, 1.5, "x", [], {}, [1], {"a": 1}, torch.zeros(2), b"\x00"]
    out: list[Any] = [None, [], "compressor/1", {"format": "compressor/1"}]
    for key in ("arch", "config", "state_dict", "meta"):
        out += [{**good, key: value} for value in odd]
    for key in ("N", "M", "widths"):
        out += [{**good, "config": {**good["config"], key: value}} for value in odd]
    sd = good["state_dict"]
    for name in ("g_a.0.weight", "entropy_bottleneck._quantized_cdf", "h_s.4.bias"):
        out += [{**good, "state_dict": {**sd, name: value}} for value in odd]
    return out


def test_every_failure_is_a_checkpoint_error(good: dict[str, Any], tmp_path: Path) -> None:
    for i, obj in enumerate(_mutations(good)):
        path = _save(tmp_path, obj, f"m{i}.pt")
        try:
            checkpoint.load(path)
        except CompressorError as e:
            assert "\n" not in str(e) and len(str(e)) < 600, str(e)
        # anything else (TypeError, KeyError, RuntimeError, ...) fails the test by itself


# -- the train loop's resume file --------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ([1, 2, 3], "it holds a list, not a training state"),
        ({"step": 3}, "it has no 'checkpoint'"),
        ("truncated", "is unusable"),
        ("other-model", "does not fit this training run"),
        ("bad-step", "its 'step' is 'x', not a count"),
        ("best-tensor", "best_state must be a non-empty mapping"),
    ],
)
def test_unusable_resume_file(
    content: Any, fragment: str, images_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "m.pt"
    rpath = resume_path(out)
    if content == "truncated":
        torch.save({"a": torch.zeros(1000)}, rpath)
        rpath.write_bytes(rpath.read_bytes()[:200])
    elif content in ("other-model", "bad-step", "best-tensor"):
        other = checkpoint.to_dict(tiny_model("bmshj2018-factorized"))
        state = _resume_state(other, step="x" if content == "bad-step" else 1)
        if content == "best-tensor":
            state["best_state"] = torch.zeros(3)
        torch.save(state, rpath)
    else:
        torch.save(content, rpath)
    cfg = TrainConfig(max_steps=1, crop=64, val_crop=64, batch_size=1, eval_every=1)
    with pytest.raises(CheckpointError) as info:
        train(tiny_model(), load_folder(images_dir), cfg, out)
    message = str(info.value)
    assert f"resume file {rpath}" in message and fragment in message, message
    assert message.endswith("delete it or pass --no-resume to start over")
    assert not out.exists()


def _resume_state(ckpt: dict[str, Any], step: Any) -> dict[str, Any]:
    return {
        "checkpoint": ckpt,
        "opt": {},
        "aux_opt": {},
        "sched": {},
        "gen": torch.Generator().get_state(),
        "rng": torch.get_rng_state(),
        "step": step,
        "elapsed": 0.0,
        "bad_evals": 0,
        "best": 1.0,
        "best_state": {},
        "history": [],
    }


# -- images too small for the metrics ----------------------------------------------------------
def test_images_smaller_than_the_ssim_window(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "imgs", [(64, 64)])
    Image.fromarray(np.zeros((40, 1, 3), np.uint8)).save(folder / "thin.png")
    for load in (load_images, load_folder):
        with pytest.raises(DataError, match=r"thin.png is 1x40 pixels; images must be at least"):
            load(folder)
    write_images(tmp_path / "ok", [(11, 11)])
    assert load_images(tmp_path / "ok")[0][1].shape == (11, 11, 3)  # the minimum itself is fine
    with pytest.raises(DataError, match="at least 11x11 pixels"):
        ssim(np.zeros((10, 64, 3), np.uint8), np.zeros((10, 64, 3), np.uint8))


def test_evaluate_cli_refuses_a_one_pixel_image(tiny_ckpt: Path, tmp_path: Path) -> None:
    from compressor.cli import main

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((1, 30, 3), np.uint8)).save(folder / "line.png")
    result = CliRunner().invoke(main, ["evaluate", str(tiny_ckpt), "--data", str(folder)])
    assert result.exit_code == 2, (result.output, result.stderr)
    assert "line.png is 30x1 pixels" in result.stderr and "at least 11x11" in result.stderr
    assert result.stderr.strip().count("\n") == 0  # one line, no traceback


# -- recipes -----------------------------------------------------------------------------------
def _recipe(tmp_path: Path, text: str | bytes, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def _recipe_error(path: Path) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    return message


def test_recipe_files_that_are_not_recipes(tmp_path: Path) -> None:
    latin1 = _recipe(tmp_path, "name: caf\xe9\nmodel: bundled\n".encode("latin-1"))
    assert "is not UTF-8 text (byte 0xe9 at offset 9)" in _recipe_error(latin1)
    big = _recipe(tmp_path, "# " + "x" * MAX_RECIPE_BYTES + "\n")
    assert "allowed: at most 1,048,576 (1 MiB)" in _recipe_error(big)
    deep = _recipe(tmp_path, "[" * 50_000)
    assert "nested too deeply" in _recipe_error(deep)
    recursive = _recipe(tmp_path, "name: &a [*a]\n")
    assert "recursive alias" in _recipe_error(recursive)


def test_billion_laughs_is_refused_quickly(tmp_path: Path) -> None:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    path = _recipe(tmp_path, "\n".join([*lines, "name: t", "model: *a8", "steps: *a8"]))
    t0 = time.perf_counter()
    message = _recipe_error(path)
    assert time.perf_counter() - t0 < 1.0
    assert "aliases expand to more than 10000 values" in message
    # a few aliases (sharing a block) stay allowed
    shared = "a: &g {max_psnr_drop_db: 1.0}\nb: *g\nc: *g\n"
    assert read_recipe_file(_recipe(tmp_path, shared, "s.yaml"))["c"] == {"max_psnr_drop_db": 1.0}


def test_error_messages_quote_a_short_excerpt(tmp_path: Path) -> None:
    huge = "n" * 100_000 + "."
    message = _recipe_error(_recipe(tmp_path, f"name: {huge}\nmodel: m\nsteps: [evaluate: {{}}]"))
    assert "name: name must be 1..64 letters" in message and "(got 'nnnn" in message
    data = {"name": "t", "model": "m", "threads": list(range(20_000)), "steps": [{"evaluate": {}}]}
    message = _recipe_error(_recipe(tmp_path, yaml.safe_dump(data)))
    assert "threads" in message and "(got [0, 1, 2, 3, ...])" in message
    data = {"name": "t", "model": "m", "k" * 10_000: 1, "steps": [{"evaluate": {}}]}
    assert "Extra inputs are not permitted" in _recipe_error(
        _recipe(tmp_path, yaml.safe_dump(data))
    )
    data = {"name": "t", "model": "m", "steps": [{"s" * 10_000: {}}]}
    assert "unknown step 'sss" in _recipe_error(_recipe(tmp_path, yaml.safe_dump(data)))


@pytest.mark.parametrize("name", [".", "..", "a.b", "-x", "_x", "a/b", "x" * 65, ""])
def test_recipe_name_is_a_plain_slug(name: str, tmp_path: Path) -> None:
    path = _recipe(
        tmp_path, yaml.safe_dump({"name": name, "model": "m", "steps": [{"export": {}}]})
    )
    assert "name must be 1..64 letters, digits, '-' or '_'" in _recipe_error(path)


def test_every_bundled_recipe_still_parses() -> None:
    from compressor.recipe import parse_recipe, read_recipe_file
    from compressor.search.spec import parse_spec

    recipes = sorted((REPO / "recipes").glob("*.yaml"))
    assert len(recipes) >= 7
    for path in recipes:
        raw = read_recipe_file(path)
        if "search" in raw:  # `cli.py search` parses its block and hands the rest on
            parse_spec(raw.pop("search"), str(path))
            assert parse_recipe(raw, str(path)).name == path.stem
        else:
            assert load_recipe(path).name == path.stem


def test_calibrating_on_the_eval_images_is_refused_at_parse_time(tmp_path: Path) -> None:
    base = {"name": "t", "model": "m", "steps": [{"export": {}}]}
    same = {**base, "data": {"eval": "skimage", "calibration": "skimage"}}
    message = _recipe_error(_recipe(tmp_path, yaml.safe_dump(same)))
    assert "data: data.calibration is the evaluation folder 'skimage'" in message
    assert "(use skimage-calibration)" in message and "(got" not in message
    (tmp_path / "imgs").mkdir()
    spelled = {"eval": str(tmp_path / "imgs"), "calibration": f"{tmp_path}/imgs/../imgs/"}
    message = _recipe_error(_recipe(tmp_path, yaml.safe_dump({**base, "data": spelled})))
    assert "data.calibration is the evaluation folder" in message
    other = {"eval": "skimage", "calibration": "skimage-calibration"}
    path = _recipe(tmp_path, yaml.safe_dump({**base, "data": other}))
    assert load_recipe(path).data.calibration == "skimage-calibration"


def test_export_opset_is_bounded_when_the_recipe_is_parsed(tmp_path: Path) -> None:
    # parsing is the first thing pipeline.plan does: refused before any weights load
    for opset, fragment in ((99, "less than or equal to 20"), (16, "greater than or equal to 17")):
        recipe = {"name": "t", "model": "m", "steps": [{"export": {"opset": opset}}]}
        message = _recipe_error(_recipe(tmp_path, yaml.safe_dump(recipe)))
        assert "steps[0].export.opset" in message and fragment in message
        assert f"(got {opset})" in message
