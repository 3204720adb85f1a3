"""The geometry of a canonical ``F.conv1d`` / ``F.conv2d`` call, as fxquant's int8 conv ops take it.

``F.conv*`` accepts an int or a tuple for ``stride`` / ``padding`` / ``dilation`` and the strings
``'valid'`` / ``'same'`` for ``padding``; ``fxquant.conv_dynamic`` / ``conv_static`` take one list
per argument with one entry per spatial dimension, and symmetric padding. Used by the fusion pass
(and by BatchNorm folding, which only needs the argument positions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch.fx as fx
import torch.nn.functional as F

# Positions of F.conv1d / F.conv2d's arguments, and their defaults.
BIAS, STRIDE, PADDING, DILATION, GROUPS = 2, 3, 4, 5, 6
DEFAULTS = (None, None, None, 1, 0, 1, 1)


@dataclass(frozen=True)
class ConvGeometry:
    """A conv's stride, padding and dilation (one entry per spatial dimension; padding symmetric)
    and groups, as fxquant's int8 conv ops take them."""

    stride: list[int]
    padding: list[int]
    dilation: list[int]
    groups: int


def spatial_rank(node: fx.Node) -> int:
    """The number of spatial dimensions of a canonical conv: 1 for ``F.conv1d``, else 2."""
    return 1 if node.target is F.conv1d else 2


def conv_arg(node: fx.Node, index: int) -> object:
    """Argument ``index`` of a positional conv call, or its default."""
    return node.args[index] if len(node.args) > index else DEFAULTS[index]


def _ints(value: object, rank: int, what: str) -> list[int] | str:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value] * rank
    if isinstance(value, (tuple, list)) and all(type(v) is int for v in value):
        if len(value) == 1:
            return list(value) * rank
        if len(value) == rank:
            return list(value)
    return f"{what}={value!r} is not {rank} constant int(s)"


def _padding(value: object, kernel: Sequence[int], dilation: list[int]) -> list[int] | str:
    if value == "valid":
        return [0] * len(kernel)
    if value == "same":
        total = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
        if any(t % 2 for t in total):
            return "padding='same' pads one side more than the other (even kernel)"
        return [t // 2 for t in total]
    return _ints(value, len(kernel), "padding")


def conv_geometry(node: fx.Node, kernel: Sequence[int]) -> ConvGeometry | str:
    """The geometry of conv ``node`` whose weight has spatial ``kernel`` size, or why it cannot be
    written as the int8 ops take it."""
    rank = spatial_rank(node)
    if len(kernel) != rank:
        return f"weight has {len(kernel)} spatial dimensions, the conv {rank}"
    stride = _ints(conv_arg(node, STRIDE), rank, "stride")
    dilation = _ints(conv_arg(node, DILATION), rank, "dilation")
    groups = conv_arg(node, GROUPS)
    if isinstance(stride, str):
        return stride
    if isinstance(dilation, str):
        return dilation
    padding = _padding(conv_arg(node, PADDING), kernel, dilation)
    if isinstance(padding, str):
        return padding
    if type(groups) is not int:
        return f"groups={groups!r} is not a constant int"
    return ConvGeometry(stride, padding, dilation, groups)
