"""Keep and ship a quantized model: ``fxquant.save`` / ``fxquant.load`` (docs/save_load.md).

    fxquant.save(qmodel, "gpt2-int8/")            # model.safetensors + fxquant.json (+ config.json)
    qmodel = fxquant.load("gpt2-int8/")           # Hugging Face: built from config.json
    qmodel = fxquant.load("mlp-int8/", model=MLP())   # other models: pass the float skeleton

No pickle anywhere: tensors are safetensors, everything else JSON. A load rebuilds the model by
structural replay of the passes on meta weights and assigns the saved tensors: no calibration,
no fp32 weights, outputs bit-identical to the saved model's.
"""

from __future__ import annotations

from .format import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    PICKLE_SUFFIXES,
    WEIGHTS_FILE,
    Manifest,
    read_manifest,
)
from .load import load
from .save import save

__all__ = ["FORMAT_VERSION", "MANIFEST_FILE", "PICKLE_SUFFIXES", "WEIGHTS_FILE", "Manifest", "load",
           "read_manifest", "save"]
