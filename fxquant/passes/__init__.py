"""The compiler's passes, and the one place their order is declared.

    capture (fxquant.capture)      float model -> GraphModule
    canonicalize                   one functional form per quantizable op
    fold_batchnorm                 conv -> BatchNorm (inference)  =>  one conv, folded weights
    annotate                       decide what gets quantized (policy)
    insert_observers               weight observers; activation observers in static mode
    calibrate                      run representative batches (static mode)
    lower_to_int8                  observers -> int8 buffers + quantize/dequantize ops
    fuse_dequant_matmul            dequantize -> matmul  =>  one fused int8 op
    fuse_conv_relu                 int8 conv -> ReLU  =>  the conv applies the ReLU
    cleanup                        dead code, unused float weights, sanity checks
"""

from __future__ import annotations

from .annotate import run_annotate
from .calibrate import run_calibrate
from .canonicalize import run_canonicalize
from .cleanup import run_cleanup
from .fold_batchnorm import run_fold_batchnorm
from .fuse_conv_relu import run_fuse_conv_relu
from .fuse_dequant_matmul import run_fuse_dequant_matmul
from .infra import Pass, PassContext, PassResult, run_passes
from .insert_observers import run_insert_observers
from .lower_to_int8 import run_lower_to_int8

# Region-wise capture runs PREPARE in two halves: every region is canonicalized and annotated
# before any gets observers, so a weight shared across regions (GPT-2's tied wte / lm_head) can be
# given the one scheme that suits all its users.
PREPARE_CANONICAL: tuple[Pass, ...] = (run_canonicalize, run_fold_batchnorm, run_annotate)
PREPARE_OBSERVE: tuple[Pass, ...] = (run_insert_observers,)
PREPARE: tuple[Pass, ...] = PREPARE_CANONICAL + PREPARE_OBSERVE
CALIBRATE: tuple[Pass, ...] = (run_calibrate,)
CONVERT: tuple[Pass, ...] = (
    run_lower_to_int8, run_fuse_dequant_matmul, run_fuse_conv_relu, run_cleanup
)
PIPELINE: tuple[Pass, ...] = PREPARE + CALIBRATE + CONVERT

__all__ = [
    "CALIBRATE",
    "CONVERT",
    "PIPELINE",
    "PREPARE",
    "PREPARE_CANONICAL",
    "PREPARE_OBSERVE",
    "Pass",
    "PassContext",
    "PassResult",
    "run_passes",
]
