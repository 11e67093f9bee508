"""cli.py search --ray: the trials' untimed steps as Ray tasks on a local 2-CPU cluster, their
timing in the driver; the trial records equal the in-process search's with the same seed."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from compressor.cli import main
from tests.e2e.test_search import SPACE, search_recipe

#: what a trial measured apart from time: equal on Ray and in-process
QUALITY = ("quality_loss", "bpp_increase", "size_mb", "screened", "error", "folder")


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """A local Ray with 2 CPUs in this process: `--ray auto` uses it as it is."""
    from compressor.search.ray_trials import init_ray

    init_ray(num_cpus=2)
    import ray

    yield
    ray.shutdown()


def records(out: Path) -> list[dict[str, str]]:
    rows = list(csv.DictReader((out / "trials.csv").open()))
    return [{k: row[k] for k in ("number", *SPACE, *QUALITY)} for row in rows]


@pytest.mark.slow  # a local Ray's start alone takes ~20 s on the 2 shared cores; ~2 min in all
def test_a_ray_search_records_the_trials_of_the_in_process_search(
    ray_cluster: None, tiny_ckpt: Path, tmp_path: Path
) -> None:
    block = {
        "space": SPACE,
        "max_trials": 4,
        "constraints": {"max_psnr_drop_db": 100.0},
        "final_check": False,
        "seed": 3,
    }
    r = search_recipe(tmp_path, tiny_ckpt, block)
    here, there = tmp_path / "here", tmp_path / "ray"
    local = CliRunner().invoke(main, ["search", str(r), "--output", str(here)])
    assert local.exit_code == 0, local.output
    remote = CliRunner().invoke(main, ["search", str(r), "--output", str(there), "--ray", "auto"])
    assert remote.exit_code == 0, remote.output
    expected = records(here)
    assert len(expected) == 4 and all(row["error"] == "" for row in expected)
    assert records(there) == expected
    for row in csv.DictReader((there / "trials.csv").open()):
        assert float(row["latency"]) > 0
    # the prune step ran as a Ray task (its recipe: the untimed steps on one thread), the
    # validate step here with the trial's whole recipe
    for trial in sorted((there / "trials").iterdir()):
        pruned = json.loads((trial / "01_prune" / "manifest.json").read_text())["recipe"]
        assert [next(iter(s)) for s in pruned["steps"]] == ["prune"] and pruned["threads"] == 1
        timed = json.loads((trial / "02_validate" / "manifest.json").read_text())["recipe"]
        assert [next(iter(s)) for s in timed["steps"]] == ["prune", "validate"]
    assert json.loads((there / "search.json").read_text())["trials"] == 4


def test_a_ray_address_that_does_not_answer_is_a_one_line_error(
    tiny_ckpt: Path, tmp_path: Path
) -> None:
    r = search_recipe(tmp_path, tiny_ckpt, {"space": SPACE, "max_trials": 2})
    out = tmp_path / "search"
    result = CliRunner().invoke(
        main, ["search", str(r), "--output", str(out), "--ray", "127.0.0.1:1"]
    )
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: --ray 127.0.0.1:1: no Ray head answers there")
    assert result.stderr.count("\n") == 1
    assert not out.exists()
    bad = CliRunner().invoke(main, ["search", str(r), "--output", str(out), "--ray", "nowhere"])
    assert bad.exit_code == 2 and "give auto or HOST:PORT" in bad.stderr
