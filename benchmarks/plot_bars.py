"""A dependency-free SVG horizontal bar chart, for accuracy figures in docs/ (matplotlib is not
installed here)."""

from __future__ import annotations

COLOURS = {"8-bit": "#1f77b4", "SmoothQuant": "#2ca02c", "4-bit": "#ff7f0e", "fp32": "#7f7f7f"}


def bar_chart_svg(bars: list[tuple[str, float, str]], *, title: str, xlabel: str, lo: float,
                  hi: float = 1.0, marks: tuple[float, ...] = (), width: int = 760) -> str:
    """``bars``: (label, value, group) from top to bottom; the x axis runs from ``lo`` to ``hi``
    and ``marks`` draws dashed reference lines (targets)."""
    left, right, top, row = 250, 60, 40, 20
    height = top + row * len(bars) + 50
    pw = width - left - right

    def px(v: float) -> float:
        return left + (min(max(v, lo), hi) - lo) / (hi - lo) * pw

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="22" font-size="14">{title}</text>']
    steps = 5
    for i in range(steps + 1):
        v = lo + (hi - lo) * i / steps
        x = px(v)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + row * len(bars)}" '
                   'stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{top + row * len(bars) + 16}" '
                   f'text-anchor="middle">{v:.3f}</text>')
    for i, (label, value, group) in enumerate(bars):
        y = top + i * row
        colour = COLOURS.get(group, "#9467bd")
        out.append(f'<rect x="{left}" y="{y + 3}" width="{px(value) - left:.1f}" '
                   f'height="{row - 6}" fill="{colour}"/>')
        out.append(f'<text x="{left - 6}" y="{y + row - 6}" text-anchor="end">{label}</text>')
        out.append(f'<text x="{px(value) + 4:.1f}" y="{y + row - 6}">{value:.4f}</text>')
    for m in marks:
        x = px(m)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top - 4}" y2="{top + row * len(bars)}" '
                   'stroke="#d62728" stroke-dasharray="4,3"/>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 10}" text-anchor="middle">{xlabel}</text>')
    out.append("</svg>")
    return "\n".join(out)
