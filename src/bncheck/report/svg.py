"""A tiny inline-SVG plotting helper for the HTML report: bar, scatter, line and heat-map charts.

Every function returns one `<svg>` element as text, ready to be embedded in an HTML page (no external
resources, no script). Values may be floats or the strings "inf", "-inf" and "nan" of the results document.
Non-finite values are drawn, never dropped silently: +Inf is pinned to the top edge with an "inf" marker,
NaN to the bottom edge with a "NaN" marker; on a log axis, zeros and values below the axis floor sit on the
floor with a hollow marker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import Any, Iterable, Sequence

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#7f7f7f", "#bcbd22")
BAD, GOOD, INK, GRID, MUTED = "#c5221f", "#2e7d32", "#1d1d1f", "#e3e3e8", "#6e6e73"


def num(x: Any) -> float:
    """A float from a number or one of the strings 'inf', '-inf', 'nan' (anything else: NaN)."""
    if isinstance(x, bool) or x is None:
        return math.nan
    if isinstance(x, (int, float)):
        return float(x)
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def fmt(x: Any, digits: int = 3) -> str:
    """Short text for a number: `digits` significant digits, exponents as 'e4'/'e-5', 'inf'/'NaN' for non-finite values."""
    v = num(x)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    s = f"{v:.{digits}g}"
    if "e" in s:
        mant, exp = s.split("e")
        s = f"{mant}e{int(exp)}"
    return s


def _t(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


# ---- scales ---------------------------------------------------------------------------------------
@dataclass
class Scale:
    """Maps data values to pixels on one axis (linear or log10)."""

    lo: float
    hi: float
    p0: float  # pixel of lo
    p1: float  # pixel of hi
    log: bool = False

    def __call__(self, v: float) -> float:
        if self.log:
            v = math.log10(max(v, self.lo))
            a, b = math.log10(self.lo), math.log10(self.hi)
        else:
            a, b = self.lo, self.hi
        f = 0.5 if b == a else (v - a) / (b - a)
        return self.p0 + f * (self.p1 - self.p0)

    def ticks(self, n: int = 5) -> list[float]:
        """Round tick positions: powers of ten on a log axis, 1-2-5 steps on a linear one."""
        if self.log:
            a, b = math.floor(math.log10(self.lo)), math.ceil(math.log10(self.hi))
            step = max(1, math.ceil((b - a) / 7))
            return [10.0 ** k for k in range(a, b + 1, step) if self.lo * 0.999 <= 10.0 ** k <= self.hi * 1.001]
        span = self.hi - self.lo
        if span <= 0:
            return [self.lo]
        raw = span / n
        mag = 10 ** math.floor(math.log10(raw))
        step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
        first = math.ceil(self.lo / step) * step
        out, k = [], 0
        while first + k * step <= self.hi + step * 1e-9 and k < 50:
            out.append(first + k * step)
            k += 1
        return out


def _log_range(values: Iterable[float], include: Iterable[float] = ()) -> tuple[float, float]:
    pos = [v for v in list(values) + list(include) if math.isfinite(v) and v > 0]
    if not pos:
        return 0.1, 10.0
    lo, hi = min(pos), max(pos)
    lo = 10.0 ** math.floor(math.log10(lo))
    hi = 10.0 ** math.ceil(math.log10(hi))
    if hi <= lo:
        hi = lo * 10
    if hi / lo < 100:  # at least two decades, so the axis has ticks
        lo, hi = lo / 10 if hi / lo < 10 else lo, hi * 10
    return max(lo, 1e-300), hi


def _lin_range(values: Iterable[float], include: Iterable[float] = ()) -> tuple[float, float]:
    fin = [v for v in list(values) + list(include) if math.isfinite(v)]
    if not fin:
        return 0.0, 1.0
    lo, hi = min(fin), max(fin)
    if lo == hi:
        pad = abs(lo) * 0.05 or 1.0
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.06
    return lo - pad, hi + pad


# ---- the frame ------------------------------------------------------------------------------------
class _Frame:
    """An SVG canvas with a plot area, axes, grid lines and labels."""

    def __init__(self, width: int, height: int, title: str, kind: str, left: int = 64, right: int = 16,
                 top: int = 30, bottom: int = 46, legend: Sequence[tuple[str, str, str]] = ()) -> None:
        self.legend = list(legend)
        # the legend shares the title row when both fit, and gets a row of its own otherwise
        self.legend_row = 14.0
        if legend and left + 7.0 * len(title) + 24 + _legend_width(self.legend) > width - right:
            self.legend_row = 32.0
            height += 18
            top += 18
        self.w, self.h, self.title, self.kind = width, height, title, kind
        self.x0, self.x1, self.y0, self.y1 = left, width - right, height - bottom, top  # y0 = bottom pixel
        self.parts: list[str] = []

    def add(self, s: str) -> None:
        self.parts.append(s)

    def text(self, x: float, y: float, s: str, anchor: str = "middle", size: int = 11, color: str = INK,
             extra: str = "") -> None:
        self.add(f'<text x="{_t(x)}" y="{_t(y)}" text-anchor="{anchor}" font-size="{size}" fill="{color}"{extra}>'
                 f"{escape(s)}</text>")

    def yaxis(self, sy: Scale, label: str) -> None:
        for v in sy.ticks():
            p = sy(v)
            self.add(f'<line x1="{self.x0}" x2="{self.x1}" y1="{_t(p)}" y2="{_t(p)}" stroke="{GRID}"/>')
            self.text(self.x0 - 5, p + 3.5, fmt(v), anchor="end", size=10, color=MUTED)
        self.text(14, (self.y0 + self.y1) / 2, label, size=11, color=MUTED,
                  extra=f' transform="rotate(-90 14 {_t((self.y0 + self.y1) / 2)})"')

    def xaxis_numeric(self, sx: Scale, label: str) -> None:
        for v in sx.ticks():
            p = sx(v)
            self.add(f'<line x1="{_t(p)}" x2="{_t(p)}" y1="{self.y1}" y2="{self.y0}" stroke="{GRID}"/>')
            self.text(p, self.y0 + 14, fmt(v), size=10, color=MUTED)
        self.text((self.x0 + self.x1) / 2, self.h - 8, label, size=11, color=MUTED)

    def hline(self, sy: Scale, v: float, label: str, color: str = BAD) -> None:
        """A dashed reference line (named in the legend, and in its tooltip)."""
        p = sy(v)
        self.add(f'<line class="ref" x1="{self.x0}" x2="{self.x1}" y1="{_t(p)}" y2="{_t(p)}" stroke="{color}" '
                 f'stroke-width="1.5" stroke-dasharray="6 4"><title>{escape(label)}</title></line>')

    def svg(self) -> str:
        """The finished element."""
        out = [f'<svg class="chart" data-chart="{escape(self.kind)}" viewBox="0 0 {self.w} {self.h}" '
               f'width="{self.w}" height="{self.h}" role="img" aria-label="{escape(self.title)}" '
               'font-family="-apple-system, Segoe UI, Roboto, Arial, Liberation Sans, sans-serif">',
               f"<title>{escape(self.title)}</title>",
               f'<rect x="{self.x0}" y="{self.y1}" width="{self.x1 - self.x0}" height="{self.y0 - self.y1}" '
               f'fill="#fff" stroke="#c7c7cc"/>']
        out += self.parts
        out.append(f'<text x="{self.x0}" y="18" font-size="12.5" font-weight="600" fill="{INK}">'
                   f"{escape(self.title)}</text>")
        x, cy = self.x1 - _legend_width(self.legend), self.legend_row
        for label, color, style in self.legend:  # right-aligned legend entries (label, colour, line|dash|dot|box)
            if style == "box":
                out.append(f'<rect x="{_t(x)}" y="{_t(cy - 5)}" width="12" height="10" fill="{color}"/>')
            elif style == "dot":
                out.append(f'<circle cx="{_t(x + 6)}" cy="{_t(cy)}" r="3.5" fill="{color}"/>')
            else:
                dash = ' stroke-dasharray="5 3"' if style == "dash" else ""
                out.append(f'<line x1="{_t(x)}" x2="{_t(x + 16)}" y1="{_t(cy)}" y2="{_t(cy)}" stroke="{color}" '
                           f'stroke-width="2"{dash}/>')
            out.append(f'<text x="{_t(x + 20)}" y="{_t(cy + 4)}" font-size="11" fill="{MUTED}">{escape(label)}</text>')
            x += _legend_entry_width(label)
        out.append("</svg>")
        return "".join(out)


def _legend_entry_width(label: str) -> float:
    return 6.0 * len(label) + 32


def _legend_width(legend: Sequence[tuple[str, str, str]]) -> float:
    return sum(_legend_entry_width(label) for label, _, _ in legend)


def _marker(v: float, sy: Scale, floor_at: float | None) -> tuple[float, str]:
    """Pixel and marker kind for a value: 'inf' (top), 'nan' (bottom), 'floor' (below the log floor) or ''."""
    if math.isnan(v):
        return sy.p0, "nan"
    if math.isinf(v):
        return (sy.p1, "inf") if v > 0 else (sy.p0, "floor")
    if floor_at is not None and v < floor_at:
        return sy.p0, "floor"
    return sy(v), ""


# ---- charts ---------------------------------------------------------------------------------------
def bar_chart(values: Sequence[Any], *, labels: Sequence[str] | None = None, title: str = "", xlabel: str = "",
              ylabel: str = "", log: bool = True, bound: float | None = 1.0, bound_label: str = "bound",
              kind: str = "bars", highlight: Sequence[int] = (), width: int = 640, height: int = 260) -> str:
    """One bar per value (e.g. error/bound per channel); bars above `bound` are red, the others green; `highlight`
    indexes get an outline (data-highlight names the index)."""
    vals = [num(v) for v in values]
    labels = list(labels) if labels is not None else [str(i) for i in range(len(vals))]
    legend = ([(f"over the {bound_label}", BAD, "box"), ("within", GOOD, "box"),
               (f"{bound_label} = {fmt(bound)}", BAD, "dash")] if bound is not None else [])
    f = _Frame(width, height, title, kind, legend=legend)
    extra = [bound] if bound is not None else []
    if log:
        lo, hi = _log_range(vals, extra)
        sy = Scale(lo, hi, f.y0, f.y1, log=True)
    else:
        lo, hi = _lin_range(vals, extra + [0.0])
        sy = Scale(min(lo, 0.0), hi, f.y0, f.y1)
    f.yaxis(sy, ylabel)
    n = max(len(vals), 1)
    slot = (f.x1 - f.x0) / n
    bw = max(1.0, min(slot * 0.72, 40))
    base = f.y0 if log else sy(0.0)
    every = max(1, math.ceil(n / 32))
    for i, v in enumerate(vals):
        cx = f.x0 + slot * (i + 0.5)
        p, mark = _marker(v, sy, lo if log else None)
        over = bound is not None and (math.isnan(v) or v > bound)
        color = BAD if over else GOOD
        tip = f"{labels[i]}: {fmt(v)}" + (f" ({'over' if over else 'within'} the {bound_label})" if bound is not None else "")
        if mark in ("inf", "nan"):
            f.add(f'<rect x="{_t(cx - bw / 2)}" y="{f.y1}" width="{_t(bw)}" height="{f.y0 - f.y1}" fill="{BAD}" '
                  f'fill-opacity="0.25" stroke="{BAD}" stroke-dasharray="3 2"><title>{escape(tip)}</title></rect>')
            f.text(cx, f.y1 + 11, "inf" if mark == "inf" else "NaN", size=9, color=BAD)
        elif mark == "floor":
            f.add(f'<circle cx="{_t(cx)}" cy="{_t(f.y0 - 3)}" r="2.5" fill="none" stroke="{MUTED}">'
                  f"<title>{escape(tip)}</title></circle>")
        else:
            top, bottom = min(p, base), max(p, base)
            f.add(f'<rect x="{_t(cx - bw / 2)}" y="{_t(top)}" width="{_t(bw)}" height="{_t(max(bottom - top, 0.8))}" '
                  f'fill="{color}"><title>{escape(tip)}</title></rect>')
        if i in highlight:
            f.add(f'<rect class="highlight" data-highlight="{i}" x="{_t(cx - slot / 2 + 0.5)}" y="{f.y1}" '
                  f'width="{_t(max(slot - 1, 1))}" height="{f.y0 - f.y1}" fill="none" stroke="{INK}" '
                  f'stroke-width="1.2" stroke-dasharray="2 2"/>')
        if i % every == 0:
            f.text(cx, f.y0 + 13, labels[i], size=10, color=MUTED)
    f.text((f.x0 + f.x1) / 2, f.h - 8, xlabel, size=11, color=MUTED)
    if bound is not None:
        f.hline(sy, bound, f"{bound_label} = {fmt(bound)}")
    return f.svg()


def scatter_chart(points: Sequence[tuple[Any, Any, str]], *, title: str = "", xlabel: str = "", ylabel: str = "",
                  logx: bool = True, logy: bool = True, bound: float | None = 1.0, bound_label: str = "bound",
                  highlight: Sequence[int] = (), kind: str = "scatter", width: int = 640, height: int = 280) -> str:
    """Points (x, y, label); points above `bound` red. `highlight` indexes get a ring."""
    xs, ys = [num(p[0]) for p in points], [num(p[1]) for p in points]
    legend = ([("over the " + bound_label, BAD, "dot"), ("within", GOOD, "dot"),
               (f"{bound_label} = {fmt(bound)}", BAD, "dash")] if bound is not None else [])
    f = _Frame(width, height, title, kind, legend=legend)
    extra = [bound] if bound is not None else []
    xlo, xhi = _log_range(xs) if logx else _lin_range(xs)
    ylo, yhi = _log_range(ys, extra) if logy else _lin_range(ys, extra)
    sx = Scale(xlo, xhi, f.x0 + 8, f.x1 - 8, log=logx)
    sy = Scale(ylo, yhi, f.y0, f.y1, log=logy)
    f.yaxis(sy, ylabel)
    f.xaxis_numeric(sx, xlabel)
    if bound is not None:
        f.hline(sy, bound, f"{bound_label} = {fmt(bound)}")
    for i, ((_, _, label), x, y) in enumerate(zip(points, xs, ys)):
        if not math.isfinite(x) or (logx and x <= 0):
            continue  # no x position; the caller lists these
        px = sx(x)
        py, mark = _marker(y, sy, ylo if logy else None)
        over = bound is not None and (math.isnan(y) or y > bound)
        color = BAD if over else GOOD
        tip = f"{label}: x = {fmt(x)}, y = {fmt(y)}"
        if i in highlight:
            f.add(f'<circle class="highlight" data-highlight="{i}" cx="{_t(px)}" cy="{_t(py)}" r="8" fill="none" '
                  f'stroke="{INK}" stroke-width="1.2"/>')
        if mark in ("inf", "nan"):
            f.add(f'<path d="M{_t(px - 4)},{_t(py + 7)} L{_t(px)},{_t(py + 1)} L{_t(px + 4)},{_t(py + 7)} Z" '
                  f'fill="{BAD}"><title>{escape(tip)}</title></path>')
        else:
            fill = "none" if mark == "floor" else color
            f.add(f'<circle cx="{_t(px)}" cy="{_t(py)}" r="4" fill="{fill}" stroke="{color}" fill-opacity="0.85">'
                  f"<title>{escape(tip)}</title></circle>")
    return f.svg()


def line_chart(series: Sequence[dict[str, Any]], *, xlabels: Sequence[str], title: str = "", xlabel: str = "",
               ylabel: str = "", log: bool = False, bound: float | None = None, bound_label: str = "bound",
               legend: Sequence[tuple[str, str, str]] = (), kind: str = "lines", width: int = 640,
               height: int = 260) -> str:
    """Series {'name', 'ys' (one per x label, None for no point), 'color', 'dash': bool} over categorical x."""
    allv = [num(y) for s in series for y in s["ys"] if y is not None]
    legend = list(legend) + ([(f"{bound_label} = {fmt(bound)}", BAD, "dash")] if bound is not None else [])
    f = _Frame(width, height, title, kind, legend=legend)
    extra = [bound] if bound is not None else []
    if log:
        lo, hi = _log_range(allv, extra)
    else:
        lo, hi = _lin_range(allv, extra)
    sy = Scale(lo, hi, f.y0, f.y1, log=log)
    f.yaxis(sy, ylabel)
    n = max(len(xlabels), 1)
    sx = Scale(0, max(n - 1, 1), f.x0 + 24, f.x1 - 24)
    for i, lab in enumerate(xlabels):
        p = sx(i) if n > 1 else (f.x0 + f.x1) / 2
        f.add(f'<line x1="{_t(p)}" x2="{_t(p)}" y1="{f.y1}" y2="{f.y0}" stroke="{GRID}"/>')
        f.text(p, f.y0 + 14, lab, size=10, color=MUTED)
    f.text((f.x0 + f.x1) / 2, f.h - 8, xlabel, size=11, color=MUTED)
    if bound is not None:
        f.hline(sy, bound, f"{bound_label} = {fmt(bound)}")
    for s in series:
        color = s.get("color", INK)
        pts: list[tuple[float, float, str, float]] = []
        for i, y in enumerate(s["ys"]):
            if y is None:
                continue
            v = num(y)
            px = sx(i) if n > 1 else (f.x0 + f.x1) / 2
            py, mark = _marker(v, sy, lo if log else None)
            pts.append((px, py, mark, v))
        run: list[str] = []
        for px, py, mark, _ in pts + [(0, 0, "end", 0)]:
            if mark in ("", "floor"):
                run.append(f"{_t(px)},{_t(py)}")
                continue
            if len(run) > 1:
                dash = ' stroke-dasharray="5 3"' if s.get("dash") else ""
                f.add(f'<polyline points="{" ".join(run)}" fill="none" stroke="{color}" stroke-width="1.6"{dash}/>')
            run = []
        for i, (px, py, mark, v) in enumerate(pts):
            tip = f"{s.get('name', '')} at {xlabels[min(i, n - 1)]}: {fmt(v)}"
            if mark in ("inf", "nan"):
                f.text(px, py + (11 if mark == "inf" else -3), "inf" if mark == "inf" else "NaN", size=9, color=BAD)
            r = 2.2 if s.get("dash") else 3
            fill = "#fff" if s.get("dash") or mark == "floor" else color
            f.add(f'<circle cx="{_t(px)}" cy="{_t(py)}" r="{r}" fill="{fill}" stroke="{color}">'
                  f"<title>{escape(tip)}</title></circle>")
    return f.svg()


def heatmap(rows: Sequence[str], cols: Sequence[str], values: Sequence[Sequence[Any]], *, title: str = "",
            xlabel: str = "", bound: float = 1.0, kind: str = "heatmap", width: int = 640) -> str:
    """Cells coloured by log10(value / bound): green shades within the bound, red shades over it, grey: no value."""
    row_h = 18
    left = min(170, 14 + 6.4 * max((len(r) for r in rows), default=4))
    height = 30 + row_h * max(len(rows), 1) + 40
    legend = [("over the bound", "#d84315", "box"), ("within", "#81c784", "box"), ("not recorded", "#e5e5ea", "box")]
    f = _Frame(width, height, title, kind, left=int(left), bottom=40, legend=legend)
    n = max(len(cols), 1)
    cw = (f.x1 - f.x0) / n
    every = max(1, math.ceil(n / 32))
    for j, c in enumerate(cols):
        if j % every == 0:
            f.text(f.x0 + cw * (j + 0.5), f.y0 + 13, c, size=10, color=MUTED)
    for i, r in enumerate(rows):
        y = f.y1 + i * row_h
        f.text(f.x0 - 5, y + row_h / 2 + 4, r, anchor="end", size=10.5)
        for j in range(len(cols)):
            raw = values[i][j] if j < len(values[i]) else None
            if raw is None:
                color, tip = "#f2f2f5", "not recorded"
            else:
                v = num(raw)
                tip = fmt(v)
                if not math.isfinite(v):
                    color = "#7f0000"
                elif v <= bound:
                    k = min(1.0, max(0.0, (math.log10(max(v, 1e-12) / bound) + 6) / 6))  # 1e-6..1 -> light..mid
                    color = _mix("#e8f5e9", "#66bb6a", k)
                else:
                    k = min(1.0, math.log10(v / bound) / 8)  # 1..1e8 -> orange..dark red
                    color = _mix("#ffcc80", "#b71c1c", k)
            f.add(f'<rect x="{_t(f.x0 + cw * j + 0.5)}" y="{_t(y + 1)}" width="{_t(max(cw - 1, 0.5))}" '
                  f'height="{row_h - 2}" fill="{color}"><title>{escape(f"{r}, {xlabel} {cols[j]}: {tip}")}</title></rect>')
    f.text((f.x0 + f.x1) / 2, f.h - 8, xlabel, size=11, color=MUTED)
    return f.svg()


def _mix(a: str, b: str, k: float) -> str:
    ca = [int(a[i:i + 2], 16) for i in (1, 3, 5)]
    cb = [int(b[i:i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(x + (y - x) * k):02x}" for x, y in zip(ca, cb))
