"""Freeze fake quantizers: a trained QAT graph becomes the observed graph PTQ would have made.

Requires: a QAT graph (``insert_fake_quant``), trained or not; in static mode every activation
fake quantizer has seen at least one batch.
Guarantees:
  * every ``WeightFakeQuant`` call is a ``WeightObserver`` call (the scheme it was built from) on a
    ``get_attr`` weight (``torch.t(<w>)`` is read through canonicalize's transposed view again);
    a learned scale travels as the observer's ``precomputed`` codes, so lowering stores exactly
    the grid the model was trained on;
  * every static ``ActivationFakeQuant`` is an observer holding the range it learned (moving
    average, or the learned scale's grid), ``CalibrationError`` naming it if it never saw a batch;
    dynamic ones are gone (``lower_to_int8`` inserts dynamic quantization itself);
  * the graph holds no fake quantizer. Run on a copy: the QAT model itself is not changed.
Why: ``fxquant.convert`` of a trained model then runs the ordinary CONVERT passes, so the int8
model of a QAT model is built exactly as a PTQ model is, and predicts what the fake-quant model
predicted.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from ..errors import CalibrationError
from ..fake_quantizers import ActivationFakeQuant, FrozenRangeObserver, WeightFakeQuant
from ..graph import fetch_attr
from ..module_tree import set_submodule
from .functional_forms import transposed_weight
from .infra import Pass, PassContext, PassResult
from .nodes import left_over, node_arg, rewrite_module_calls, target_of


def _weight_attr(gm: fx.GraphModule, node: fx.Node) -> fx.Node:
    """The quantizer's input as a ``get_attr`` (a transposed view where it reads ``t(w)``)."""
    weight = node_arg(node, 0)
    if weight.op == "get_attr":
        return weight
    if weight.op != "call_function" or weight.target is not torch.t:
        raise CalibrationError(f"{node.target} quantizes a computed weight; not a QAT graph")
    base = node_arg(weight, 0)
    view = transposed_weight(gm, base)
    node.replace_input_with(weight, view)
    if not weight.users:
        gm.graph.erase_node(weight)
        if not base.users:
            gm.graph.erase_node(base)
    return view


def _freeze_weight(gm: fx.GraphModule, node: fx.Node, fq: WeightFakeQuant) -> None:
    weight = _weight_attr(gm, node)
    observer = fq.observer
    if fq.scale is not None:
        observer.precomputed = fq.quantize(fetch_attr(gm, target_of(weight)))
    set_submodule(gm, target_of(node), observer)


def _freeze_activation(gm: fx.GraphModule, node: fx.Node, fq: ActivationFakeQuant) -> None:
    if fq.kind != "static":
        node.replace_all_uses_with(node_arg(node, 0))
        gm.graph.erase_node(node)
        owner, _, name = target_of(node).rpartition(".")
        delattr(gm.get_submodule(owner), name)
        return
    if fq.batches == 0:
        raise CalibrationError(
            f"{fq.target} saw no data: static mode's activation ranges are learned during "
            "quantization-aware training. Run at least one training batch through the model "
            "returned by fxquant.prepare_qat (or pass calibration= to it) before fxquant.convert."
        )
    lo, hi = fq.quant_range()
    set_submodule(gm, str(node.target), FrozenRangeObserver(fq.target, lo, hi, fq.batches))


def run_freeze_fake_quant(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Run the pass; see the module docstring for what it requires and guarantees."""
    modified = rewrite_module_calls(gm, [(WeightFakeQuant, _freeze_weight),
                                         (ActivationFakeQuant, _freeze_activation)])
    return PassResult(gm, modified)


def verify_freeze_fake_quant(gm: fx.GraphModule) -> str | None:
    """Check that no ``WeightFakeQuant`` / ``ActivationFakeQuant`` is still called; the first
    violation, or None."""
    return left_over(gm, (WeightFakeQuant, ActivationFakeQuant), "fake quantizer")


FREEZE_FAKE_QUANT = Pass("freeze_fake_quant", run_freeze_fake_quant,
                         verify=verify_freeze_fake_quant)
