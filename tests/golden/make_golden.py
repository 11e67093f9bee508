"""Regenerate the golden bitstreams (run only when the format changes on purpose).

    OMP_NUM_THREADS=1 uv run python tests/golden/make_golden.py

Writes tests/golden/export/ (a tiny scale-hyperprior, N=8 M=12, integer hyper path),
img*.png, img*.cbin and golden.json: per image the SHA-256 of the bitstream and of its
decoded integer symbols (must match on every machine), and of the decoded pixels (g_s is
float: this machine only).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from compressor.export import export_model  # noqa: E402
from compressor.runtime import OrtCodec  # noqa: E402
from tests.conftest import smooth_image, tiny_model  # noqa: E402
from tests.golden.golden import digest, symbols_sha  # noqa: E402

SIZES = [(64, 96), (80, 48)]


def main() -> None:
    model = tiny_model("bmshj2018-hyperprior", seed=5)
    with torch.no_grad():
        model.net.g_a[-1].weight.mul_(6.0)  # latents that cost real bits
    model.finalize()
    if (HERE / "export").exists():
        shutil.rmtree(HERE / "export")
    export_model(model, HERE / "export")
    codec = OrtCodec(HERE / "export", threads=1)
    table = {}
    for i, (h, w) in enumerate(SIZES):
        rgb8 = smooth_image(h, w, seed=40 + i)
        Image.fromarray(rgb8).save(HERE / f"img{i}.png")
        data = codec.encode(rgb8)
        (HERE / f"img{i}.cbin").write_bytes(data)
        _, symbols, _ = codec.decode_latents(data)
        table[f"img{i}"] = {
            "bitstream_sha256": digest(data),
            "symbols_sha256": symbols_sha(symbols),
            "pixels_sha256_this_machine": digest(codec.decode(data).tobytes()),
            "bytes": len(data),
        }
    (HERE / "golden.json").write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
