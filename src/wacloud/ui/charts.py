"""The overview's chart, drawn on the server as inline SVG: no script, nothing fetched."""

from __future__ import annotations

from markupsafe import Markup, escape

WIDTH, HEIGHT, PAD = 720, 180, 32


def _points(values: list[int], top: int) -> str:
    step = (WIDTH - 2 * PAD) / max(len(values) - 1, 1)
    return " ".join(f"{PAD + i * step:.1f},{HEIGHT - PAD - v / top * (HEIGHT - 2 * PAD):.1f}"
                    for i, v in enumerate(values))


def rate_chart(inbound: list[int], outbound: list[int], minutes: int) -> Markup:
    """Two lines, messages in and out per minute, oldest minute on the left."""
    top = max([*inbound, *outbound, 1])
    bottom, right = HEIGHT - PAD, WIDTH - PAD
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="messages in and out per minute, last {minutes} minutes">',
        f'<line x1="{PAD}" y1="{bottom}" x2="{right}" y2="{bottom}" class="axis"/>',
        f'<line x1="{PAD}" y1="{PAD}" x2="{right}" y2="{PAD}" class="grid"/>',
        f'<text x="{PAD - 4}" y="{PAD + 4}" text-anchor="end">{top}</text>',
        f'<text x="{PAD - 4}" y="{bottom + 4}" text-anchor="end">0</text>',
        f'<text x="{PAD}" y="{HEIGHT - 8}">-{minutes} min</text>',
        f'<text x="{right}" y="{HEIGHT - 8}" text-anchor="end">now</text>',
        f'<polyline class="in" points="{_points(inbound, top)}"/>',
        f'<polyline class="out" points="{_points(outbound, top)}"/>',
        f'<text x="{right}" y="{PAD - 12}" text-anchor="end"><tspan class="in-label">'
        f'in {sum(inbound)}</tspan> <tspan class="out-label">out {sum(outbound)}</tspan>'
        f'</text>',
        f"<title>{escape(f'in: {sum(inbound)}, out: {sum(outbound)} in {minutes} min')}"
        "</title>",
        "</svg>",
    ]
    return Markup("".join(parts))
