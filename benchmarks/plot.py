"""A dependency-free SVG line plot (log-scale y), for benchmark figures in docs/."""

from __future__ import annotations

import math

COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")


def line_plot_svg(xs: list[float], series: dict[str, list[float]], *, title: str, xlabel: str,
                  ylabel: str, width: int = 720, height: int = 420) -> str:
    left, right, top, bottom = 70, 250, 40, 50
    pw, ph = width - left - right, height - top - bottom
    ys = [y for v in series.values() for y in v if y > 0]
    lo, hi = math.log10(min(ys)) - 0.05, math.log10(max(ys)) + 0.05
    xlo, xhi = math.log2(min(xs)), math.log2(max(xs))

    def px(x: float) -> float:
        return left + (math.log2(x) - xlo) / max(xhi - xlo, 1e-9) * pw

    def py(y: float) -> float:
        return top + (1 - (math.log10(y) - lo) / (hi - lo)) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="22" font-size="14">{title}</text>',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>']
    for x in xs:
        out.append(f'<text x="{px(x):.1f}" y="{top + ph + 18}" text-anchor="middle">{x}</text>')
    for e in range(math.floor(lo), math.ceil(hi) + 1):
        for m in (1, 2, 5):
            v = m * 10 ** e
            if lo <= math.log10(v) <= hi:
                y = py(v)
                out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" '
                           'stroke="#eee"/>')
                out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{v:g}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 12}" text-anchor="middle">{xlabel}</text>')
    out.append(f'<text x="16" y="{top + ph / 2}" transform="rotate(-90 16 {top + ph / 2})" '
               f'text-anchor="middle">{ylabel}</text>')
    for i, (name, values) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        dash = ' stroke-dasharray="6 3"' if name.startswith("ORT") else ""
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, values, strict=True))
        out.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"'
                   f'{dash}/>')
        ly = top + 14 + i * 18
        out.append(f'<line x1="{left + pw + 12}" x2="{left + pw + 36}" y1="{ly - 4}" '
                   f'y2="{ly - 4}" stroke="{colour}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{left + pw + 42}" y="{ly}">{name}</text>')
    out.append("</svg>")
    return "\n".join(out)
