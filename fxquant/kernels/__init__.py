"""Kernels behind fxquant's ops.

``reference`` is plain PyTorch math on top of :mod:`fxquant.numerics`: the definition of what each
op computes, used for parity tests and wherever no fast path exists. ``fbgemm`` holds the fast CPU
paths; it is the only module that touches ``torch.ops.quantized`` so those kernels can be replaced.
``conv`` holds the fast int8 convolutions (oneDNN, ``torch.ops.onednn``). ``weight_only`` builds
and loads fxquant's C++ extension (``csrc/``: weight-only int8 / int4 kernels on rows or
output-channel panels, AVX2 and AVX-512) and ``dynamic`` is its AVX-512 VNNI int8 GEMM;
``packing`` holds the layouts they read.
"""

from __future__ import annotations

import torch


def inference_input(x: torch.Tensor) -> bool:
    """What every fast int8 kernel needs of its activation: non-empty float32 that no gradient
    flows through (the fast kernels have no backward)."""
    return x.dtype == torch.float32 and x.numel() > 0 and not x.requires_grad
