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

from .annotate import ANNOTATE, run_annotate
from .awq import AWQ, run_awq
from .calibrate import CALIBRATE as _CALIBRATE
from .calibrate import run_calibrate
from .canonicalize import CANONICALIZE, run_canonicalize
from .cleanup import CLEANUP, run_cleanup
from .drop_linear_reshapes import DROP_LINEAR_RESHAPES, run_drop_linear_reshapes
from .drop_statistics import DROP_STATISTICS, run_drop_statistics
from .fold_batchnorm import FOLD_BATCHNORM, run_fold_batchnorm
from .freeze_fake_quant import FREEZE_FAKE_QUANT, run_freeze_fake_quant
from .fuse_conv_relu import FUSE_CONV_RELU, run_fuse_conv_relu
from .fuse_dequant_matmul import FUSE_DEQUANT_MATMUL, run_fuse_dequant_matmul
from .fuse_gelu_tanh import FUSE_GELU_TANH, run_fuse_gelu_tanh
from .fuse_linear_relu import FUSE_LINEAR_RELU, run_fuse_linear_relu
from .gptq import GPTQ, run_gptq
from .infra import Pass, PassContext, PassContractError, PassFn, PassResult, run_passes
from .insert_fake_quant import INSERT_FAKE_QUANT, run_insert_fake_quant
from .insert_observers import INSERT_OBSERVERS, run_insert_observers
from .insert_statistics import INSERT_STATISTICS, run_insert_statistics
from .lower_to_int8 import LOWER_TO_INT8, run_lower_to_int8
from .pack_weights import PACK_WEIGHTS, run_pack_weights
from .portable_twin import portable, portable_model
from .smooth_quant import SMOOTH_QUANT, run_smooth_quant

# Each entry is a Pass: its name, whether it works in place, and the check of its guarantees
# (see infra.py). Region-wise capture runs PREPARE in two halves: every region is canonicalized
# and annotated before any gets observers, so a weight shared across regions (GPT-2's tied
# wte / lm_head) can be given the one scheme that suits all its users.
PREPARE_CANONICAL: tuple[Pass, ...] = (CANONICALIZE, FOLD_BATCHNORM, ANNOTATE)
PREPARE_OBSERVE: tuple[Pass, ...] = (INSERT_STATISTICS, INSERT_OBSERVERS)
PREPARE: tuple[Pass, ...] = PREPARE_CANONICAL + PREPARE_OBSERVE
CALIBRATE: tuple[Pass, ...] = (_CALIBRATE,)
CONVERT: tuple[Pass, ...] = (
    SMOOTH_QUANT, AWQ, GPTQ, DROP_STATISTICS,
    LOWER_TO_INT8, FUSE_DEQUANT_MATMUL, FUSE_CONV_RELU, CLEANUP,
)
# After conversion: the runtime form (weights packed once for the fast kernel, and the Python
# around the kernels trimmed: what a one-token decode step pays per node).
RUNTIME: tuple[Pass, ...] = (PACK_WEIGHTS, DROP_LINEAR_RESHAPES, FUSE_GELU_TANH, FUSE_LINEAR_RELU)
PIPELINE: tuple[Pass, ...] = PREPARE + CALIBRATE + CONVERT
# Quantization-aware training: the model trains between QAT_PREPARE and QAT_FREEZE.
QAT_PREPARE: tuple[Pass, ...] = (INSERT_FAKE_QUANT,)
QAT_FREEZE: tuple[Pass, ...] = (FREEZE_FAKE_QUANT,)
QAT_PIPELINE: tuple[Pass, ...] = PREPARE + QAT_PREPARE + QAT_FREEZE + CONVERT
# Every pass, once, in pipeline order.
ALL_PASSES: tuple[Pass, ...] = PREPARE + QAT_PREPARE + QAT_FREEZE + CALIBRATE + CONVERT + RUNTIME

__all__ = [
    "ALL_PASSES",
    "ANNOTATE",
    "AWQ",
    "CALIBRATE",
    "CANONICALIZE",
    "CLEANUP",
    "CONVERT",
    "DROP_LINEAR_RESHAPES",
    "DROP_STATISTICS",
    "FOLD_BATCHNORM",
    "FREEZE_FAKE_QUANT",
    "FUSE_CONV_RELU",
    "FUSE_DEQUANT_MATMUL",
    "FUSE_GELU_TANH",
    "FUSE_LINEAR_RELU",
    "GPTQ",
    "INSERT_FAKE_QUANT",
    "INSERT_OBSERVERS",
    "INSERT_STATISTICS",
    "LOWER_TO_INT8",
    "PACK_WEIGHTS",
    "PIPELINE",
    "PREPARE",
    "PREPARE_CANONICAL",
    "PREPARE_OBSERVE",
    "QAT_FREEZE",
    "QAT_PIPELINE",
    "QAT_PREPARE",
    "RUNTIME",
    "SMOOTH_QUANT",
    "Pass",
    "PassContext",
    "PassContractError",
    "PassFn",
    "PassResult",
    "portable",
    "portable_model",
    "run_annotate",
    "run_awq",
    "run_calibrate",
    "run_canonicalize",
    "run_cleanup",
    "run_drop_linear_reshapes",
    "run_drop_statistics",
    "run_fold_batchnorm",
    "run_freeze_fake_quant",
    "run_fuse_conv_relu",
    "run_fuse_dequant_matmul",
    "run_fuse_gelu_tanh",
    "run_fuse_linear_relu",
    "run_gptq",
    "run_insert_fake_quant",
    "run_insert_observers",
    "run_insert_statistics",
    "run_lower_to_int8",
    "run_pack_weights",
    "run_passes",
    "run_smooth_quant",
]
