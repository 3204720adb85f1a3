"""The error report's bar chart: matplotlib when it is installed, else a dependency-free SVG."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .error_report import ErrorReport

COLOURS = {"fake_quant": "#1f77b4", "int8": "#ff7f0e", "onnx": "#2ca02c",
           "model_error": "#9467bd"}
LABELS = {"fake_quant": "fake quant", "int8": "int8 (PyTorch)", "onnx": "ONNX Runtime",
          "model_error": "model output, layer alone int8"}


def _series(report: ErrorReport) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for variant in COLOURS:
        values = [getattr(x, variant) for x in report.layers]
        if any(v is not None for v in values):
            out[variant] = [0.0 if v is None else 100 * (v if isinstance(v, float) else v.relative)
                            for v in values]
    return out


def error_bars(report: ErrorReport, path: Path) -> Path:
    """Horizontal bars, one group per layer (largest contribution on top), log-scale x."""
    try:
        import matplotlib
    except ImportError:
        path.write_text(_svg(report))
        return path
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = _series(report)
    names = [x.name for x in report.layers]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) * len(series) + 1.2))
    height = 0.8 / len(series)
    for i, (variant, values) in enumerate(series.items()):
        ys = [k + i * height for k in range(len(names))]
        ax.barh(ys, values, height, label=LABELS[variant], color=COLOURS[variant])
    ax.set_yticks([k + 0.4 - height / 2 for k in range(len(names))], names)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("relative error vs fp32 (%): the layer's output, and the model's")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _svg(report: ErrorReport, width: int = 760) -> str:
    series = _series(report)
    names = [x.name for x in report.layers]
    bar, gap, left, top = 9, 8, 240, 40
    group = bar * len(series) + gap
    height = top + group * len(names) + 50
    values = [v for vs in series.values() for v in vs if v > 0] or [1.0]
    lo, hi = math.floor(math.log10(min(values))), math.ceil(math.log10(max(values)))
    span = max(hi - lo, 1)
    plot_w = width - left - 30

    def px(v: float) -> float:
        return left + (math.log10(max(v, 10.0**lo)) - lo) / span * plot_w

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           '<text x="10" y="18" font-size="13">Relative error vs fp32 per layer (%): the '
           "layer's output on its fp32 input, and the model's output</text>"]
    for k in range(lo, hi + 1):
        x = px(10.0**k)
        out.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" '
                   f'y2="{top + group * len(names)}" stroke="#ddd"/>')
        out.append(f'<text x="{x:.1f}" y="{top + group * len(names) + 14}" '
                   f'text-anchor="middle">{10.0**k:g}</text>')
    for row, name in enumerate(names):
        y0 = top + row * group
        out.append(f'<text x="{left - 6}" y="{y0 + group / 2:.1f}" text-anchor="end">{name}'
                   '</text>')
        for i, (variant, vs) in enumerate(series.items()):
            w = px(vs[row]) - left
            out.append(f'<rect x="{left}" y="{y0 + i * bar}" width="{max(w, 0.5):.1f}" '
                       f'height="{bar - 1}" fill="{COLOURS[variant]}"/>')
    legend_y = top + group * len(names) + 34
    for i, variant in enumerate(series):
        x = 20 + i * 150
        out.append(f'<rect x="{x}" y="{legend_y - 9}" width="10" height="10" '
                   f'fill="{COLOURS[variant]}"/>')
        out.append(f'<text x="{x + 14}" y="{legend_y}">{LABELS[variant]}</text>')
    out.append("</svg>")
    return "\n".join(out)
