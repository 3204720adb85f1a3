"""Kernels behind fxquant's ops.

``reference`` is plain PyTorch math on top of :mod:`fxquant.numerics`: the definition of what each
op computes, used for parity tests and wherever no fast path exists. ``fbgemm`` holds the fast CPU
paths; it is the only module that touches ``torch.ops.quantized`` so those kernels can be replaced.
``conv`` holds the fast int8 convolutions (oneDNN, ``torch.ops.onednn``).
"""
