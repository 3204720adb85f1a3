"""Each quantized layer of an exported ONNX file, runnable on its own in ONNX Runtime.

A layer is matched to the file by its int8 weight: the initializer whose codes equal the layer's
(stored transposed ``[in, out]`` for matmuls, and as uint8 ``codes + 128`` where the export chose
uint8; a tied table is stored once and told apart by what reads it: ``Gather`` for the embedding).
From the node reading the codes, the layer's nodes are followed forward while they carry the same
``<layer>/`` name prefix the exporter gives every node it writes for a layer (``builder.py``); the
last one's output is the layer's output. Its input is the activation operand of those nodes, with
the activation quantization (``DynamicQuantizeLinear``, ``QuantizeLinear -> DequantizeLinear``,
an embedding's index ``Reshape``) unwound. The nodes between the two become a model of their own,
so ONNX Runtime runs that one layer on the fp32 model's input to it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from ..graph import fetch_attr
from .layers import QuantLayer

_ACT_QUANT = ("DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear")


@dataclass
class OnnxLayer:
    """One layer cut out of the file, with an ONNX Runtime session to run it."""

    input: str
    output: str
    input_rank: int
    session: Any  # an onnxruntime.InferenceSession (onnxruntime ships no types)

    def run(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The layer's output on ``x`` (flattened to the file's rank), shaped like ``like``."""
        if x.dim() > self.input_rank:
            x = x.reshape(-1, *x.shape[x.dim() - self.input_rank + 1:]) if self.input_rank > 1 \
                else x.reshape(-1)
        (y,) = self.session.run([self.output], {self.input: x.detach().cpu().numpy()})
        return torch.from_numpy(np.asarray(y)).reshape(like.shape).to(like.dtype)


def _codes(layer: QuantLayer) -> torch.Tensor | None:
    """The int8 codes the layer's node reads (directly or through a dequantize)."""
    stack = list(layer.node.args[1:])
    while stack:
        arg = stack.pop(0)
        if isinstance(arg, (list, tuple)):
            stack[:0] = list(arg)
        elif isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
            value = fetch_attr(layer.graph_module, str(arg.target))
            if isinstance(value, torch.Tensor) and value.dtype in (torch.int8, torch.uint8) \
                    and value.dim() >= 2:
                return value
        elif isinstance(arg, torch.fx.Node) and arg.op == "call_function":
            stack[:0] = list(arg.args)
    return None


class _Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.inits = {t.name: t for t in model.graph.initializer}
        self.producer = {o: n for n in model.graph.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in model.graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.codes = {name: self._signed(t) for name, t in self.inits.items()
                      if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
                      and len(t.dims) >= 2}

    @staticmethod
    def _signed(t: onnx.TensorProto) -> np.ndarray:
        a = numpy_helper.to_array(t).astype(np.int16)
        return a - 128 if t.data_type == onnx.TensorProto.UINT8 else a

    def weight_tensors(self) -> set[str]:
        """Codes initializers and what dequantizes / transposes them."""
        out = set(self.codes)
        for n in self.model.graph.node:
            if n.op_type in ("DequantizeLinear", "Transpose") and n.input[0] in self.codes:
                out.update(n.output)
        return out


def _match(g: _Graph, layer: QuantLayer) -> onnx.NodeProto | None:
    """The node that reads ``layer``'s codes in the file."""
    codes = _codes(layer)
    if codes is None:
        return None
    c = codes.to(torch.int16).numpy()
    for name, arr in g.codes.items():
        if not (arr.shape == c.shape and np.array_equal(arr, c)) and not (
                arr.shape == c.T.shape and c.ndim == 2 and np.array_equal(arr, c.T)):
            continue
        readers = g.consumers.get(name, [])
        gathers = [n for n in readers if n.op_type == "Gather"]
        others = [n for n in readers if n.op_type != "Gather"]
        pick = gathers if layer.kind == "embedding" else others
        if pick:
            return pick[0]
    return None


def _path(g: _Graph, start: onnx.NodeProto, weights: set[str]) -> list[onnx.NodeProto]:
    prefix = start.name.split("/")[0] + "/"
    own = set(start.output) | set(start.input)
    path, node = [start], start
    while True:
        nxt = [n for o in node.output for n in g.consumers.get(o, [])
               if n.name.startswith(prefix) and n.op_type not in _ACT_QUANT[:2]
               and not any(i in weights and i not in own for i in n.input)]
        if len(nxt) != 1:
            return path
        node = nxt[0]
        own.update(node.output)
        path.append(node)


def _input(g: _Graph, path: list[onnx.NodeProto], weights: set[str]) -> str | None:
    inside = {o for n in path for o in n.output}
    for node in path:
        for tensor in node.input:
            if tensor and tensor not in g.inits and tensor not in inside and tensor not in weights:
                return _unwind(g, tensor, path[0].name.split("/")[0] + "/")
    return None


def _unwind(g: _Graph, tensor: str, prefix: str) -> str:
    while tensor in g.producer:
        p = g.producer[tensor]
        quant = p.op_type in _ACT_QUANT and p.input[0] not in g.inits
        if not quant and not (p.op_type == "Reshape" and p.name.startswith(prefix)):
            break
        tensor = p.input[0]
    return tensor


def _cut(g: _Graph, source: str, output: str, elem: int) -> onnx.ModelProto | str:
    """The nodes between ``source`` and ``output`` as a model of their own, or why not."""
    needed, nodes = {output}, []
    for node in reversed(g.model.graph.node):
        if any(o in needed for o in node.output):
            nodes.append(node)
            needed.update(i for i in node.input if i and i != source)
    produced = {o for n in nodes for o in n.output}
    loose = sorted(needed - produced - set(g.inits))
    if loose:
        return f"the layer's nodes also read {loose[:3]} (not only its input)"
    graph = onnx.helper.make_graph(
        nodes[::-1], "layer", [onnx.helper.make_tensor_value_info(source, elem, None)],
        [onnx.helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None)],
        [g.inits[n] for n in sorted(needed) if n in g.inits])
    return onnx.helper.make_model(graph, opset_imports=g.model.opset_import,
                                  ir_version=g.model.ir_version)


def _rank(g: _Graph, name: str) -> int:
    """The rank the file gives the layer's input (from shape inference), 0 when unknown."""
    for v in (*g.model.graph.input, *g.model.graph.value_info):
        if v.name == name and v.type.tensor_type.HasField("shape"):
            return len(v.type.tensor_type.shape.dim)
    return 0


def onnx_layers(path: str | Path, layers: Iterable[QuantLayer]) -> dict[str, OnnxLayer | str]:
    """For each layer (by name): its cut-out ONNX Runtime layer, or why it was not found."""
    import onnxruntime as ort

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    g = _Graph(model)
    weights = g.weight_tensors()
    out: dict[str, OnnxLayer | str] = {}
    for layer in layers:
        start = _match(g, layer)
        if start is None:
            out[layer.name] = "no initializer in the file holds this layer's int8 codes"
            continue
        path_nodes = _path(g, start, weights)
        source = _input(g, path_nodes, weights)
        if source is None:
            out[layer.name] = "could not find the layer's input tensor in the file"
            continue
        elem = onnx.TensorProto.INT64 if layer.kind == "embedding" else onnx.TensorProto.FLOAT
        sub = _cut(g, source, path_nodes[-1].output[0], elem)
        if isinstance(sub, str):
            out[layer.name] = sub
            continue
        session = ort.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"])
        out[layer.name] = OnnxLayer(source, path_nodes[-1].output[0],
                                    _rank(g, source), session)
    return out
