"""This machine's GEMM peak per runtime and precision: one big MatMul and one 3x3 Conv graph.

The graphs are built with onnx.helper; INT8 is the QDQ form our quantized exports use
(QuantizeLinear/DequantizeLinear around float ops), so ONNX Runtime and OpenVINO fuse it into
their own int8 kernels exactly as they do for g_a / g_s. bench/runtimes.py states every graph's
throughput as a share of the peak measured here, in the same process.

    OMP_NUM_THREADS=1 uv run --frozen python bench/peak.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compressor.runtime.backends import Backend

#: (runtime, precision of the graph, inference precision)
CONFIGS = [
    ("ort", "fp32", "fp32"),
    ("ort", "int8", "fp32"),
    ("openvino", "fp32", "fp32"),
    ("openvino", "fp32", "bf16"),
    ("openvino", "int8", "fp32"),
]


def _qdq(name: str, scale: float) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
    """QuantizeLinear + DequantizeLinear of tensor `name` (int8, zero point 0)."""
    s = numpy_helper.from_array(np.array(scale, np.float32), f"{name}_s")
    z = numpy_helper.from_array(np.array(0, np.int8), f"{name}_z")
    nodes = [
        helper.make_node("QuantizeLinear", [name, s.name, z.name], [f"{name}_q"]),
        helper.make_node("DequantizeLinear", [f"{name}_q", s.name, z.name], [f"{name}_dq"]),
    ]
    return nodes, [s, z], f"{name}_dq"


def gemm_graph(kind: str, size: int, int8: bool) -> tuple[onnx.ModelProto, np.ndarray, int]:
    """(model, input, MACs): MatMul size^3, or Conv 3x3 size->size channels on 128x192."""
    rng = np.random.default_rng(0)
    if kind == "matmul":
        x = rng.standard_normal((size, size), np.float32)
        w = rng.standard_normal((size, size), np.float32) * 0.05
        macs, op, attrs = size**3, "MatMul", {}
    else:
        x = rng.standard_normal((1, size, 128, 192), np.float32)
        w = rng.standard_normal((size, size, 3, 3), np.float32) * 0.05
        macs, op, attrs = size * size * 9 * 128 * 192, "Conv", {"pads": [1, 1, 1, 1]}
    nodes, inits, a, b = [], [], "x", "w"
    if int8:
        w = np.clip(np.rint(w / 0.002), -127, 127).astype(np.int8)
        ws, wz = (numpy_helper.from_array(np.array(v, t), n) for v, t, n in
                  ((0.002, np.float32, "w_s"), (0, np.int8, "w_z")))  # fmt: skip
        inits += [numpy_helper.from_array(w, "w"), ws, wz]
        nodes.append(helper.make_node("DequantizeLinear", ["w", "w_s", "w_z"], ["w_dq"]))
        b = "w_dq"
        qn, qi, a = _qdq("x", 0.05)
        nodes, inits = [*nodes, *qn], [*inits, *qi]
    else:
        inits.append(numpy_helper.from_array(w, "w"))
    nodes.append(helper.make_node(op, [a, b], ["y"], **attrs))
    graph = helper.make_graph(
        nodes,
        kind,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model, x, macs


def gmacs(session: object, x: np.ndarray, macs: int, repeats: int) -> float:
    """GMAC/s of the median run (after one warm-up)."""
    name = session.get_inputs()[0].name  # type: ignore[attr-defined]
    session.run(None, {name: x})  # type: ignore[attr-defined]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, {name: x})  # type: ignore[attr-defined]
        times.append(time.perf_counter() - t0)
    return macs / statistics.median(times) / 1e9


def measure(threads: int, size: int = 1024, repeats: int = 5) -> dict[str, dict[str, float]]:
    """{'ort/int8': {'matmul': GMAC/s, 'conv': GMAC/s, 'peak': the larger}, ...}."""
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="peak.") as tmp:
        for runtime, dtype, precision in CONFIGS:
            key = f"{runtime}/{dtype if precision == 'fp32' else precision}"
            row = {}
            for kind, n in (("matmul", size), ("conv", 128)):
                model, x, macs = gemm_graph(kind, n, dtype == "int8")
                path = Path(tmp) / f"{kind}-{dtype}.onnx"
                onnx.save(model, path)
                sess = Backend(runtime, precision, threads=threads).session(path)
                row[kind] = gmacs(sess, x, macs, repeats)
            row["peak"] = max(row.values())
            out[key] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--size", type=int, default=1024, help="MatMul side")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    peaks = measure(args.threads, args.size, args.repeats)
    print(f"GEMM GMAC/s, {args.threads} thread(s), MatMul {args.size}^3, Conv 3x3 128->128 128x192")
    print("| runtime/precision | MatMul | Conv | peak | peak per thread |")
    print("|---|---|---|---|---|")
    for key, row in peaks.items():
        cells = [f"{row[k]:.1f}" for k in ("matmul", "conv", "peak")]
        print(f"| {key} | {' | '.join(cells)} | {row['peak'] / args.threads:.1f} |")


if __name__ == "__main__":
    main()
