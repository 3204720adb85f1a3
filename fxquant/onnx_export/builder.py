"""A small builder for the lowered ONNX graph: ordered nodes, initializers, unique names,
shared values, and the quantization annotations collected on the way."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper


class GraphBuilder:
    """Collects the nodes of the new graph in order; every name it hands out is unused."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.initializers: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        self.nodes: list[onnx.NodeProto] = []
        # tensor name -> (scale tensor, zero-point tensor), in the order they were added
        self.annotations: dict[str, tuple[str, str]] = {}
        self._memo: dict[Hashable, Any] = {}
        # The exporter shares equal initializers through Identity nodes; see through them.
        self._aliases = {n.output[0]: n.input[0] for n in graph.node
                         if n.op_type == "Identity" and n.input[0] in self.initializers}
        self._taken: set[str] = set(self.initializers)
        self._taken.update(v.name for v in (*graph.input, *graph.output, *graph.value_info))
        for node in graph.node:
            self._taken.update((*node.input, *node.output, node.name))

    # --- names -------------------------------------------------------------------------------

    def fresh(self, base: str) -> str:
        """``base``, or ``base_1``, ``base_2``... whichever is free; reserved from then on."""
        name, i = base, 1
        while name in self._taken:
            name, i = f"{base}_{i}", i + 1
        self._taken.add(name)
        return name

    # --- values ------------------------------------------------------------------------------

    def constant(self, name: str) -> str | None:
        """The initializer that tensor ``name`` is (directly or through an Identity), or None."""
        name = self._aliases.get(name, name)
        return name if name in self.initializers else None

    def array(self, name: str) -> np.ndarray:
        """The value of the initializer tensor ``name`` is."""
        return numpy_helper.to_array(self.initializers[self.constant(name) or name])

    def initializer(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        self.initializers[name] = numpy_helper.from_array(np.ascontiguousarray(value), name)
        return name

    def node(
        self,
        op_type: str,
        inputs: Sequence[str],
        outputs: Sequence[str] | int = 1,
        *,
        base: str,
        **attrs: Any,
    ) -> list[str]:
        """Append a node; ``outputs`` is a list of names to use or a count of fresh names."""
        if isinstance(outputs, int):
            names = [self.fresh(f"{base}/{op_type}_output_{i}") for i in range(outputs)]
        else:
            names = list(outputs)
        name = self.fresh(f"{base}/{op_type}")
        node = onnx.helper.make_node(op_type, list(inputs), names, name=name, **attrs)
        self.nodes.append(node)
        return names

    def keep(self, node: onnx.NodeProto) -> None:
        """Copy a node of the traced graph into the new graph unchanged."""
        self.nodes.append(node)

    def annotate(self, tensor: str, scale: str, zero_point: str) -> None:
        self.annotations.setdefault(tensor, (scale, zero_point))

    # --- sharing -----------------------------------------------------------------------------

    def memo(self, key: Hashable) -> Any:
        """The value stored under ``key`` by :meth:`remember`, or None."""
        return self._memo.get(key)

    def remember(self, key: Hashable, value: Any) -> Any:
        self._memo[key] = value
        return value
