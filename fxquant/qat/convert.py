"""``fxquant.convert`` of a QAT model: freeze the fake quantizers, then lower as PTQ does."""

from __future__ import annotations

import dataclasses

import torch.fx as fx
from torch import nn

from .. import passes
from ..fake_quantizers import ActivationFakeQuant
from ..module_tree import set_submodule, share_copy
from ..record import attach, record_of, stage_of
from .prepare import QAT_STAGE, fake_quantizers, graphs


def is_qat_model(model: nn.Module) -> bool:
    """Whether ``model`` was returned by :func:`fxquant.prepare_qat`."""
    return stage_of(model) == QAT_STAGE


def _batches_seen(model: nn.Module) -> int:
    """How many batches every static activation range has seen (0 without any)."""
    counts = [fq.batches for fq in fake_quantizers(model)
              if isinstance(fq, ActivationFakeQuant) and fq.kind == "static"]
    return min(counts) if counts else 0


def convert_qat(model: nn.Module, *, progress: bool | None = None) -> nn.Module:
    """The int8 model of a trained QAT model (which is left as it was), in eval mode."""
    from .. import api  # late: api imports this module's package lazily too

    frozen = share_copy(model)  # reads the trained parameters, writes none
    seen = _batches_seen(model)
    record = record_of(frozen)
    for name, gm in graphs(frozen):
        config = record.config if record is not None else gm.meta["fxquant"]["config"]
        gm = passes.run_passes(gm, passes.QAT_FREEZE, passes.PassContext(config=config))
        gm.meta["fxquant"]["stage"] = "prepared"
        if name:
            set_submodule(frozen, name, gm)
        else:
            frozen = gm
    if isinstance(frozen, fx.GraphModule):
        if seen:
            frozen.meta["fxquant"]["calibration_batches"] = seen
    else:
        assert record is not None
        attach(frozen, dataclasses.replace(record, stage="calibrated" if seen else "prepared",
                                           calibration_batches=seen))
    return api.convert(frozen, progress=progress).eval()
