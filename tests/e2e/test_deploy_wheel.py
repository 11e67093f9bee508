"""The torch-free deployment install (deploy/runtime/pyproject.toml).

The fast test checks that the wheel's file list is exactly what compressor.runtime imports;
the other builds the wheel, installs it into a fresh virtual environment without torch
(PyPI or a warm uv cache; ~10 s warm), and encodes and decodes a Kodak image there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import BUNDLED, KODAK, REPO, need

CONFIG = REPO / "deploy" / "runtime" / "pyproject.toml"
#: imports every runtime module and prints the compressor modules loaded, and whether torch is
IMPORT_ALL = """
import importlib, json, pkgutil, sys
import compressor.runtime as rt
for m in pkgutil.iter_modules(rt.__path__):
    importlib.import_module("compressor.runtime." + m.name)
print(json.dumps({"modules": sorted(k for k in sys.modules if k.startswith("compressor")),
                  "torch": "torch" in sys.modules}))
"""


def shipped() -> set[str]:
    """Module names of the wheel's files (from the build config's force-include table)."""
    table = tomllib.loads(CONFIG.read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    names = set()
    for target in table["force-include"].values():
        names.add(re.sub(r"(/__init__)?\.py$", "", target).replace("/", "."))
    return names


def test_wheel_ships_exactly_what_the_runtime_imports() -> None:
    run = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL], capture_output=True, text=True, cwd=REPO, check=True
    )
    found = json.loads(run.stdout)
    assert found["torch"] is False
    loaded, wheel = set(found["modules"]), shipped()
    assert loaded - wheel == set(), "the runtime imports modules the wheel lacks"
    runtime_files = {
        f"compressor.runtime.{p.stem}" for p in (REPO / "compressor/runtime").glob("*.py")
    }
    runtime_files = {n.removesuffix(".__init__") for n in runtime_files}
    assert runtime_files <= wheel, "a runtime module is missing from the wheel"
    assert wheel - loaded <= {"compressor.runtime.__main__"}  # nothing shipped unused


def test_wheel_installs_without_torch_and_codes_kodak(tmp_path: Path) -> None:
    kodak = need(KODAK / "kodim01.png", "Kodak image")
    need(BUNDLED, "bundled model")
    uv = shutil.which("uv") or pytest.skip("uv is not on PATH (it builds and installs the wheel)")
    from compressor import checkpoint
    from compressor.export import export_model
    from compressor.runtime import load_codec

    export = export_model(checkpoint.load(BUNDLED), tmp_path / "exp")
    dist, venv = tmp_path / "dist", tmp_path / "venv"
    subprocess.run([uv, "build", "-q", "--wheel", str(CONFIG.parent), "-o", str(dist)], check=True)
    (wheel,) = dist.glob("compressor_runtime-*.whl")
    subprocess.run([uv, "venv", "-q", str(venv), "--python", sys.executable], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [uv, "pip", "install", "-q", "--python", str(python), str(wheel)],
        capture_output=True, text=True,
    )  # fmt: skip
    if install.returncode:
        pytest.skip(
            f"the deployment's dependencies could not be installed: {install.stderr[-300:]}"
        )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    found = subprocess.run(
        [str(python), "-c", IMPORT_ALL], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert json.loads(found.stdout)["torch"] is False
    no_torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True, env=env)
    assert no_torch.returncode != 0  # the environment really has no torch
    cli = [str(venv / "bin" / "compressor-runtime")]
    cbin, png = tmp_path / "k.cbin", tmp_path / "k.png"
    for args in (
        ["encode", str(kodak), "--codec", str(export), "-o", str(cbin), "--threads", "1"],
        ["decode", str(cbin), "--codec", str(export), "-o", str(png), "--threads", "1"],
    ):
        res = subprocess.run([*cli, *args], capture_output=True, text=True, cwd=tmp_path, env=env)
        assert res.returncode == 0, res.stderr
    # the toolkit decodes the deployment's file to the same pixels
    from compressor.imageio import read_rgb8

    codec = load_codec(export, threads=1)
    ref = codec.decode(cbin.read_bytes())
    got = read_rgb8(png)
    assert got.shape == (512, 768, 3)
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1
    bpp = cbin.stat().st_size * 8 / (512 * 768)
    assert 0.05 < bpp < 1.0
