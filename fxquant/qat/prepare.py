"""``prepare_qat``: a trainable copy of the model whose quantizable ops carry fake quantizers.

Plain models are captured whole; Hugging Face models (and models that cannot be captured whole)
region by region, exactly as ``fxquant.prepare`` does, so QAT makes PTQ's decisions. Unlike PTQ's
shell, which reads the user's weights, the QAT model owns its parameters: it is built from a deep
copy, so neither preparing nor training it changes the user's model.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .. import passes
from ..capture import check_model
from ..config import QuantConfig
from ..errors import ConfigError
from ..fake_quantizers import ActivationFakeQuant, WeightFakeQuant
from ..graph import fetch_attr
from ..inputs import as_model_inputs, calibration_batches
from ..module_tree import set_submodule
from ..record import record_of
from ..regions.compile import region_modules

QAT_STAGE = "qat"


def _check_config(config: QuantConfig) -> None:
    """Options whose algorithms replace training with calibration-time weight edits."""
    asked = []
    if getattr(config, "weight_method", "rtn") != "rtn":
        asked.append(f"weight_method={config.weight_method!r}")
    if getattr(config, "smoothquant_alpha", None) is not None:
        asked.append(f"smoothquant_alpha={config.smoothquant_alpha}")
    if asked:
        raise ConfigError(
            f"quantization-aware training does not combine with {', '.join(asked)}: those "
            "algorithms edit the weights once from calibration statistics, QAT trains them. Use "
            "weight_method='rtn' and smoothquant_alpha=None for QAT (or PTQ with those options)."
        )


def graphs(model: nn.Module) -> list[tuple[str, fx.GraphModule]]:
    """The compiled graphs of a prepared or QAT model: ``[("", gm)]`` or its regions."""
    if isinstance(model, fx.GraphModule):
        return [("", model)]
    return region_modules(model)


def fake_quantizers(model: nn.Module) -> Iterator[WeightFakeQuant | ActivationFakeQuant]:
    """Every fake quantizer of a QAT model (a tied weight's, shared across regions, once)."""
    for module in model.modules():
        if isinstance(module, (WeightFakeQuant, ActivationFakeQuant)):
            yield module


def _share_tied(model: nn.Module) -> None:
    """One WeightFakeQuant per weight tensor across regions (GPT-2's ``wte`` / ``lm_head``): a
    learned scale must be one scale, so the tied tables stay one int8 table."""
    first: dict[tuple[int, int], WeightFakeQuant] = {}
    for _, gm in graphs(model):
        for node in gm.graph.nodes:
            module = gm.get_submodule(node.target) if node.op == "call_module" else None
            if not isinstance(module, WeightFakeQuant):
                continue
            weight = node.args[0]
            attr = weight if weight.op == "get_attr" else weight.args[0]
            tensor = fetch_attr(gm, str(attr.target))
            key = (id(tensor), int(weight.op == "get_attr"))
            set_submodule(gm, str(node.target), first.setdefault(key, module))


def _trainable(gm: fx.GraphModule) -> fx.GraphModule:
    """The graph in a plain GraphModule: the module ``torch.export`` returns refuses ``train()``."""
    plain = fx.GraphModule(gm, gm.graph, class_name=type(gm).__name__)
    plain.meta.update(gm.meta)
    return plain


def _calibrate(model: nn.Module, batches: Iterable[Any], example: Any) -> int:
    """Static mode: run ``batches`` so each activation fake quantizer's moving average starts
    from data. Only the fake quantizers are in training mode (dropout and BatchNorm are not)."""
    model.eval()
    for fq in fake_quantizers(model):
        fq.train()
    count = 0
    with torch.no_grad():
        for inputs in calibration_batches(batches, as_model_inputs(example)):
            inputs.call(model)
            count += 1
    return count


def prepare_qat(
    model: nn.Module,
    example_inputs: Any,
    *,
    config: QuantConfig | None = None,
    learnable_scales: bool = False,
    calibration: Iterable[Any] | None = None,
    progress: bool | None = None,
) -> nn.Module:
    """A trainable copy of ``model`` with fake quantization on every op PTQ would quantize.

    Args:
        model: the float model (not changed, now or by training the result).
        example_inputs: as for :func:`fxquant.quantize` (tuple, dict / tokenizer output, tensor).
        config: the scheme to train for (bits, mode, pair-safe scales, skip...); default dynamic
            int8. ``weight_method`` must be ``"rtn"`` and ``smoothquant_alpha`` None.
        learnable_scales: LSQ: weight scales (per channel) and static activation scales are
            parameters trained with the model, starting from the min-max scales.
        calibration: static mode: batches that start the activation ranges (else the first
            training batches do).

    Returns the model in training mode: a ``GraphModule``, or for Hugging Face models an instance
    of the model's own class (train it with ``labels=`` as usual). ``fxquant.convert`` gives the
    int8 model.
    """
    from .. import api  # late: the api module dispatches fxquant.convert to this package

    config = config or QuantConfig()
    _check_config(config)
    check_model(model)
    owned = copy.deepcopy(model)  # the QAT model owns its parameters
    qat = api.prepare(owned, example_inputs, config, progress=progress)
    for name, gm in graphs(qat):
        gm = passes.run_passes(gm, passes.QAT_PREPARE, passes.PassContext(config=config))
        gm.meta.setdefault("fxquant", {})["stage"] = QAT_STAGE
        if name:
            set_submodule(qat, name, gm)
        else:
            qat = _trainable(gm)
    if learnable_scales:
        for fq in fake_quantizers(qat):
            fq.learn_scale()
        _share_tied(qat)
    record = record_of(qat)
    if record is not None:
        record.stage = QAT_STAGE
    if calibration is not None and config.mode == "static":
        _calibrate(qat, calibration, example_inputs)
    return qat.train()
