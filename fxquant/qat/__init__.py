"""Quantization-aware training through the compiler.

    qat = fxquant.prepare_qat(model, example_inputs, config=QuantConfig(weight_bits=4))
    ...train qat with ordinary PyTorch code (a Hugging Face model: qat(**batch, labels=...))...
    qmodel = fxquant.convert(qat)            # the real int8 model, through the CONVERT passes

``prepare_qat`` runs the PREPARE passes on a copy of the model that owns its parameters and turns
the observers into fake quantizers (``passes/insert_fake_quant.py``); ``convert`` freezes them
back into observers holding what was learned (``passes/freeze_fake_quant.py``) and lowers as PTQ
does. ``distillation_loss`` is the usual loss of QAT fine-tuning against the float model.
"""

from __future__ import annotations

from ..fake_quantizers import ActivationFakeQuant, WeightFakeQuant
from .convert import convert_qat, is_qat_model
from .distill import distillation_loss
from .prepare import fake_quantizers, prepare_qat

__all__ = [
    "ActivationFakeQuant",
    "WeightFakeQuant",
    "convert_qat",
    "distillation_loss",
    "fake_quantizers",
    "is_qat_model",
    "prepare_qat",
]
