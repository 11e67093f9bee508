"""Between INT8 convolutions: what ort-static quantizes besides the Convs.

The phase-decomposed decoder (export.rewrites.PhaseConv) joins each former deconvolution's
phase convs by Concat -> DepthToSpace, with an IGDN between stages. By default only Convs are
quantized, and the graph loads in OpenVINO too. `int8_gdn: true` also quantizes the IGDN's
multiplies (ort_static.SCALERS) so ONNX Runtime fuses QLinearMul; the Concat and
DepthToSpace stay float either way (ort_static.MOVERS); a kept-float Conv keeps its
neighbours float.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from unittest import mock

import numpy as np
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
    with mock.patch.object(rewrites, "PHASE_MIN_CHANNELS", 0):
        return export_model(distinct_gdn_model(), tmp_path_factory.mktemp("exp") / "fp32")


def distinct_gdn_model() -> torch.nn.Module:
    """The tiny hyperprior with distinct (I)GDN betas and gammas (see phase_export)."""
    model = tiny_model()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.net.named_parameters():
            if name.endswith(("beta", "gamma")):
                param.add_(0.01 * torch.rand(param.shape, generator=gen))
    return model


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


def quantized(model: onnx.ModelProto, op: str) -> set[str]:
    """Names of the `op` nodes ORT wrapped in Q/DQ: every input dequantized, output quantized."""
    wrapped = set()
    for n in nodes(model, op):
        srcs, users = neighbours(model, n)
        if set(srcs) == {"DequantizeLinear"} and users == ["QuantizeLinear"]:
            wrapped.add(n.name)
    return wrapped


def test_only_convs_by_default(phase_export: Path, tmp_path: Path) -> None:
    float_gs = onnx.load(phase_export / "g_s.onnx")
    n_cat, n_d2s = len(nodes(float_gs, "Concat")), len(nodes(float_gs, "DepthToSpace"))
    assert n_cat == 4 and n_d2s == 4  # one per former ConvTranspose
    g_s = quantize(phase_export, tmp_path / "q")
    assert qg.float_convs(g_s) == []
    for op in ("Mul", "Concat", "DepthToSpace"):
        assert quantized(g_s, op) == set(), op


def test_int8_gdn_quantizes_the_igdn_multiplies_only(phase_export: Path, tmp_path: Path) -> None:
    float_gs = onnx.load(phase_export / "g_s.onnx")
    g_s = quantize(phase_export, tmp_path / "q", int8_gdn=True)
    assert qg.float_convs(g_s) == []
    assert quantized(g_s, "Mul") == {n.name for n in nodes(float_gs, "Mul")}  # 2 per IGDN
    assert quantized(g_s, "Concat") == quantized(g_s, "DepthToSpace") == set()


def test_ort_runs_the_igdn_multiplies_on_uint8(phase_export: Path, tmp_path: Path) -> None:
    quantize(phase_export, tmp_path / "q", int8_gdn=True)
    run = ort_optimized(tmp_path / "q" / "g_s.onnx", tmp_path)
    ops = Counter(n.op_type for n in run.graph.node)
    assert ops["QLinearConv"] == 4 * 4 + 3  # 4 phases per deconv, 3 IGDN convs
    assert ops["Mul"] == 0 and ops["QLinearMul"] == 2 * 3  # both multiplies of each IGDN
    assert ops["Concat"] == 4 and ops["QLinearConcat"] == 0


def test_kept_float_conv_keeps_its_neighbours_float(phase_export: Path, tmp_path: Path) -> None:
    float_gs = onnx.load(phase_export / "g_s.onnx")
    phase = next(n for n in qg.conv_names(float_gs) if "phases" in n)
    keep = [f"decoder:{phase}", "decoder:last"]
    g_s = quantize(phase_export, tmp_path / "q", keep_float=keep, int8_gdn=True)
    assert set(qg.float_convs(g_s)) == {phase, qg.rule_nodes(g_s, "last")[0]}
    stages = sorted({n.name.rsplit("/", 1)[0] for n in nodes(float_gs, "Mul")})
    first, middle, last = stages  # the IGDNs after stages 1, 2 and 3
    assert phase.startswith("/inner/inner.0/")  # the kept phase feeds the first IGDN
    # float: the first IGDN (the kept phase's output reaches it through Concat and
    # DepthToSpace) and the last (it feeds the kept last conv, and its x comes through the
    # DepthToSpace that also feeds its x * x); the middle one INT8
    assert quantized(g_s, "Mul") == {f"{middle}/Mul", f"{middle}/Mul_1"}
    assert last == "/inner/inner.5"
    assert first == "/inner/inner.1"


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


def test_op_lists_and_int8_gdn_is_ort_static_only() -> None:
    assert ort_static.OP_TYPES == ("Conv",) and ort_static.SCALERS == ("Mul",)
    with pytest.raises(ValueError, match="int8_gdn is an option of backend ort-static"):
        QuantParams.model_validate({"backend": "inc-static", "int8_gdn": True})


@pytest.fixture(scope="module")
def moved_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """phase_export's model exported with gdn_in_phases: each IGDN runs on its deconv's 4
    phases, between the phase Conv and the Concat."""
    with mock.patch.object(rewrites, "PHASE_MIN_CHANNELS", 0):
        folder = tmp_path_factory.mktemp("exp") / "moved"
        return export_model(distinct_gdn_model(), folder, gdn_in_phases=True)


def test_moved_igdn_squares_run_int8_without_int8_gdn(moved_export: Path, tmp_path: Path) -> None:
    """With the IGDN on the phases, each phase's x*x sits between its INT8 phase Conv and the
    INT8 normalisation Conv: ORT runs it as QLinearMul with Convs alone quantized; the last
    multiply feeds the float Concat and stays float (why int8_gdn adds nothing there)."""
    float_gs = onnx.load(moved_export / "g_s.onnx")
    muls = {n.name for n in nodes(float_gs, "Mul")}
    squares = {m for m in muls if m.endswith("/Mul")}
    assert len(squares) == 3 * 4 and all("/gdns." in m for m in squares)
    g_s = quantize(moved_export, tmp_path / "q")
    assert qg.float_convs(g_s) == [] and len(qg.conv_names(g_s)) == 4 * 4 + 3 * 4
    assert quantized(g_s, "Mul") == squares
    assert quantized(g_s, "Concat") == quantized(g_s, "DepthToSpace") == set()
    run = ort_optimized(tmp_path / "q" / "g_s.onnx", tmp_path)
    ops = Counter(n.op_type for n in run.graph.node)
    assert ops["QLinearMul"] == 3 * 4 and ops["Mul"] == 3 * 4 and ops["QLinearConcat"] == 0


# -- one symmetric int8 scale per group of phase convs (quant.phase_scales) ------------------
def phase_output_params(model: onnx.ModelProto) -> list[set[tuple[float, int, int]]]:
    """Per Concat feeding DepthToSpace: the (scale, zero point, ONNX type) of its inputs' Q."""
    inits = {i.name: i for i in model.graph.initializer}
    prod = {o: n for n in model.graph.node for o in n.output}
    groups = []
    for cat in nodes(model, "Concat"):
        quants = [prod[prod[dq].input[0]] for dq in cat.input]  # Q -> DQ -> Concat
        groups.append({(*qparams(model, q), inits[q.input[2]].data_type) for q in quants})
    return groups


def g_s_error(folder: Path, fp32: Path, y: np.ndarray) -> float:
    """RMS difference of the INT8 g_s's output from the float one's on latent `y`."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    out = []
    for path in (fp32 / "g_s.onnx", folder / "g_s.onnx"):
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        out.append(sess.run(None, {sess.get_inputs()[0].name: y})[0])
    return float(np.sqrt(np.mean((out[0] - out[1]) ** 2)))


def test_phase_convs_share_one_symmetric_int8_scale(phase_export: Path, tmp_path: Path) -> None:
    shared = quantize(phase_export, tmp_path / "shared", shared_phase_scale=True)
    per_phase = quantize(phase_export, tmp_path / "per")
    groups = phase_output_params(shared)
    assert len(groups) == 4  # one per former deconvolution, 4 phases each
    for params in groups:  # all 4 phases: the same scale, zero point 0, int8
        assert len(params) == 1 and next(iter(params))[1:] == (0, TensorProto.INT8)
    # ORT's own calibration: uint8 with a scale and zero point per phase
    assert all(
        {p[2] for p in params} == {TensorProto.UINT8} for params in phase_output_params(per_phase)
    )
    assert any(len(params) > 1 for params in phase_output_params(per_phase))
    assert qg.float_convs(shared) == []
    run = ort_optimized(tmp_path / "shared" / "g_s.onnx", tmp_path)
    assert Counter(n.op_type for n in run.graph.node)["QLinearConv"] == 4 * 4 + 3  # still fused
    # the union of the phases' ranges at int8's 255 levels: no worse than per-phase uint8
    y = (np.random.default_rng(0).standard_normal((1, 12, 6, 8)) * 2).astype(np.float32)
    err_shared = g_s_error(tmp_path / "shared", phase_export, y)
    err_per = g_s_error(tmp_path / "per", phase_export, y)
    assert err_shared <= 1.05 * err_per, (err_shared, err_per)


def test_openvino_loads_the_int8_phase_decoder(phase_export: Path, tmp_path: Path) -> None:
    """With per-phase uint8 parameters OpenVINO 2025 refuses this graph (its low-precision
    DepthToSpace pass fails on the per-channel dequantization of the Concat); one symmetric
    scale makes that dequantization a single multiply, which it carries past DepthToSpace."""
    ov = pytest.importorskip("openvino")
    quantize(phase_export, tmp_path / "q", shared_phase_scale=True)
    compiled = ov.Core().compile_model(str(tmp_path / "q" / "g_s.onnx"), "CPU")
    y = np.zeros((1, 12, 6, 8), np.float32)
    assert np.isfinite(compiled.create_infer_request().infer({0: y})[0]).all()
