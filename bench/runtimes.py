"""ONNX Runtime vs OpenVINO, FP32 / BF16 / INT8: whole codec and per graph, one process.

Every configuration runs the same export folders (FP32, and its ort-static INT8 copies: the
shipped recipes' quantization, and the same with shared_phase_scale for OpenVINO; calibrated
on --calibration photos, never on the evaluation images) on the same Kodak images,
interleaved (compressor.compare.compare for whole codecs; A B C ... rounds
per graph). Per-graph throughput is stated as a share of the GEMM peak of the same runtime
and precision measured in this run (bench/peak.py). --deploy also builds the torch-free wheel
into a fresh venv and compares its installed size and cold start (process start, import,
load, first decode of a Kodak file) with the full toolkit's `cli.py decode`.

    OMP_NUM_THREADS=1 uv run --frozen python bench/runtimes.py --count 2 --threads 1 --deploy
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from peak import measure as measure_peak  # noqa: E402

from compressor import checkpoint  # noqa: E402
from compressor.compare import compare  # noqa: E402
from compressor.data import load_images  # noqa: E402
from compressor.export import export_model  # noqa: E402
from compressor.metrics.complexity import component_inputs, count_macs  # noqa: E402
from compressor.quant import QUANTIZERS, QuantParams  # noqa: E402
from compressor.quant.calib import graph_inputs  # noqa: E402
from compressor.runtime import load_codec  # noqa: E402

#: label -> (export, runtime, precision); the peak key its throughput is a share of
CONFIGS = {
    "ort/fp32": ("fp32", "ort", "fp32"),
    "ort/int8": ("int8", "ort", "fp32"),
    "openvino/fp32": ("fp32", "openvino", "fp32"),
    "openvino/bf16": ("fp32", "openvino", "bf16"),
    "openvino/int8": ("int8", "openvino", "fp32"),
    # runtime auto: each graph on the runtime that was faster when the codec loaded
    "auto/int8": ("int8", "auto", "fp32"),
    # quantized with shared_phase_scale (quant.phase_scales): for OpenVINO
    "openvino/int8-shared": ("int8-shared", "openvino", "fp32"),
    "auto/int8-shared": ("int8-shared", "auto", "fp32"),
}
#: the INT8 exports: what the shipped INT8 recipes quantize, and the same for OpenVINO
INT8 = {
    "int8": {"components": ["encoder", "decoder", "hyper_encoder"]},
    "int8-shared": {"components": ["encoder", "decoder", "hyper_encoder"],
                    "shared_phase_scale": True},
}  # fmt: skip
GRAPHS = {"g_a": "encoder", "h_a": "hyper_encoder", "h_s": "hyper_decoder", "g_s": "decoder"}


def graph_macs(model: torch.nn.Module, h: int, w: int) -> dict[str, int]:
    inputs = component_inputs(model, torch.rand(1, 3, h, w))
    comps = model.components()
    return {g: count_macs(comps[c], inputs[c]) for g, c in GRAPHS.items()}


def peak(peaks: dict, label: str, codec: object, graph: str) -> float:
    """The GEMM peak a graph's throughput is a share of: its own runtime's (auto: the one
    the codec chose for that graph)."""
    runtime, precision = label.split("/")
    if runtime == "auto":
        runtime = codec.runtimes[graph]  # type: ignore[attr-defined]
    return float(peaks[f"{runtime}/{precision.split('-')[0]}"]["peak"])


def per_graph(codecs: dict, rgb8: np.ndarray, repeats: int) -> dict[str, dict[str, float]]:
    """{label: {graph: median ms}}, graphs of all configurations interleaved."""
    feeds = graph_inputs(next(iter(codecs.values())), rgb8)
    times: dict[str, dict[str, list[float]]] = {k: {g: [] for g in GRAPHS} for k in codecs}
    for r in range(repeats + 1):  # round 0 is the warm-up
        for label, codec in codecs.items():
            for g in GRAPHS:
                sess = codec.sessions[g]
                t0 = time.perf_counter()
                sess.run(None, {sess.get_inputs()[0].name: feeds[g]})
                if r:
                    times[label][g].append((time.perf_counter() - t0) * 1e3)
    return {k: {g: statistics.median(v) for g, v in t.items()} for k, t in times.items()}


def deploy_venv(work: Path) -> Path:
    uv = shutil.which("uv") or sys.exit("uv is not on PATH")
    dist, venv = work / "dist", work / "venv"
    subprocess.run([uv, "build", "-q", "--wheel", str(ROOT / "deploy/runtime"), "-o", str(dist)],
                   check=True)  # fmt: skip
    subprocess.run([uv, "venv", "-q", str(venv), "--python", sys.executable], check=True)
    wheel = next(dist.glob("*.whl"))
    subprocess.run([uv, "pip", "install", "-q", "--python", str(venv / "bin/python"),
                    f"{wheel}[openvino]"], check=True)  # fmt: skip
    return venv


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def cold_start(cmds: dict[str, list[str]], rounds: int = 3) -> dict[str, float]:
    """Median seconds of each command (a fresh process each), interleaved."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(rounds):
        for key, cmd in cmds.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=ROOT)
            times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def report_deploy(work: Path, fp32: Path, rgb8: np.ndarray) -> None:
    venv = deploy_venv(work)
    cbin = work / "k.cbin"
    cbin.write_bytes(load_codec(fp32, threads=1).encode(rgb8))  # encoded once by the toolkit
    common = ["decode", str(cbin), "--codec", str(fp32), "--threads", "1", "--overwrite"]
    cmds = {
        "deploy": [str(venv / "bin/compressor-runtime"), *common, "-o", str(work / "a.png")],
        "toolkit": [sys.executable, str(ROOT / "cli.py"), *common, "-o", str(work / "b.png")],
    }
    secs = cold_start(cmds)
    site = next((venv / "lib").glob("python*/site-packages"))
    full = next((ROOT / ".venv/lib").glob("python*/site-packages"))
    print("\n| install | site-packages MB | cold start s (decode 1 Kodak, 1 thread) |")
    print("|---|---|---|")
    print(f"| deployment wheel [openvino] | {size_mb(site):.0f} | {secs['deploy']:.2f} |")
    print(f"| full toolkit (.venv) | {size_mb(full):.0f} | {secs['toolkit']:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "compressor/assets/bmshj2018-hyperprior-q2.pt"))
    ap.add_argument("--images", default=str(ROOT.parent / "shared/data/kodak"))
    ap.add_argument("--count", type=int, default=2, help="first N Kodak images")
    ap.add_argument("--calibration", default=str(ROOT.parent / "shared/data/wikipedia-photos"),
                    help="calibration photos (never the evaluation images)")  # fmt: skip
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--deploy", action="store_true", help="also the wheel's size and cold start")
    args = ap.parse_args()
    images = load_images(args.images)[: args.count]
    model = checkpoint.load(Path(args.model)).eval()
    h, w = images[0][1].shape[:2]
    macs = graph_macs(model, h, w)
    peaks = measure_peak(args.threads)
    with tempfile.TemporaryDirectory(prefix="runtimes.") as tmp:
        work = Path(tmp)
        folders = {"fp32": export_model(model, work / "fp32")}
        cal = [rgb for _, rgb in load_images(args.calibration)[:16]]
        for name, params in INT8.items():
            folders[name] = work / name
            QUANTIZERS.get("ort-static")(
                folders["fp32"], folders[name], QuantParams.model_validate(params), cal, 1
            )

        def codecs(threads: int) -> dict:
            return {k: load_codec(folders[e], threads=threads, runtime=r, precision=p)
                    for k, (e, r, p) in CONFIGS.items()}  # fmt: skip

        one = codecs(args.threads)
        result = compare(one, images, args.repeats, estimate=False, threads=args.threads)
        ms = per_graph(one, images[0][1], args.repeats * 2)
        two = per_graph(codecs(2), images[0][1], args.repeats * 2)
        print(f"{args.model}, {len(images)} Kodak images, {args.threads} thread(s)")
        print("| config | encode ms | decode ms | PSNR dB | bpp | dPSNR vs ort/fp32 | bpp ratio |")
        print("|---|---|---|---|---|---|---|")
        ref = result["ort/fp32"]
        for k in CONFIGS:
            r = result[k]
            cells = [r.mean("encode_ms"), r.mean("decode_ms"), r.mean("psnr"), r.mean("bpp")]
            d = r.mean("psnr") - ref.mean("psnr")
            ratio = r.mean("bpp") / ref.mean("bpp")
            print(
                f"| {k} | " + " | ".join(f"{c:.3f}" for c in cells) + f" | {d:+.3f} | {ratio:.4f} |"
            )
        print("\n| graph | GMAC | " + " | ".join(f"{k} ms (% peak)" for k in CONFIGS) + " | best |")
        print("|---|---|" + "---|" * (len(CONFIGS) + 1))
        for g in GRAPHS:
            cells = [f"{ms[k][g]:.1f} ({macs[g] / ms[k][g] / 1e6 / peak(peaks, k, one[k], g):.0%})"
                     for k in CONFIGS]  # fmt: skip
            best = min(CONFIGS, key=lambda k: ms[k][g])
            print(f"| {g} | {macs[g] / 1e9:.2f} | " + " | ".join(cells) + f" | {best} |")
        for k in ("auto/int8", "auto/int8-shared"):
            print(f"\nruntime {k} chose: " + ", ".join(f"{g} {one[k].runtimes[g]}"
                                                      for g in GRAPHS))  # fmt: skip
        print("\n| config | " + " | ".join(f"{g} 2 threads / 1" for g in GRAPHS) + " |")
        print("|---|" + "---|" * len(GRAPHS))
        for k in CONFIGS:
            print(f"| {k} | " + " | ".join(f"{ms[k][g] / two[k][g]:.2f}x" for g in GRAPHS) + " |")
        print(
            "\nGEMM peaks (GMAC/s): " + ", ".join(f"{k} {v['peak']:.1f}" for k, v in peaks.items())
        )
        if args.deploy:
            report_deploy(work, folders["fp32"], images[0][1])


if __name__ == "__main__":
    main()
