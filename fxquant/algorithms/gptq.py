"""GPTQ (Frantar et al., 2023): quantize a weight one input column at a time, pushing each
column's rounding error onto the columns not yet quantized, weighted by the inverse Hessian of the
layer's reconstruction error.

For ``y = x W^T`` and calibration inputs ``X``, the error ``||X W^T - X Q^T||^2`` has Hessian
``H = 2 X^T X`` with respect to each weight row. Column ``j`` is rounded, and the other columns are
moved by ``-(w_j - q_j) / [H^-1]_jj * [H^-1]_j,>j``, which is the least-squares optimal update.
As in the reference implementation:

* ``H`` is damped by ``damp * mean(diag H)`` on its diagonal; columns the calibration never saw
  (``H_jj = 0``) are set to zero and get code ``zero_point``;
* the inverse is taken through Cholesky factors (the upper factor of ``H^-1`` holds every row of
  the updates in the order they are needed);
* updates are applied lazily, ``block_size`` columns at a time;
* ``act_order`` quantizes columns in decreasing ``H_jj`` (the inputs with the most energy first).

Act-order with groups: the group parameters are computed **once, from the original weight, in the
natural column order** ("static groups"), and each column looks its group up by its original index.
So the stored codes, scales and zero-points have the plain layout (column ``j`` in group
``j // group_size``) -- no permutation index to store, no gather in the kernel, and the ONNX export
is the same as for round-to-nearest. The cost against GPTQ's dynamic groups (parameters recomputed
from the updated weights when a group starts) is that a group's range cannot follow the updates;
the codes are clamped to the grid instead.

The permutation of act-order is undone on the codes before they are returned.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .. import numerics
from .schemes import Quantized, WeightScheme


@dataclass(frozen=True)
class GptqResult:
    """GPTQ's quantized weight and the damping it needed."""
    weight: Quantized
    damp: float  # the relative damping that made H positive definite


def _inverse_hessian_factor(h: torch.Tensor, damp: float) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1``; the damping grows tenfold
    until ``H`` is positive definite."""
    mean_diag = float(torch.diag(h).mean())
    eye = torch.eye(h.shape[0], dtype=h.dtype)
    for attempt in range(6):
        d = damp * 10**attempt
        lower, info = torch.linalg.cholesky_ex(h + d * mean_diag * eye)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0:
                return upper, d
    raise ValueError("the Hessian is not positive definite even with 1e5x damping")


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """The column loop works on vectors of one output dimension: with intra-op threads, each of
    its dozen small ops pays a thread hand-off (measured 7x slower on 2 threads than on one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _quantize_block(w1, hinv1, scale1, zp1, scheme):
    """Quantize the columns of one block in order; returns (codes, scaled errors)."""
    codes = torch.zeros_like(w1)
    errors = torch.zeros_like(w1)
    for i in range(w1.shape[1]):
        w = w1[:, i]
        q = scheme.codes(w, scale1[:, i], zp1[:, i])
        dq = (q - zp1[:, i]) * scale1[:, i]
        err = (w - dq) / hinv1[i, i]
        w1[:, i:] -= err.unsqueeze(1) * hinv1[i, i:].unsqueeze(0)
        codes[:, i] = q
        errors[:, i] = err
    return codes, errors


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    scheme: WeightScheme,
    *,
    damp: float = 0.01,
    block_size: int = 128,
    act_order: bool = True,
) -> GptqResult:
    """Quantize ``weight`` [N, K] to ``scheme`` with GPTQ, given ``hessian`` [K, K]."""
    w = weight.detach().float().clone()
    h = hessian.detach().float().clone()
    k = w.shape[1]
    scale, zero_point = scheme.params(w)  # static groups: from the original weight
    scale_cols = scheme.per_column(scale, k).clone()
    zp_cols = scheme.per_column(zero_point, k).clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    perm = torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(k)
    w, h = w[:, perm], h[perm][:, perm]
    scale_cols, zp_cols = scale_cols[:, perm], zp_cols[:, perm]
    hinv, used_damp = _inverse_hessian_factor(h, damp)
    codes = torch.zeros_like(w)
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        with _one_thread():
            block_codes, errors = _quantize_block(
                w[:, i1:i2].clone(), hinv[i1:i2, i1:i2], scale_cols[:, i1:i2],
                zp_cols[:, i1:i2], scheme,
            )
        codes[:, i1:i2] = block_codes
        w[:, i2:] -= errors @ hinv[i1:i2, i2:]
    codes = codes[:, torch.argsort(perm)]
    if scheme.pair_safe:
        codes = limit_pair_sums(codes)
    return GptqResult(scheme.assemble(codes, scale, zero_point), used_damp)


def limit_pair_sums(codes: torch.Tensor) -> torch.Tensor:
    """Codes with no adjacent pair along K summing past ``PAIR_SUM_LIMIT`` in magnitude.

    Pair-safe scales guarantee this for round-to-nearest; GPTQ's updates can push a pair over
    (rarely, by a code or two). Such a pair is pulled toward zero, the excess split between its
    two codes (both have the sum's sign, and the smaller is at least the half it gives up).
    """
    c = codes.clone()
    k = c.shape[-1] - c.shape[-1] % 2
    a, b = c[..., 0:k:2], c[..., 1:k:2]
    total = a + b
    excess = (total.abs() - numerics.PAIR_SUM_LIMIT).clamp(min=0)
    sign = torch.sign(total)
    a -= sign * torch.floor(excess / 2)
    b -= sign * torch.ceil(excess / 2)
    c[..., 0:k:2], c[..., 1:k:2] = a, b
    return c


def reconstruction_error(x: torch.Tensor, weight: torch.Tensor, w_hat: torch.Tensor) -> float:
    """||x W^T - x W_hat^T||_F, the quantity GPTQ minimises."""
    return float(torch.linalg.norm(x.float() @ (weight.float() - w_hat.float()).T))
