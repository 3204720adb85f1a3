"""The function an exported file computes, as a GraphModule: the export's parity reference.

The file encodes the converted GraphModule with the export's activation parameters (see
:mod:`.activation`): where the file's activations differ from the GraphModule's (8-bit where the
model used 7-bit codes), this twin uses the file's. Run under ``fxquant.ops.reference_kernels()``
it computes, in float, exactly the integer arithmetic the file describes, so ONNX Runtime's output
can be held to a tight bound against it; the GraphModule itself differs from both by its own
activation rounding.
"""

from __future__ import annotations

import copy

import torch.fx as fx

from .. import ops
from .activation import ActivationPolicy


def _retarget(node: fx.Node, policy: ActivationPolicy, qparams: dict[fx.Node, tuple]) -> None:
    args = list(node.args)
    if node.target in (ops.linear_dynamic, ops.fake_quantize_dynamic):
        index = 5 if node.target is ops.linear_dynamic else 1
        args[index] = policy.dynamic_reduce_range(bool(args[index]))
    elif node.target is ops.linear_static:
        scale, zp, rr = policy.static(args[1], args[2], bool(args[3]))
        args[1:4] = [scale, zp, rr]
    elif node.target is ops.quantize_activation:
        scale, zp, rr = policy.static(args[1], args[2], bool(args[3]))
        args[1:4] = [scale, zp, rr]
        qparams[node] = (scale, zp)
    elif node.target is ops.dequantize_activation and args[0] in qparams:
        args[1:3] = list(qparams[args[0]])
    node.args = tuple(args)


def export_reference(gm: fx.GraphModule, policy: ActivationPolicy) -> fx.GraphModule:
    """A copy of ``gm`` whose activation quantization is the exported file's."""
    twin = copy.deepcopy(gm)
    qparams: dict[fx.Node, tuple] = {}
    for node in twin.graph.nodes:
        if node.op == "call_function" and node.target in ops.ALL_OPS:
            _retarget(node, policy, qparams)
    twin.recompile()
    return twin
