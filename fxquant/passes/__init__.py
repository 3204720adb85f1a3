"""The compiler's passes, and the one place their order is declared.

    capture (fxquant.capture)      float model -> GraphModule
    canonicalize                   one functional form per quantizable op
    fold_batchnorm                 conv -> BatchNorm (inference)  =>  one conv, folded weights
    annotate                       decide what gets quantized (policy)
    insert_statistics              input statistics for SmoothQuant / AWQ / GPTQ (when enabled)
    insert_observers               weight observers; activation observers in static mode
    calibrate                      run representative batches (static mode, statistics)
    smooth_quant                   activation outliers -> weights (x / s, W * s)
    awq                            activation-aware input-channel scales (x / s, W * s)
    gptq                           weight codes with Hessian error compensation
    drop_statistics                statistics observers out of the graph
    lower_to_int8                  observers -> int8 buffers + quantize/dequantize ops
    fuse_dequant_matmul            dequantize -> matmul  =>  one fused int8 op
    fuse_conv_relu                 int8 conv -> ReLU  =>  the conv applies the ReLU
    cleanup                        dead code, unused float weights, sanity checks
    pack_weights                   runtime form: fbgemm called directly on weights packed once
    drop_linear_reshapes           x.view(-1, K) -> packed linear -> view back  =>  the call alone
    fuse_gelu_tanh                 GELU's tanh formula op by op  =>  one F.gelu(approximate='tanh')

Quantization-aware training (``fxquant.prepare_qat``, then ``fxquant.convert``) runs PREPARE, then
    insert_fake_quant              observers -> fake quantizers (trainable simulation)
and, on a copy of the trained model, before CONVERT:
    freeze_fake_quant              fake quantizers -> observers holding what was learned
"""

from __future__ import annotations

from .annotate import run_annotate
from .awq import run_awq
from .calibrate import run_calibrate
from .canonicalize import run_canonicalize
from .cleanup import run_cleanup
from .drop_linear_reshapes import run_drop_linear_reshapes
from .drop_statistics import run_drop_statistics
from .fold_batchnorm import run_fold_batchnorm
from .freeze_fake_quant import run_freeze_fake_quant
from .fuse_conv_relu import run_fuse_conv_relu
from .fuse_dequant_matmul import run_fuse_dequant_matmul
from .fuse_gelu_tanh import run_fuse_gelu_tanh
from .gptq import run_gptq
from .infra import Pass, PassContext, PassResult, run_passes
from .insert_fake_quant import run_insert_fake_quant
from .insert_observers import run_insert_observers
from .insert_statistics import run_insert_statistics
from .lower_to_int8 import run_lower_to_int8
from .pack_weights import run_pack_weights
from .smooth_quant import run_smooth_quant

# Region-wise capture runs PREPARE in two halves: every region is canonicalized and annotated
# before any gets observers, so a weight shared across regions (GPT-2's tied wte / lm_head) can be
# given the one scheme that suits all its users.
PREPARE_CANONICAL: tuple[Pass, ...] = (run_canonicalize, run_fold_batchnorm, run_annotate)
PREPARE_OBSERVE: tuple[Pass, ...] = (run_insert_statistics, run_insert_observers)
PREPARE: tuple[Pass, ...] = PREPARE_CANONICAL + PREPARE_OBSERVE
CALIBRATE: tuple[Pass, ...] = (run_calibrate,)
CONVERT: tuple[Pass, ...] = (
    run_smooth_quant, run_awq, run_gptq, run_drop_statistics,
    run_lower_to_int8, run_fuse_dequant_matmul, run_fuse_conv_relu, run_cleanup
)
# After conversion: the runtime form (weights packed once for the fast kernel, and the Python
# around the kernels trimmed: what a one-token decode step pays per node).
RUNTIME: tuple[Pass, ...] = (run_pack_weights, run_drop_linear_reshapes, run_fuse_gelu_tanh)
PIPELINE: tuple[Pass, ...] = PREPARE + CALIBRATE + CONVERT
# Quantization-aware training: the model trains between QAT_PREPARE and QAT_FREEZE.
QAT_PREPARE: tuple[Pass, ...] = (run_insert_fake_quant,)
QAT_FREEZE: tuple[Pass, ...] = (run_freeze_fake_quant,)
QAT_PIPELINE: tuple[Pass, ...] = PREPARE + QAT_PREPARE + QAT_FREEZE + CONVERT

__all__ = [
    "CALIBRATE",
    "CONVERT",
    "PIPELINE",
    "PREPARE",
    "PREPARE_CANONICAL",
    "PREPARE_OBSERVE",
    "QAT_FREEZE",
    "QAT_PIPELINE",
    "QAT_PREPARE",
    "RUNTIME",
    "Pass",
    "PassContext",
    "PassResult",
    "run_passes",
]
