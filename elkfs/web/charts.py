"""Charts as inline SVG, drawn on the server: the lease timeline (who led when, failovers
marked) and operations per second. No script and no style attributes (the page's
Content-Security-Policy allows neither inline): presentation attributes and CSS classes
only. Pure functions of their data, so they are easy to test and cost nothing when
nobody looks.
"""

from __future__ import annotations

import time
from html import escape

LANE_H = 26
LABEL_W = 120
AXIS_H = 22


def _clock(t: float, with_seconds: bool = True) -> str:
    return time.strftime("%H:%M:%S" if with_seconds else "%H:%M", time.localtime(t))


def _ticks(start: float, end: float, count: int = 6) -> list[float]:
    span = max(end - start, 1.0)
    steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400]
    step = next((s for s in steps if span / s <= count), steps[-1])
    first = (int(start) // step + 1) * step
    return [float(t) for t in range(first, int(end) + 1, step)]


def timeline(masters: list[str], tenures: list[dict], failovers: list[dict], now: float,
             width: int = 900, min_span_s: float = 120.0) -> str:
    """One lane per master; a bar per tenure (term written in it); a dashed line at each
    failover, labelled with how the old leader's tenure ended."""
    lanes = list(masters)
    for t in tenures:
        if t["master"] not in lanes:
            lanes.append(t["master"])
    starts = [t["start"] for t in tenures]
    start = min(starts) if starts else now - min_span_s
    start = min(start, now - min_span_s)
    span = now - start
    start -= span * 0.02
    plot_w = width - LABEL_W - 10
    height = AXIS_H + LANE_H * max(1, len(lanes)) + 18

    def x(t: float) -> float:
        return LABEL_W + (t - start) / (now - start) * plot_w

    parts = [f'<svg class="chart timeline" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" role="img" aria-label="who led when">']
    for i, lane in enumerate(lanes):
        y = AXIS_H + i * LANE_H
        parts.append(f'<rect class="lane lane-{i % 2}" x="{LABEL_W}" y="{y}" width="{plot_w}" '
                     f'height="{LANE_H}"/>')
        parts.append(f'<text class="lane-label" x="{LABEL_W - 6}" y="{y + LANE_H * 0.65:.1f}" '
                     f'text-anchor="end">{escape(lane)}</text>')
    for tick in _ticks(start, now):
        tx = x(tick)
        parts.append(f'<line class="grid" x1="{tx:.1f}" y1="{AXIS_H - 4}" x2="{tx:.1f}" '
                     f'y2="{height - 18}"/>')
        parts.append(f'<text class="tick" x="{tx:.1f}" y="{AXIS_H - 8}" '
                     f'text-anchor="middle">{_clock(tick)}</text>')
    for t in tenures:
        lane = lanes.index(t["master"])
        x0 = x(max(t["start"], start))
        x1 = x(t["end"] if t["end"] is not None else now)
        y = AXIS_H + lane * LANE_H + 4
        w = max(2.0, x1 - x0)
        cls = "tenure open" if t["end"] is None else "tenure"
        end = "still leading" if t["end"] is None else \
            f"until {_clock(t['end'])} ({t['end_event'] or 'no end written'})"
        parts.append(f'<rect class="{cls}" x="{x0:.1f}" y="{y}" width="{w:.1f}" '
                     f'height="{LANE_H - 8}" rx="3"><title>{escape(t["master"])} led in term '
                     f'{t["term"]} from {_clock(t["start"])} {escape(end)}</title></rect>')
        if w > 40:
            parts.append(f'<text class="tenure-label" x="{x0 + 4:.1f}" '
                         f'y="{y + LANE_H * 0.5:.1f}">term {t["term"]}</text>')
    for f in failovers:
        fx = x(f["time"])
        kind = "planned" if f["kind"] == "step-down" else "unplanned"
        parts.append(f'<line class="failover {kind}" x1="{fx:.1f}" y1="{AXIS_H}" x2="{fx:.1f}" '
                     f'y2="{height - 16}"><title>{_clock(f["time"])} failover '
                     f'{escape(f["from"])} → {escape(f["to"])} (term {f["term"]}): '
                     f'{escape(f["kind"])}{"; " + escape(f["reason"]) if f["reason"] else ""}'
                     f'</title></line>')
        near_end = fx > width - 90  # keep the label inside the chart
        parts.append(f'<text class="failover-label {kind}" x="{fx - 3 if near_end else fx + 3:.1f}"'
                     f' y="{height - 4}" text-anchor="{"end" if near_end else "start"}">'
                     f'{escape(f["kind"])}</text>')
    nx = x(now)
    parts.append(f'<line class="now" x1="{nx:.1f}" y1="{AXIS_H - 4}" x2="{nx:.1f}" '
                 f'y2="{height - 18}"/>')
    parts.append("</svg>")
    return "".join(parts)


def ops_chart(samples: list[dict], now: float, window_s: int = 300, width: int = 900,
              height: int = 180) -> str:
    """Operations per second over the last `window_s`: an area of the total."""
    left, bottom, top = 50, 20, 10
    plot_w, plot_h = width - left - 10, height - bottom - top
    start = now - window_s
    peak = max([s["total"] for s in samples] + [1])
    scale = _nice_ceiling(peak)

    def x(t: float) -> float:
        return left + (t - start) / window_s * plot_w

    def y(v: float) -> float:
        return top + plot_h - v / scale * plot_h

    parts = [f'<svg class="chart ops" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" role="img" aria-label="operations per second">']
    for frac in (0, 0.5, 1):
        v = scale * frac
        parts.append(f'<line class="grid" x1="{left}" y1="{y(v):.1f}" x2="{width - 10}" '
                     f'y2="{y(v):.1f}"/>')
        parts.append(f'<text class="tick" x="{left - 4}" y="{y(v) + 4:.1f}" '
                     f'text-anchor="end">{v:g}</text>')
    for tick in _ticks(start, now, 5):
        parts.append(f'<text class="tick" x="{x(tick):.1f}" y="{height - 4}" '
                     f'text-anchor="middle">{_clock(tick)}</text>')
    points = [(x(s["time"]), y(s["total"])) for s in samples if s["time"] >= start]
    if points:
        line = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
        area = f"{points[0][0]:.1f},{y(0):.1f} {line} {points[-1][0]:.1f},{y(0):.1f}"
        parts.append(f'<polygon class="ops-area" points="{area}"/>')
        parts.append(f'<polyline class="ops-line" points="{line}"/>')
    else:
        parts.append(f'<text class="empty" x="{left + plot_w / 2}" y="{top + plot_h / 2}" '
                     f'text-anchor="middle">no samples yet</text>')
    parts.append("</svg>")
    return "".join(parts)


def _nice_ceiling(v: float) -> float:
    magnitude = 1.0
    while magnitude * 10 <= v:
        magnitude *= 10
    for m in (1, 2, 5, 10):
        if v <= m * magnitude:
            return m * magnitude
    return 10 * magnitude
