"""A region that replaced a single layer still answers ``.weight`` and ``.bias``.

Model code reads its layers' attributes: ViT casts its pixels to
``patch_embeddings.projection.weight.dtype`` on every call, others read ``.weight.device`` or
``.weight.shape``. A region that replaced one ``nn.Linear`` / ``Conv1D`` / ``nn.Conv2d`` /
``nn.Embedding`` keeps those reads working: ``weight`` is the int8 weight dequantized on access
(float32, the original layout, no copy kept), ``bias`` the float bias.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from .. import numerics
from ..kernels import reference

_SHAPE_KEY = "layer_weight_shape"


def _only(box: torch.nn.Module, suffix: str) -> torch.Tensor | None:
    found = [b for n, b in box.named_buffers() if n.endswith(suffix)]
    return found[0] if len(found) == 1 else None


def _only_in(state: dict[str, torch.Tensor], suffix: str) -> torch.Tensor | None:
    found = [t for k, t in state.items() if k.endswith(suffix)]
    return found[0] if len(found) == 1 else None


def _grouped_weight(state: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The float weight of a group-wise layer (codes two per byte, ``_w_int4``, or one,
    ``_w_uint8``; scales ``[N, K / group_size]``), or None for any other layer."""
    scale, zp = _only_in(state, "_w_scale"), _only_in(state, "_w_zp")
    for suffix, per_byte in (("_w_int4", 2), ("_w_uint8", 1)):
        codes = _only_in(state, suffix)
        if codes is not None and scale is not None and zp is not None and scale.dim() == 2:
            group_size = codes.shape[1] * per_byte // scale.shape[1]
            return reference.dequantize_weight_grouped(codes, scale, zp, group_size)
    return None


class LayerRegion(fx.GraphModule):
    """A GraphModule standing in for one layer (class kept through deepcopy)."""

    @property
    def weight(self) -> torch.Tensor:
        # state_dict(), not the buffers: a packed region rebuilds its codes there.
        state = self.state_dict()
        codes, scale, zp = (_only_in(state, s) for s in ("_w_int8", "_w_scale", "_w_zp"))
        grouped = _grouped_weight(state)
        if grouped is not None:
            w = grouped
        elif codes is None or scale is None or zp is None:
            raise AttributeError(f"{type(self).__name__} holds no single int8 weight")
        else:
            w = numerics.dequantize(codes, scale, zp, axis=0)
        shape = torch.Size(self.meta["fxquant"][_SHAPE_KEY])
        if w.shape != shape:
            w = w.t() if w.t().shape == shape else w.reshape(shape)
        return w

    @property
    def bias(self) -> torch.Tensor | None:
        return _only(self.get_submodule("fxq"), "_bias")


def as_layer_region(gm: fx.GraphModule, weight_shape: torch.Size) -> LayerRegion:
    """``gm`` as a :class:`LayerRegion` whose ``.weight`` has ``weight_shape``, the shape of the
    layer it replaced."""
    region = LayerRegion(gm, gm.graph, class_name=type(gm).__name__)
    region.meta.update(gm.meta)
    region.meta["fxquant"] = {**gm.meta.get("fxquant", {}), _SHAPE_KEY: tuple(weight_shape)}
    return region
