"""``fxquant inspect model.onnx``: what an ONNX file holds, as tables (or ``--json``)."""

from __future__ import annotations

import json
from typing import Any

from tabulate import tabulate

from .text import size as _size


def _shape(dims: list[Any]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _summary(info: dict[str, Any]) -> str:
    total = sum(info["initializer_bytes"].values()) or 1
    rows = [
        ("file", info["path"]),
        ("size on disk", _size(info["size_bytes"])),
        ("producer", info["producer"] or "-"),
        ("IR version", info["ir_version"]),
        ("opsets", ", ".join(f"{d} {v}" for d, v in info["opset"].items())),
        ("parameters", f"{info['parameters']:,}"),
        ("int8 initializers", f"{_size(info['int8_bytes'])} ({info['int8_bytes'] / total:.0%})"),
        ("float initializers", f"{_size(info['float_bytes'])} ({info['float_bytes'] / total:.0%})"),
        ("quantized tensors", info["quantized_tensors"]),
    ]
    return tabulate(rows, tablefmt="simple_outline")


def _io(info: dict[str, Any]) -> str:
    rows = [
        (kind, v["name"], v["dtype"], _shape(v["shape"]))
        for kind in ("input", "output")
        for v in info[f"{kind}s"]
    ]
    return tabulate(rows, headers=("", "name", "dtype", "shape"), tablefmt="simple_outline")


def _initializers(info: dict[str, Any]) -> str:
    rows = [(dtype, _size(n)) for dtype, n in info["initializer_bytes"].items()]
    return tabulate(rows, headers=("initializer type", "bytes"), tablefmt="simple_outline")


def _metadata(info: dict[str, Any]) -> str:
    meta = dict(info["metadata"])
    config = meta.pop("fxquant.config", None)
    tables = []
    if meta:
        tables.append(
            tabulate(sorted(meta.items()), headers=("metadata", "value"), tablefmt="simple_outline")
        )
    if isinstance(config, dict) and config:
        rows = [(k, json.dumps(v)) for k, v in sorted(config.items())]
        tables.append(tabulate(rows, headers=("QuantConfig", "value"), tablefmt="simple_outline"))
    return "\n".join(tables) if tables else "(no metadata)"


def _ops(info: dict[str, Any]) -> str:
    return tabulate(list(info["ops"].items()), headers=("op", "count"), tablefmt="simple_outline")


def inspect_onnx(path: str, as_json: bool) -> int:
    """``fxquant inspect`` on an .onnx file: print its ``onnx_info`` as tables or JSON."""
    from ..onnx_export import onnx_info

    info = onnx_info(path)
    if as_json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    for block in (_summary(info), _io(info), _initializers(info), _metadata(info), _ops(info)):
        print(block)
        print()
    return 0
