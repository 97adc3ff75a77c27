"""Charts as inline SVG: a job's loss curves (downsampled: a page stays small
whatever the log's length), a pipeline's depends_on graph, and bars."""

from __future__ import annotations

from collections.abc import Sequence

from ftctl.controller.service.dashboard.html import STATE_COLOURS, esc, link

# a curve longer than this is drawn from the lowest and highest value of
# each of MAX_POINTS / 2 stretches of steps: its shape and its spikes stay
MAX_POINTS = 600
SERIES_COLOURS = {"train_loss": "#268bd2", "valid_loss": "#cb4b16"}


def downsample(points: Sequence[Sequence[float]], limit: int = MAX_POINTS) -> list[tuple[float, float]]:
    """[step, value] in step order, at most `limit` of them: the first, the
    last, and each bucket's minimum and maximum in step order."""
    pts = [(float(s), float(v)) for s, v in points]
    if len(pts) <= limit:
        return pts
    buckets = max(1, (limit - 2) // 2)
    inner = pts[1:-1]
    size = len(inner) / buckets
    out = [pts[0]]
    for b in range(buckets):
        chunk = inner[int(b * size):int((b + 1) * size)]
        if not chunk:
            continue
        lo, hi = min(chunk, key=lambda p: p[1]), max(chunk, key=lambda p: p[1])
        out.extend(sorted({lo, hi}))
    out.append(pts[-1])
    return out


def _num(x: float) -> str:
    return f"{x:.6g}"


def loss_chart(series: dict[str, list[list[float]]], checkpoints: Sequence[int], *, width: int = 720,
               height: int = 260) -> str:
    """Each series as a polyline (data-series, and data-points: the steps and
    values drawn), the checkpoints as dashed verticals (data-step)."""
    drawn = {name: downsample(pts) for name, pts in series.items() if pts}
    if not drawn:
        return '<p class="muted">No loss points stored for this job (yet).</p>'
    pad = 40
    xs = [p[0] for pts in drawn.values() for p in pts] + [float(c) for c in checkpoints]
    ys = [p[1] for pts in drawn.values() for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def at(x: float, y: float) -> str:
        return (f"{_num(pad + (x - x0) / (x1 - x0) * (width - 2 * pad))},"
                f"{_num(height - pad - (y - y0) / (y1 - y0) * (height - 2 * pad))}")

    parts = [f'<svg id="loss" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="loss by step">',
             f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#999"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#999"/>',
             f'<text x="{pad}" y="{height - pad + 16}" font-size="11">step {_num(x0)}</text>',
             f'<text x="{width - pad}" y="{height - pad + 16}" font-size="11" text-anchor="end">{_num(x1)}</text>',
             f'<text x="4" y="{pad}" font-size="11">{_num(y1)}</text>',
             f'<text x="4" y="{height - pad}" font-size="11">{_num(y0)}</text>']
    for step in checkpoints:
        x = at(float(step), y0).split(",")[0]
        parts.append(f'<line class="checkpoint" data-step="{int(step)}" x1="{x}" y1="{pad}" x2="{x}" '
                     f'y2="{height - pad}" stroke="#888" stroke-dasharray="3,3"/>')
    for i, (name, pts) in enumerate(drawn.items()):
        colour = SERIES_COLOURS.get(name, "#555")
        coords = " ".join(at(x, y) for x, y in pts)
        data = " ".join(f"{_num(x)}:{_num(y)}" for x, y in pts)
        parts.append(f'<polyline class="series" data-series="{esc(name)}" data-points="{data}" fill="none" '
                     f'stroke="{colour}" stroke-width="1.5" points="{coords}"/>')
        parts.append(f'<text x="{width - pad - 90}" y="{pad - 10 + 14 * i}" font-size="12" fill="{colour}">'
                     f'{esc(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _depths(edges: dict[str, list[str]]) -> dict[str, int]:
    """Each node's column: the longest chain of depends_on above it."""
    depth: dict[str, int] = {}

    def of(node: str, seen: frozenset[str] = frozenset()) -> int:
        if node not in depth:
            ups = [u for u in edges.get(node, []) if u not in seen]
            depth[node] = 1 + max((of(u, seen | {node}) for u in ups), default=-1)
        return depth[node]

    for node in edges:
        of(node)
    return depth


def pipeline_graph(edges: dict[str, list[str]], states: dict[str, tuple[int, str]]) -> str:
    """`edges`: each agent and the agents it depends on. Nodes (data-agent,
    data-state) coloured by their newest job's state; an edge (data-from,
    data-to) from what is depended on to what depends on it."""
    depth = _depths(edges)
    columns: dict[int, list[str]] = {}
    for node in sorted(depth):
        columns.setdefault(depth[node], []).append(node)
    w, h, gap_x, gap_y = 150, 36, 70, 24
    pos = {node: (20 + d * (w + gap_x), 20 + i * (h + gap_y)) for d, nodes in columns.items()
           for i, node in enumerate(nodes)}
    width = 40 + (max(columns, default=0) + 1) * (w + gap_x)
    height = 40 + max((len(n) for n in columns.values()), default=1) * (h + gap_y)
    parts = [f'<svg id="pipeline" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="depends_on graph">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
             'orient="auto"><path d="M0,0L10,5L0,10z" fill="#777"/></marker></defs>']
    for node in sorted(edges):
        for up in edges[node]:
            (ux, uy), (dx, dy) = pos[up], pos[node]
            parts.append(f'<line class="edge" data-from="{esc(up)}" data-to="{esc(node)}" x1="{ux + w}" '
                         f'y1="{uy + h // 2}" x2="{dx}" y2="{dy + h // 2}" stroke="#777" marker-end="url(#arrow)"/>')
    for node, (x, y) in sorted(pos.items()):
        job, state = states.get(node, (None, "none"))
        colour = STATE_COLOURS.get(state, "#9e9e9e")
        label = f"{node}: {state}" + (f" (job {job})" if job is not None else "")
        parts.append(f'<a href="{link("/", {"agent": node})}"><g class="node" data-agent="{esc(node)}" '
                     f'data-state="{esc(state)}"><rect x="{x}" y="{y}" width="{w}" height="{h}" rx="6" '
                     f'fill="{colour}"/><text x="{x + 8}" y="{y + 22}" font-size="12" fill="#fff">'
                     f'{esc(label)}</text></g></a>')
    parts.append("</svg>")
    return "".join(parts)


def bar(value: float, total: float, *, width: int = 240, colour: str = "#268bd2") -> str:
    """One horizontal bar: `value` of `total` (over it: red)."""
    share = 0.0 if total <= 0 else min(1.0, value / total)
    fill = "#dc322f" if total > 0 and value > total else colour
    return (f'<svg class="bar" xmlns="http://www.w3.org/2000/svg" width="{width}" height="12" '
            f'data-value="{_num(value)}" data-total="{_num(total)}"><rect width="{width}" height="12" fill="#eee"/>'
            f'<rect width="{_num(share * width)}" height="12" fill="{fill}"/></svg>')
