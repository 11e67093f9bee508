"""The data movement between INT8 convolutions (Concat, DepthToSpace) runs on uint8.

The phase-decomposed decoder (export.rewrites.PhaseConv) joins each former deconvolution's
phase convs by Concat -> DepthToSpace. ort-static quantizes them (ort_static.MOVERS) so ONNX
Runtime fuses QLinearConcat and drops the equal-scale Q/DQ pair around DepthToSpace; a
kept-float Conv keeps its movers float.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from unittest import mock

import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from compressor.export import export_model, rewrites
from compressor.quant import QUANTIZERS, QuantParams, ort_static
from compressor.quant import graph as qg
from tests.conftest import smooth_image, tiny_model

IMAGES = [smooth_image(96, 128, i) for i in range(3)]


@pytest.fixture(scope="module")
def phase_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny hyperprior with every deconvolution phase-decomposed (N=8 is below the
    default PHASE_MIN_CHANNELS, which would give it sub-pixel convs and no Concat). Its
    (I)GDN betas and gammas are made distinct, as a trained model's are: equal ones are merged
    by the ONNX exporter behind Identity nodes, and such a weight leaves a Conv float."""
    model = tiny_model()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.net.named_parameters():
            if name.endswith(("beta", "gamma")):
                param.add_(0.01 * torch.rand(param.shape, generator=gen))
    with mock.patch.object(rewrites, "PHASE_MIN_CHANNELS", 0):
        return export_model(model, tmp_path_factory.mktemp("exp") / "fp32")


def quantize(src: Path, out: Path, **params: object) -> onnx.ModelProto:
    QUANTIZERS.get("ort-static")(src, out, QuantParams.model_validate(params), IMAGES, 1)
    return onnx.load(out / "g_s.onnx")


def nodes(model: onnx.ModelProto, op: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == op]


def neighbours(model: onnx.ModelProto, node: onnx.NodeProto) -> tuple[list[str], list[str]]:
    """Op types producing `node`'s inputs and consuming its outputs."""
    prod = {o: n.op_type for n in model.graph.node for o in n.output}
    cons = [n.op_type for n in model.graph.node if set(n.input) & set(node.output)]
    return [prod.get(i, "graph-input") for i in node.input if i], cons


def qparams(model: onnx.ModelProto, q_or_dq: onnx.NodeProto) -> tuple[float, int]:
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return float(inits[q_or_dq.input[1]]), int(inits[q_or_dq.input[2]])


def ort_optimized(path: Path, tmp: Path) -> onnx.ModelProto:
    """The graph ONNX Runtime actually runs (QDQ fusions done, CPU EP, 1 thread)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp / f"{path.stem}.opt.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return onnx.load(opts.optimized_model_filepath)


def test_movers_are_qdq_wrapped_with_shared_scales(phase_export: Path, tmp_path: Path) -> None:
    float_gs = onnx.load(phase_export / "g_s.onnx")
    n_cat, n_d2s = len(nodes(float_gs, "Concat")), len(nodes(float_gs, "DepthToSpace"))
    assert n_cat == 4 and n_d2s == 4  # one per former ConvTranspose
    g_s = quantize(phase_export, tmp_path / "q")
    assert qg.float_convs(g_s) == []
    for node in nodes(g_s, "Concat") + nodes(g_s, "DepthToSpace"):
        srcs, users = neighbours(g_s, node)
        assert set(srcs) == {"DequantizeLinear"} and len(srcs) == len(node.input), node.name
        assert users == ["QuantizeLinear"], node.name
    prod = {o: n for n in g_s.graph.node for o in n.output}
    users = {i: n for n in g_s.graph.node for i in n.input}
    for d2s in nodes(g_s, "DepthToSpace"):  # equal scale and zero point: ORT drops the pair
        assert qparams(g_s, prod[d2s.input[0]]) == qparams(g_s, users[d2s.output[0]])


def test_ort_runs_movers_on_uint8(phase_export: Path, tmp_path: Path) -> None:
    quantize(phase_export, tmp_path / "q")
    run = ort_optimized(tmp_path / "q" / "g_s.onnx", tmp_path)
    ops = Counter(n.op_type for n in run.graph.node)
    assert ops["QLinearConcat"] == 4 and ops["Concat"] == 0
    assert ops["QLinearConv"] == 4 * 4 + 3  # 4 phases per deconv, 3 IGDN convs
    for d2s in nodes(run, "DepthToSpace"):  # its input is 8-bit: no DequantizeLinear before
        srcs, _ = neighbours(run, d2s)
        assert srcs != ["DequantizeLinear"], d2s.name
    assert ops["DepthToSpace"] == 4
    assert ops["Mul"] == 0 and ops["QLinearMul"] == 2 * 3  # both multiplies of each IGDN


def test_kept_float_conv_keeps_its_movers_float(phase_export: Path, tmp_path: Path) -> None:
    float_gs = onnx.load(phase_export / "g_s.onnx")
    phase = next(n for n in qg.conv_names(float_gs) if "phases" in n)
    g_s = quantize(phase_export, tmp_path / "q", keep_float=[f"decoder:{phase}", "decoder:last"])
    assert set(qg.float_convs(g_s)) == {phase, qg.rule_nodes(g_s, "last")[0]}
    quantized = set()
    for node in nodes(g_s, "Concat") + nodes(g_s, "DepthToSpace"):
        _, users = neighbours(g_s, node)
        quantized |= {node.name.rsplit("/", 1)[0]} if users == ["QuantizeLinear"] else set()
    stages = [n.name.rsplit("/", 1)[0] for n in nodes(float_gs, "Concat")]
    # float: the kept phase's stage (its output), the last stage (the kept last conv's output)
    # and the one before it (through its IGDN, the kept conv's float input); the other INT8
    assert phase.startswith(stages[0]) and quantized == {stages[1]}


def _graph(ops: list[tuple[str, list[str], str]]) -> onnx.ModelProto:
    """A tiny graph (no weights needed: int8_movers reads only its wiring)."""
    made = [helper.make_node(op, ins, [out], name=out) for op, ins, out in ops]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 2])
    y = helper.make_tensor_value_info(ops[-1][2], TensorProto.FLOAT, None)
    return helper.make_model(helper.make_graph(made, "g", [x], [y]))


def test_int8_movers_needs_int8_on_one_side() -> None:
    model = _graph(
        [
            ("Conv", ["x"], "c1"),
            ("Conv", ["x"], "c2"),
            ("Relu", ["x"], "r"),
            ("Concat", ["c1", "c2"], "cat_int8_in"),  # both inputs INT8 conv outputs
            ("DepthToSpace", ["cat_int8_in"], "d2s_chain"),  # fed by a qualifying mover
            ("Concat", ["r", "r"], "cat_float_in"),
            ("Conv", ["cat_float_in"], "c3"),  # ... but consumed by an INT8 conv
            ("Concat", ["r", "c1"], "cat_mixed"),
            ("Mul", ["cat_mixed", "d2s_chain"], "m"),
        ]
    )
    movers = {"Concat", "DepthToSpace"}
    got = qg.int8_movers(model, {"c1", "c2", "c3"}, movers)
    assert got == {"cat_int8_in", "d2s_chain", "cat_float_in"}
    # c3 kept float: nothing on that side is 8-bit any more
    assert qg.int8_movers(model, {"c1", "c2"}, movers) == {"cat_int8_in", "d2s_chain"}


def test_op_list_is_conv_plus_movers() -> None:
    assert ("Conv", *ort_static.MOVERS, *ort_static.SCALERS) == ort_static.OP_TYPES
    assert set(ort_static.MOVERS) == {"Concat", "DepthToSpace"}
