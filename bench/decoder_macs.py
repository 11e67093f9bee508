"""Decoder (g_s) MACs and speed, per-phase rewrite vs one 3x3 sub-pixel conv, FP32 and INT8.

Both rewrites of a ConvTranspose2d are exact in float; `SubpixelConv` ("subpixel") gives
each of the 4 output phases a 3x3 kernel (36 MACs per input pixel and channel pair),
`PhaseConv` ("phases") only its real taps (3x3/3x2/2x3/2x2: 25). Useful MACs are the 25 count
(torch's FLOP counter on the original decoder). Timings: ONNX Runtime, interleaved repeats in
one process, median; g_a INT8 is printed as the throughput reference.

    OMP_NUM_THREADS=1 uv run python bench/decoder_macs.py \
        --model compressor/assets/bmshj2018-hyperprior-q2.pt --size 512x768
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import onnx
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compressor import checkpoint
from compressor.data import load_images
from compressor.export import export_model, rewrites
from compressor.metrics.complexity import component_inputs, count_macs
from compressor.quant import QUANTIZERS, QuantParams
from compressor.quant import graph as qg
from compressor.runtime import manifest as mf
from compressor.threads import resolve_threads

#: name -> phase_min_channels: every deconv SubpixelConv / every deconv PhaseConv / the default
#: (PhaseConv for wide deconvs, SubpixelConv for the 3-channel image layer)
VARIANTS = {"subpixel": 1 << 30, "phases": 0, "default": rewrites.PHASE_MIN_CHANNELS}


def export_variants(model_path: str, work: Path, threads: int) -> dict[str, Path]:
    """FP32 and INT8 export folders of both rewrites: {'subpixel/fp32': folder, ...}."""
    model = checkpoint.load(Path(model_path))
    cal = [rgb for _, rgb in load_images("skimage-calibration")[:2]]
    folders = {}
    for name, least in VARIANTS.items():
        with mock.patch.object(rewrites, "PHASE_MIN_CHANNELS", least):
            fp32 = export_model(model, work / f"{name}-fp32")
        int8 = work / f"{name}-int8"
        QUANTIZERS.get("ort-static")(fp32, int8, QuantParams(), cal, threads)
        if qg.float_convs(onnx.load(int8 / "g_s.onnx")):
            raise SystemExit(f"{name}: g_s keeps float convs after quantization")
        folders[f"{name}/fp32"], folders[f"{name}/int8"] = fp32, int8
    return folders


def graph_macs(model_path: str, h: int, w: int) -> dict[str, int]:
    """MACs per image of g_a, g_s (useful: the transposed convs' own count) and both rewrites."""
    model = checkpoint.load(Path(model_path)).eval()
    inputs = component_inputs(model, torch.rand(1, 3, h, w))
    comps = model.components()
    out = {"g_a": count_macs(comps["encoder"], inputs["encoder"])}
    out["useful"] = count_macs(comps["decoder"], inputs["decoder"])
    for name, least in VARIANTS.items():
        graph = rewrites.rewrite(comps["decoder"], phase_min_channels=least)
        out[name] = count_macs(graph, inputs["decoder"])
    return out


def session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def time_interleaved(
    runs: dict[str, tuple[ort.InferenceSession, np.ndarray]], repeats: int
) -> dict[str, float]:
    """Median ms per call of every session, calls interleaved A B C ... A B C ..."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    for sess, x in runs.values():  # warm-up
        sess.run(None, {"input": x})
    for _ in range(repeats):
        for key, (sess, x) in runs.items():
            t0 = time.perf_counter()
            sess.run(None, {"input": x})
            times[key].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="compressor/assets/bmshj2018-hyperprior-q2.pt")
    ap.add_argument("--size", default="512x768", help="HxW of the decoded image")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    threads = resolve_threads(args.threads)
    h, w = (int(v) for v in args.size.split("x"))
    macs = graph_macs(args.model, h, w)
    with tempfile.TemporaryDirectory(prefix="decoder_macs.") as tmp:
        folders = export_variants(args.model, Path(tmp), threads)
        y_info = mf.read(folders["default/fp32"]).latents["y"]
        c_y, stride = y_info["channels"], y_info["stride"]
        # a rounded latent like the decoder receives; its values do not change the work done
        y = np.rint(np.random.default_rng(0).normal(0, 2, (1, c_y, h // stride, w // stride)))
        x = np.random.default_rng(1).random((1, 3, h, w), dtype=np.float32)
        runs = {
            k: (session(f / "g_s.onnx", threads), y.astype(np.float32)) for k, f in folders.items()
        }
        runs["g_a/int8"] = (session(folders["default/int8"] / "g_a.onnx", threads), x)
        ms = time_interleaved(runs, args.repeats)
    print(f"{args.model} at {h}x{w}, {threads} thread(s), median of {args.repeats}")
    print(f"g_s useful MACs {macs['useful'] / 1e9:.2f} G; g_a {macs['g_a'] / 1e9:.2f} G")
    print("| graph | rewrite | dtype | GMAC run | ms | useful GMAC/s | run GMAC/s |")
    print("|---|---|---|---|---|---|---|")
    for key, t in ms.items():
        name, dtype = key.split("/")
        run_macs = macs["g_a"] if name == "g_a" else macs[name]
        useful = macs["g_a"] if name == "g_a" else macs["useful"]
        graph, rw = ("g_a", "-") if name == "g_a" else ("g_s", name)
        cells = [graph, rw, dtype, f"{run_macs / 1e9:.2f}", f"{t:.1f}",
                 f"{useful / t / 1e6:.1f}", f"{run_macs / t / 1e6:.1f}"]  # fmt: skip
        print("| " + " | ".join(cells) + " |")
    ga = macs["g_a"] / ms["g_a/int8"]
    for name in VARIANTS:
        share = macs["useful"] / ms[f"{name}/int8"] / ga
        print(f"g_s INT8 ({name}) useful GMAC/s = {share:.0%} of g_a INT8's")
    for name in ("phases", "default"):
        for dtype in ("fp32", "int8"):
            ratio = ms[f"subpixel/{dtype}"] / ms[f"{name}/{dtype}"]
            print(f"{dtype.upper()} speed-up {name} vs subpixel: {ratio:.2f}x")


if __name__ == "__main__":
    main()
