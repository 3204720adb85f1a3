"""Group-wise weight quantization (2..8 bits) and 4-bit packing, in plain PyTorch.

Layout shared with the weight-only kernels (:mod:`fxquant.kernels.weight_only`) and meant for
GPTQ/AWQ-style quantizers built on top:

* a weight ``w`` is float ``[N, K]`` (output channels x input features, as ``nn.Linear.weight``);
* it is cut along K into ``G = K // group_size`` groups per row, each with its own float32
  ``scale[n, g]`` and uint8 ``zero_point[n, g]``;
* codes are **unsigned**, ``uint8`` in ``0 .. 2**bits - 1``, and ``w ~ (q - zero_point) * scale``.

The math is :mod:`fxquant.numerics` (round half to even, the same clamps and zero-range rule), run
on the signed range and shifted by ``2**(bits - 1)``: symmetric codes ``-(2**(bits-1) - 1) ..
2**(bits-1) - 1`` are stored as ``code + 2**(bits-1)`` with ``zero_point = 2**(bits-1)`` (8 for 4
bits: q in 1..15); asymmetric codes use the full ``0 .. 2**bits - 1`` with a per-group zero-point.

4-bit codes are packed two per byte along K, the even k in the low nibble:
``packed[n, i] = q[n, 2i] | q[n, 2i + 1] << 4``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch

from .. import numerics


class GroupwiseQuantized(NamedTuple):
    """A group-wise quantized weight (unpacked codes); unpack it as ``codes, scale, zp = ...``."""

    codes: torch.Tensor  # uint8 [N, K], 0 .. 2**bits - 1
    scale: torch.Tensor  # float32 [N, K // group_size]
    zero_point: torch.Tensor  # uint8 [N, K // group_size]


def _groups(shape: torch.Size, group_size: int) -> tuple[int, int]:
    if len(shape) != 2:
        raise ValueError(f"expected a 2-D [N, K] weight, got shape {tuple(shape)}")
    n, k = shape
    if group_size <= 0 or k % group_size:
        raise ValueError(f"K={k} must be a positive multiple of group_size={group_size}")
    return n, k // group_size


def quantize_groupwise(
    w: torch.Tensor, bits: int, group_size: int, symmetric: bool
) -> GroupwiseQuantized:
    """Quantize ``w [N, K]`` with one scale and zero-point per ``group_size`` run of K.

    Every element is within half a step of its group's grid: ``|dequantize - w| <= scale / 2``.
    An all-zero group gets scale 1 and dequantizes to exact zeros.
    """
    if not 2 <= bits <= 8:
        raise ValueError(f"bits={bits} is not supported: codes are stored in uint8 (2..8 bits)")
    n, g = _groups(w.shape, group_size)
    wg = w.detach().float().reshape(n, g, group_size)
    lo, hi = torch.aminmax(wg, dim=-1)
    scale, zero_point = numerics.weight_qparams(lo.reshape(-1), hi.reshape(-1), bits, symmetric)
    scale, zero_point = scale.reshape(n, g, 1), zero_point.reshape(n, g, 1)
    qrange = numerics.weight_qrange(bits, symmetric)
    signed = numerics.quantize(wg, scale, zero_point, qrange, torch.int16)
    offset = 2 ** (bits - 1)  # signed range -> unsigned storage
    return GroupwiseQuantized(
        codes=(signed + offset).to(torch.uint8).reshape(n, g * group_size),
        scale=scale.reshape(n, g).contiguous(),
        zero_point=(zero_point + offset).to(torch.uint8).reshape(n, g),
    )


def dequantize_groupwise(
    codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, group_size: int
) -> torch.Tensor:
    """float32 ``[N, K]``: ``(codes - zero_point) * scale`` per group (codes unpacked)."""
    n, g = _groups(codes.shape, group_size)
    if scale.shape != (n, g) or zero_point.shape != (n, g):
        raise ValueError(
            f"scale and zero_point must be [{n}, {g}], got {tuple(scale.shape)} and "
            f"{tuple(zero_point.shape)}"
        )
    # numerics.dequantize's float32 arithmetic, (float(q) - zp) * scale, done in place: PyTorch
    # broadcasts a uint8 tensor against a float one ~10x slower (measured on [3072, 768]).
    w = codes.reshape(n, g, group_size).to(torch.float32)
    w.sub_(zero_point.to(torch.float32).unsqueeze(-1)).mul_(scale.to(torch.float32).unsqueeze(-1))
    return w.reshape(n, g * group_size)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., K]`` codes in 0..15 to uint8 ``[..., K // 2]``, even k in the low nibble."""
    if codes.dtype != torch.uint8 or codes.shape[-1] % 2:
        raise ValueError(
            f"pack_int4 takes uint8 codes with an even last dimension, got {codes.dtype} "
            f"{tuple(codes.shape)}"
        )
    if codes.numel() and int(codes.max()) > 15:
        raise ValueError(f"4-bit codes must be in 0..15, got a code {int(codes.max())}")
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).contiguous()


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`pack_int4`: uint8 ``[..., K // 2]`` to codes ``[..., K]``."""
    if packed.dtype != torch.uint8:
        raise ValueError(f"unpack_int4 takes uint8, got {packed.dtype}")
    return torch.stack((packed & 0x0F, packed >> 4), dim=-1).flatten(-2)


PANEL = 16  # output channels per panel of the blocked int8 layout


def block_int8(codes: torch.Tensor) -> torch.Tensor:
    """int8 ``codes [N, K]`` in panels of 16 output channels: ``[ceil(N / 16), K, 16]`` with
    ``blocked[p, k, l] = codes[16 p + l, k]`` and zeros past N (the weight-only kernel's layout,
    like fbgemm's packing: output channels become vector lanes). Exact; undone by
    :func:`unblock_int8`."""
    n, k = _int8_shape(codes)
    out = codes.new_zeros(-(-n // PANEL), k, PANEL)
    for p0, chunk in _panel_chunks(codes, k):
        out[p0:p0 + chunk.shape[0] // PANEL] = chunk.view(-1, PANEL, k).transpose(1, 2)
    return out


def _int8_shape(codes: torch.Tensor) -> tuple[int, int]:
    if codes.dtype != torch.int8 or codes.dim() != 2:
        raise ValueError(f"expected int8 [N, K] codes, got {codes.dtype} {tuple(codes.shape)}")
    return codes.shape[0], codes.shape[1]


def _panel_chunks(codes: torch.Tensor, k_padded: int,
                  panels_per_chunk: int = 64) -> Iterator[tuple[int, torch.Tensor]]:
    """(first panel, rows of ``codes`` zero-padded to whole panels and ``k_padded`` columns), a
    bounded number of panels at a time: packing GPT-2's 38.6 MB ``lm_head`` holds ~1 MB extra,
    not a padded copy of the whole table."""
    n, k = codes.shape
    rows = panels_per_chunk * PANEL
    for r0 in range(0, n, rows):
        part = codes[r0:r0 + rows]
        whole = -(-part.shape[0] // PANEL) * PANEL
        pad = (0, k_padded - k, 0, whole - part.shape[0])
        yield r0 // PANEL, torch.nn.functional.pad(part, pad)


def unblock_int8(blocked: torch.Tensor, n: int) -> torch.Tensor:
    """The ``[N, K]`` codes that :func:`block_int8` laid out in ``blocked``."""
    panels, k, _ = blocked.shape
    return blocked.transpose(1, 2).reshape(panels * PANEL, k)[:n].contiguous()


def block_int8_vnni(codes: torch.Tensor) -> torch.Tensor:
    """int8 ``codes [N, K]`` in panels of 16 output channels with 4 consecutive k per lane (what
    one VNNI instruction multiplies): ``[ceil(N / 16), ceil(K / 4), 16, 4]``, ``blocked[p, i, l, j]
    = codes[16 p + l, 4 i + j]``, zeros past N and K. Exact; undone by :func:`unblock_int8_vnni`."""
    n, k = _int8_shape(codes)
    k4 = -(-k // 4)
    out = codes.new_zeros(-(-n // PANEL), k4, PANEL, 4)
    # Four codes of one lane as one int32: the transpose moves 4-byte words (an int8 element-wise
    # strided copy is ~4x slower: GPT-2 large took 16 s longer to quantize).
    words = out.view(torch.int32).view(-1, k4, PANEL)
    for p0, chunk in _panel_chunks(codes, k4 * 4):
        rows = chunk.contiguous().view(torch.int32).view(-1, PANEL, k4)
        words[p0:p0 + rows.shape[0]] = rows.transpose(1, 2)
    return out


def unblock_int8_vnni(blocked: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """The ``[N, K]`` codes that :func:`block_int8_vnni` laid out in ``blocked``."""
    panels, k4 = blocked.shape[:2]
    return blocked.permute(0, 2, 1, 3).reshape(panels * PANEL, k4 * 4)[:n, :k].contiguous()
