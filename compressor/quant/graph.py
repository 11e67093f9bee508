"""Reading ONNX graphs for quantization: which convolutions exist, which run as INT8.

A QDQ graph says "run this Conv in INT8" with DequantizeLinear nodes on its activation and
weight inputs and a QuantizeLinear on its output; ONNX Runtime then fuses the group into a
QLinearConv. A Conv whose weight is a float initializer (or whose input is not dequantized)
runs in float, whatever surrounds it.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from compressor.errors import RecipeError
from compressor.quant.config import COMPONENTS, RULES

_INT8 = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)


def load(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path))


def conv_names(model: onnx.ModelProto) -> list[str]:
    """Names of the Conv nodes, in graph (topological) order."""
    return [n.name for n in model.graph.node if n.op_type == "Conv"]


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def is_int8_conv(
    node: onnx.NodeProto,
    producers: dict[str, onnx.NodeProto],
    consumers: dict[str, list[onnx.NodeProto]],
    int8_inits: set[str],
) -> bool:
    """Dequantized activation, weight dequantized from an 8-bit initializer, quantized output."""
    x, w = (producers.get(node.input[i]) for i in (0, 1))
    weight_int8 = w is not None and w.op_type == "DequantizeLinear" and w.input[0] in int8_inits
    input_int8 = x is not None and x.op_type == "DequantizeLinear"
    users = consumers.get(node.output[0], [])
    output_int8 = bool(users) and all(u.op_type == "QuantizeLinear" for u in users)
    return weight_int8 and input_int8 and output_int8


def float_convs(model: onnx.ModelProto) -> list[str]:
    """The Conv nodes that would run in float (see the module docstring)."""
    producers, consumers = _producers(model), _consumers(model)
    int8_inits = {i.name for i in model.graph.initializer if i.data_type in _INT8}
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "Conv" and not is_int8_conv(n, producers, consumers, int8_inits)
    ]


def gdn_convs(model: onnx.ModelProto) -> list[str]:
    """The 1x1 convolutions of folded (I)GDN layers: weight named *gamma, or input x*x / |x|."""
    producers = _producers(model)
    out = []
    for n in model.graph.node:
        if n.op_type != "Conv":
            continue
        src = producers.get(n.input[0])
        squared = src is not None and (
            (src.op_type == "Mul" and len(set(src.input)) == 1) or src.op_type == "Abs"
        )
        if n.input[1].endswith("gamma") or squared:
            out.append(n.name)
    return out


def rule_nodes(model: onnx.ModelProto, rule: str) -> list[str]:
    """The Conv nodes a keep-in-float rule selects in one graph."""
    gdn = gdn_convs(model)
    if rule == "gdn":
        return gdn
    main = [n for n in conv_names(model) if n not in gdn]
    if not main:
        return []
    return [main[0]] if rule == "first" else [main[-1]]


def resolve_keep_float(
    entries: list[str],
    models: dict[str, onnx.ModelProto],
    components: dict[str, str] = COMPONENTS,
) -> dict[str, set]:
    """graph -> Conv node names to keep in float; an unknown node name is a RecipeError.
    `components`: component -> graph name in this export's kind."""
    keep: dict[str, set] = {g: set() for g in models}
    for entry in entries:
        comp, sep, what = entry.partition(":")
        targets = [components.get(comp, COMPONENTS[comp])] if sep else list(models)
        what = what if sep else entry
        for graph in targets:
            if graph not in models:
                raise RecipeError(
                    f"keep_float {entry!r}: component {comp} is not being quantized "
                    f"(quantized: {', '.join(models)})"
                )
            model = models[graph]
            if what in RULES:
                keep[graph].update(rule_nodes(model, what))
                continue
            names = conv_names(model)
            if what not in names:
                raise RecipeError(
                    f"keep_float {entry!r}: {graph} has no Conv node {what!r}; its Conv nodes: "
                    f"{', '.join(names)} (or a rule: {', '.join(RULES)})"
                )
            keep[graph].add(what)
    return keep


def int8_movers(model: onnx.ModelProto, convs: set[str], movers: set[str]) -> set[str]:
    """Names of the `movers`-type nodes that sit between INT8 convolutions: every input
    comes from a Conv of `convs` (its output is quantized already) or every consumer is one
    (its input would be quantized anyway), directly or through a chain of such movers.

    Only these are worth quantizing: the tensor is 8-bit on one side already, so running the
    mover on uint8 loses nothing, while a mover between float tensors (a kept-float Conv, an
    activation, a constant) would have them rounded to 8 bits for no MAC saved."""
    producers, consumers = _producers(model), _consumers(model)
    nodes = [n for n in model.graph.node if n.op_type in movers]
    fed: set[str] = set()
    for node in nodes:  # topological order: a chain's head is seen first
        srcs = [producers.get(name) for name in node.input if name]
        if srcs and all(s is not None and (s.name in convs or s.name in fed) for s in srcs):
            fed.add(node.name)
    feeding: set[str] = set()
    for node in reversed(nodes):  # a chain's tail first
        users = [u for out in node.output for u in consumers.get(out, [])]
        if users and all(u.name in convs or u.name in feeding for u in users):
            feeding.add(node.name)
    return fed | feeding


def chained(model: onnx.ModelProto, starts: set[str], ops: set[str]) -> set[str]:
    """Names of the `ops`-type nodes joined to a node of `starts` through a chain of such
    nodes, in either direction (what a kept-float Conv's output or input flows through)."""
    producers, consumers = _producers(model), _consumers(model)
    todo = [n for n in model.graph.node if n.name in starts]
    found: set[str] = set()
    while todo:
        node = todo.pop()
        near = [producers[i] for i in node.input if i in producers]
        near += [u for out in node.output for u in consumers.get(out, [])]
        for other in near:
            if other.op_type in ops and other.name not in found:
                found.add(other.name)
                todo.append(other)
    return found


def phase_groups(model: onnx.ModelProto) -> list[list[onnx.NodeProto]]:
    """The Conv nodes joined by each Concat that feeds DepthToSpace (the phase convs of a
    rewritten deconvolution, export.rewrites.PhaseConv), one list per Concat in input order;
    each Conv's output goes to that Concat only."""
    producers, consumers = _producers(model), _consumers(model)
    groups = []
    for node in model.graph.node:
        if node.op_type != "Concat" or len(node.input) < 2:
            continue
        users = consumers.get(node.output[0], [])
        if not users or any(u.op_type != "DepthToSpace" for u in users):
            continue
        convs = [producers.get(name) for name in node.input]
        if all(
            c is not None and c.op_type == "Conv" and len(consumers[c.output[0]]) == 1
            for c in convs
        ):
            groups.append([c for c in convs if c is not None])
    return groups
