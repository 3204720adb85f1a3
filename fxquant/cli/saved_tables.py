"""``fxquant inspect FOLDER``: what an ``fxquant.save`` folder holds, read from its manifest alone
(no model is built): the model, versions, sizes, regions, layers with scheme and kernel, ties."""

from __future__ import annotations

import json
from pathlib import Path

from tabulate import tabulate

from ..serialize import Manifest, read_manifest
from .text import size


def _summary(folder: Path, m: Manifest) -> str:
    r = m.record
    by_dtype = m.weights.bytes_by_dtype
    total = sum(by_dtype.values()) or 1
    rows = [
        ("folder", str(folder)),
        ("model", f"{m.model.class_name} ({m.model.kind})"),
        ("format version", m.format_version),
        ("saved with", ", ".join(f"{k} {v}" for k, v in m.versions.items())),
        ("mode", r.config.mode),
        ("capture", r.capture if r.capture != "regions" else f"{len(r.regions)} regions"),
        ("layers", f"{len(r.quantized_layers)} int8, {len(r.float_layers)} float"),
        ("weights file", f"{m.weights.file}, {size(m.weights.size_bytes)}"),
    ]
    rows += [(f"  {dtype}", f"{size(n)} ({n / total:.0%})") for dtype, n in by_dtype.items()]
    return tabulate(rows, tablefmt="simple_outline")


def _layers(m: Manifest) -> str:
    rows = [(layer.name, layer.kind, "int8" if layer.quantized else "float",
             layer.scheme or layer.reason, layer.kernel or layer.op)
            for layer in m.record.layers]
    return tabulate(rows, headers=("layer", "kind", "", "scheme / reason", "kernel"),
                    tablefmt="simple_outline")


def _extras(m: Manifest) -> str:
    lines = []
    if m.record.tied:
        lines.append("tied (one tensor): " + "; ".join(" = ".join(t) for t in m.record.tied))
    if m.record.float_modules:
        lines += [f"float: {f.name} ({f.module_type}): {f.reason}" for f in m.record.float_modules]
    return "\n".join(lines)


def inspect_saved(folder: Path, as_json: bool) -> int:
    """``fxquant inspect`` on a saved folder: print its manifest as tables or JSON."""
    manifest = read_manifest(folder)
    if as_json:
        print(json.dumps(manifest.to_dict(), indent=2))
        return 0
    for block in (_summary(folder, manifest), _layers(manifest), _extras(manifest)):
        if block:
            print(block)
            print()
    return 0
