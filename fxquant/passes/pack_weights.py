"""Pack once: the runtime graph calls the fast kernel directly on weights packed at convert time.

Requires: a converted GraphModule (fused and cleaned: ``fxquant.linear_*`` / ``embedding`` nodes
reading ``fxq.*`` buffers through ``get_attr``).
Guarantees: every such node whose fast kernel applies becomes one call (``runtime_calls``) of
fbgemm's dynamic / static GEMM (per-token: between the row scalings, the bias outside the pack),
fxquant's weight-only kernel (codes in output-channel panels on AVX-512, else the codes as they
are) or the int8 row gather, on a packed weight or tuple of tensors held as a plain attribute
(``_packed_<n>``, read in ~0.1 us; not a dotted buffer path through ``Module.__getattr__``).
Codes that were packed are dropped from the module (one copy of the weights in RAM) unless
something else reads them (a tied table); ``state_dict()`` rebuilds them, bit-exact, under the
same keys, and ``load_state_dict`` re-packs from the codes it is given. Each node records its
kernel in ``meta["fxquant"]["kernel"]``, or why it kept the fxquant op (``ctx.refusals``).
``portable(gm)`` rebuilds the fxquant-op graph (for ONNX export, ``torch.export``, compile).
Why: the fxquant op's own path (argument scan, packed-weight cache check, dispatcher to a Python
kernel, four dotted buffer reads) cost ~46 us around a 69 us fbgemm call at one token; torch.ao
pays ~30 us. Packing once removes all of it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from .. import ops
from ..graph import fetch_attr, meta
from ..kernels import dynamic, fbgemm, weight_only
from ..kernels.packing import block_int8, unblock_int8
from .infra import Pass, PassContext, PassResult
from .runtime_calls import (
    WITH_RELU,
    embedding_packed,
    linear_dynamic_per_token_packed,
    linear_dynamic_per_token_vnni,
    linear_dynamic_vnni,
    linear_weight_only_blocked,
    linear_weight_only_packed,
)

PASS = "pack_weights"
# gm.meta["fxquant"][PACKED_META]: {runtime attribute: PackedLinear}
PACKED_META = "packed"


@dataclass(frozen=True)
class PackedLinear:
    """How a packed call maps back onto its fxquant op and buffers."""

    op: str  # "linear_dynamic" | "linear_static"
    codes: str
    scale: str
    zero_point: str
    bias: str | None
    kept_codes: bool  # the codes buffer stayed (something else reads it)
    # "" (fbgemm's pack, or the codes aliased), "panels" (weight-only, block_int8) or "vnni"
    # (dynamic, fxquant's VNNI kernel): the runtime form of the codes.
    layout: str = ""


def _attr(node: Any) -> str | None:
    return str(node.target) if isinstance(node, fx.Node) and node.op == "get_attr" else None


def _layout(node: fx.Node) -> tuple[str, tuple[Any, ...], tuple[Any, ...]] | None:
    """(op name, (codes, scale, zero_point, bias) nodes, activation args) of a fused linear."""
    if node.target is ops.linear_dynamic:
        x, codes, scale, zp, bias, rr = node.args
        return "linear_dynamic", (codes, scale, zp, bias), (x, rr)
    if node.target is ops.linear_static:
        x, x_scale, x_zp, rr, codes, scale, zp, bias = node.args
        return "linear_static", (codes, scale, zp, bias), (x, x_scale, x_zp, rr)
    if node.target is ops.linear_dynamic_per_token:
        x, codes, scale, zp, bias, rr = node.args
        return "linear_dynamic_per_token", (codes, scale, zp, bias), (x, rr, bias)
    if node.target is ops.linear_weight_only:
        x, codes, scale, zp, bias = node.args
        return "linear_weight_only", (codes, scale, zp, bias), (x,)
    if node.target is ops.embedding:
        indices, codes, scale, zp = node.args
        return "embedding", (codes, scale, zp, None), (indices,)
    return None


def check(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """Why ``node`` keeps the fxquant op, or None when it can call its kernel directly."""
    op, weights, act = _layout(node)  # type: ignore[misc]
    if op == "embedding":
        return None if all(_attr(w) for w in weights[:3]) else "the table is not a buffer"
    if op == "linear_weight_only":
        if not weight_only.available():
            return f"the weight-only extension is not loaded: {weight_only.status().detail}"
        zp = _attr(weights[2])
        if zp is None or fetch_attr(gm, zp).any():
            return "asymmetric weight-only codes: the extension needs zero-point 0"
    elif not fbgemm.available():
        return "fbgemm is not compiled into this PyTorch build"
    if op == "linear_static" and act[3]:
        return "7-bit activations (reduce_range) need fxquant's clamp before the kernel"
    if any(_attr(w) is None for w in weights[:3]) or (
            weights[3] is not None and _attr(weights[3]) is None):
        return "weight or bias is computed in the graph, not a buffer"
    codes = fetch_attr(gm, str(_attr(weights[0])))
    if codes.dtype != torch.int8 or codes.dim() != 2 or codes.device.type != "cpu":
        return "the weight is not a 2-D int8 CPU tensor"
    return None


def _pack(gm: fx.GraphModule, entry: PackedLinear) -> Any:
    bias = None if entry.bias is None or not _bias_in_pack(entry) else fetch_attr(gm, entry.bias)
    return _pack_from(entry, fetch_attr(gm, entry.codes), fetch_attr(gm, entry.scale),
                      fetch_attr(gm, entry.zero_point), bias)


def _pack_from(entry: PackedLinear, codes: torch.Tensor, scale: torch.Tensor,
               zero_point: torch.Tensor, bias: torch.Tensor | None) -> Any:
    """The packed form of one layer: fbgemm's, or a tuple of tensors for fxquant's kernels (one
    tuple, not tensor attributes: fx would register a tensor attribute as a buffer on deepcopy)."""
    if entry.layout == "panels":
        return (block_int8(codes.contiguous()), scale, bias)
    if entry.layout == "vnni":
        return dynamic.pack(codes.contiguous(), scale, bias)
    return fbgemm.pack(codes.contiguous(), scale, zero_point, bias)


def unpack(entry: PackedLinear, packed: Any) -> torch.Tensor:
    """The int8 codes ``packed`` was built from (exact)."""
    if entry.layout == "panels":
        return unblock_int8(packed[0], packed[1].shape[0])
    if entry.layout == "vnni":
        return dynamic.unpack(packed)
    return fbgemm.unpack(packed)


def _blocked_weight_only() -> bool:
    """Weight-only layers run on the panel layout where its AVX-512 kernel runs (measured
    1.1-1.5x fp32 from 2 to 512 rows there, docs/weight_only_kernel.md); on AVX2 the row layout's
    kernels are as fast at decode and faster from 2 rows on, so codes stay as they are."""
    return weight_only.kernel_isa() == "avx512"


def _layout_for(op: str, ctx: PassContext) -> str:
    if op == "linear_weight_only":
        return "panels" if _blocked_weight_only() else ""
    # fxquant's VNNI kernel streams a weight 1.1-1.9x faster than fbgemm at 1-16 rows, 0.7-0.8x
    # as fast from ~32 rows on (docs/kernel_choice.md): for models that decode token by token.
    # Per token, it also quantizes the rows and scales them back in its own loops.
    if op in ("linear_dynamic", "linear_dynamic_per_token") and ctx.decode and dynamic.available():
        return "vnni"
    return ""


def _rewrite(
    gm: fx.GraphModule, node: fx.Node, entries: dict[str, PackedLinear], ctx: PassContext
) -> tuple[str, PackedLinear]:
    op, weights, act = _layout(node)  # type: ignore[misc]
    codes, scale, zp, bias = (_attr(w) for w in weights)
    entry = PackedLinear(op, codes, scale, zp, bias, kept_codes=False,  # type: ignore[arg-type]
                         layout=_layout_for(op, ctx))
    # A layer called twice (or a weight read by two calls) packs once.
    same = [n for n, e in entries.items()
            if (e.op, e.codes, e.scale, e.bias) == (op, codes, scale, bias)]
    name = same[0] if same else f"_packed_{len(entries)}"
    if op in _ALIASED and not entry.layout:
        return _rewrite_aliased(gm, node, name, entry)
    if not same:
        object.__setattr__(gm, name, _pack(gm, entry))
    with gm.graph.inserting_before(node), warnings.catch_warnings():
        # fx warns that a plain attribute is not a buffer: being one is the point (fast reads).
        warnings.simplefilter("ignore", UserWarning)
        packed = gm.graph.get_attr(name)
        function, args = _packed_call(entry, act, packed)
        new = gm.graph.call_function(function, args)
    kernel = _KERNELS.get(entry.layout, "fbgemm {op}").format(op=op) + ", weight packed once"
    new.meta.update({**node.meta, "fxquant": {**meta(node), "kernel": kernel, "packed": name}})
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    return name, entry


def _packed_call(entry: PackedLinear, act: tuple[Any, ...],
                 packed: fx.Node) -> tuple[Any, tuple[Any, ...]]:
    """The runtime function and its arguments for a packed layer with activation args ``act``."""
    op = entry.op
    if entry.layout == "panels":
        return linear_weight_only_blocked, (act[0], packed)
    if entry.layout == "vnni":
        per_token = op == "linear_dynamic_per_token"
        return (linear_dynamic_per_token_vnni if per_token else linear_dynamic_vnni,
                (act[0], packed, act[1]))
    if op == "linear_dynamic":
        x, rr = act
        return fbgemm.LINEAR_DYNAMIC, (x, packed, rr)
    if op == "linear_dynamic_per_token":
        x, rr, bias = act
        return linear_dynamic_per_token_packed, (x, packed, rr, bias)
    x, x_scale, x_zp, _ = act  # linear_static; reduce_range is refused by check()
    return fbgemm.LINEAR_STATIC, (x, x_scale, x_zp, packed)


def _alias(gm: fx.GraphModule, name: str, entry: PackedLinear,
           given: dict[str, torch.Tensor] | None = None) -> None:
    """Plain attributes naming the weight-only layer's buffers (codes, scale, bias): read in
    ~0.1 us where the dotted buffer path costs ~3 us per name."""
    given = given or {}

    def tensor(target: str | None) -> torch.Tensor | None:
        return None if target is None else given.get(target, fetch_attr(gm, target))

    layer: tuple[torch.Tensor | None, ...]
    if entry.op == "embedding":
        zp, scale = tensor(entry.zero_point), tensor(entry.scale)
        assert scale is not None
        layer = (tensor(entry.codes), scale.unsqueeze(1),
                 zp.unsqueeze(1) if zp is not None and zp.any() else None)
    else:
        layer = (tensor(entry.codes), tensor(entry.scale), tensor(entry.bias))
    # One tuple, not tensor attributes: fx would register a tensor attribute as a buffer on
    # deepcopy (a second state_dict entry).
    object.__setattr__(gm, name, layer)


def _bias_in_pack(entry: PackedLinear) -> bool:
    """fbgemm's per-token layers add their bias after scaling the rows back, so it stays out of
    the pack; the VNNI kernel adds it after the row scaling itself."""
    return entry.op != "linear_dynamic_per_token" or entry.layout == "vnni"


_KERNELS = {"panels": "fxquant AVX-512 weight-only int8 ({op}), output-channel panels",
            "vnni": "fxquant AVX-512 VNNI int8 GEMM ({op}), output-channel panels"}
# Runtime calls that read their layer's own buffers through one plain attribute (no packing).
_ALIASED = {
    "linear_weight_only": (lambda: linear_weight_only_packed,
                           "fxquant weight-only int8 GEMV/GEMM, rows of codes"),
    "embedding": (lambda: embedding_packed, "int8 row gather (index_select), rows dequantized"),
}


def _rewrite_aliased(
    gm: fx.GraphModule, node: fx.Node, name: str, entry: PackedLinear
) -> tuple[str, PackedLinear]:
    entry = PackedLinear(**{**entry.__dict__, "kept_codes": True})
    _alias(gm, name, entry)
    function, kernel = _ALIASED[entry.op]
    with gm.graph.inserting_before(node), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a plain attribute, on purpose
        layer = gm.graph.get_attr(name)
        new = gm.graph.call_function(function(), (node.args[0], layer))
    new.meta.update({**node.meta, "fxquant": {**meta(node), "kernel": kernel, "packed": name}})
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    return name, entry


def _drop_unread_codes(
    gm: fx.GraphModule, entries: dict[str, PackedLinear], shared: set[int]
) -> None:
    still_read = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    for name, entry in list(entries.items()):
        if entry.kept_codes:  # weight-only: the kernel reads the codes themselves
            continue
        if entry.codes in still_read or id(fetch_attr(gm, entry.codes)) in shared:
            entries[name] = PackedLinear(**{**entry.__dict__, "kept_codes": True})
            continue
        owner_name, _, buffer = entry.codes.rpartition(".")
        owner = fetch_attr(gm, owner_name) if owner_name else gm
        if buffer in owner._buffers:
            del owner._buffers[buffer]


def run_pack_weights(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Run the pass; see the module docstring for what it requires and guarantees."""
    entries: dict[str, PackedLinear] = {}
    for node in list(gm.graph.nodes):
        if _layout(node) is None:
            continue
        reason = check(gm, node)
        if reason is not None:
            meta(node)["kernel"] = f"fxquant::{node.target.__name__.split('.')[0]} ({reason})"
            ctx.refuse(PASS, node, reason)
            continue
        name, entry = _rewrite(gm, node, entries, ctx)
        entries[name] = entry
    if not entries:
        return PassResult(gm, False)
    gm.graph.eliminate_dead_code()
    _drop_unread_codes(gm, entries, ctx.shared_tensors)
    gm.meta.setdefault("fxquant", {})[PACKED_META] = entries
    gm._register_state_dict_hook(_add_unpacked_codes)
    gm._register_load_state_dict_pre_hook(_repack, with_module=True)
    return PassResult(gm, True)


def entries_of(module: torch.nn.Module) -> dict[str, PackedLinear]:
    """What ``pack_weights`` packed in ``module``, by runtime attribute name."""
    return getattr(module, "meta", {}).get("fxquant", {}).get(PACKED_META, {})


def _add_unpacked_codes(module: torch.nn.Module, state_dict: dict[str, Any], prefix: str,
                        _local_metadata: Any) -> None:
    """state_dict hook: the int8 codes under their usual keys, unpacked from the packed weight."""
    for name, entry in entries_of(module).items():
        if not entry.kept_codes:
            state_dict[prefix + entry.codes] = unpack(entry, getattr(module, name))


def _repack(module: torch.nn.Module, state_dict: dict[str, Any], prefix: str,
            *_args: Any) -> None:
    """load_state_dict pre-hook: re-pack every packed weight from the codes being loaded."""
    assign = bool(_args and isinstance(_args[0], dict) and
                  _args[0].get("assign_to_params_buffers"))
    for name, entry in entries_of(module).items():
        key = prefix + entry.codes
        if key not in state_dict:
            continue  # strict loading reports the missing key through the codes' absence
        if entry.op in _ALIASED and not entry.layout:
            # The buffers are updated in place, or (assign=True) become the loaded tensors.
            if assign or entry.op == "embedding":  # the embedding's scale alias is a view
                targets = (entry.codes, entry.scale, entry.zero_point, entry.bias)
                _alias(module, name, entry,  # type: ignore[arg-type]
                       {t: state_dict[prefix + t] for t in targets
                        if t is not None and prefix + t in state_dict})
            continue
        codes = state_dict[key] if entry.kept_codes else state_dict.pop(key)

        def given(target: str) -> torch.Tensor:
            found = state_dict.get(prefix + target)
            return fetch_attr(module, target) if found is None else found

        bias = None if entry.bias is None or not _bias_in_pack(entry) else given(entry.bias)
        object.__setattr__(module, name, _pack_from(
            entry, codes, given(entry.scale), given(entry.zero_point), bias))


def is_packed(gm: torch.nn.Module) -> bool:
    """Whether ``gm`` holds weights this pass packed."""
    return bool(entries_of(gm))


# The ops a packed runtime graph calls in place of fxquant's fused linears.
PACKED_LINEAR_OPS = (*WITH_RELU, *WITH_RELU.values(), linear_dynamic_per_token_packed,
                     linear_dynamic_per_token_vnni, linear_weight_only_packed,
                     linear_weight_only_blocked)


def verify_pack_weights(gm: fx.GraphModule) -> str | None:
    """Every fused op whose fast kernel applies was packed, and every packed attribute exists
    and is read by the graph."""
    for node in gm.graph.nodes:
        if _layout(node) is not None and check(gm, node) is None:
            return f"{node.name} could call its kernel directly but still calls the fxquant op"
    read = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    for name in entries_of(gm):
        if not hasattr(gm, name) or name not in read:
            return f"packed weight {name} is missing or not read by the graph"
    return None


PACK_WEIGHTS = Pass(PASS, run_pack_weights, verify=verify_pack_weights)
