"""Shared pieces of the project's plots (simulator report, ablation, compression benchmark): a headless figure,
point labels that do not overlap, and percentile marks.

Label placement is greedy and deterministic (no dependency): points in crowded places are labelled first; each
label tries positions around its point at growing distances (a thin leader line once it leaves the point's
side) and takes the first that stays inside the axes and overlaps no point, no other label and no legend.
A label with no free place is reported and drawn at its least-overlapping candidate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DPI = 120


def pyplot():
    """matplotlib.pyplot on the headless Agg backend (plots are files; no display is needed or used)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass
class Placement:
    """Where the labels went: their boxes in display pixels (x0, y0, x1, y1), and the labels that found no free
    place (drawn anyway, overlapping as little as possible)."""

    boxes: list[tuple[float, float, float, float]]
    unplaced: list[str]


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


_ANGLES = (0, 45, -45, 90, -90, 135, -135, 180, 22.5, -22.5, 67.5, -67.5, 112.5, -112.5, 157.5, -157.5)
_RADII = (5, 12, 22, 34, 48, 64, 84, 108, 136)


def place_labels(ax, xs, ys, labels: list[str], *, fontsize: float = 7.0, marker_px: float = 5.0,
                 avoid: list | None = None, color: str = "0.15") -> Placement:
    """Label each point (xs[i], ys[i]) of `ax` with labels[i] without overlaps. Call after everything else is on
    the figure and its layout is final (the placement works in display pixels); `avoid`: more artists to keep
    clear of (legends). Returns where the labels went."""
    fig = ax.figure
    fig.canvas.draw()  # final layout: axes positions and the transforms below are what gets saved
    renderer = fig.canvas.get_renderer()
    from matplotlib.font_manager import FontProperties

    font = FontProperties(size=fontsize)
    pts = ax.transData.transform(np.column_stack([np.asarray(xs, float), np.asarray(ys, float)]))
    win = ax.get_window_extent(renderer)
    frame = (win.x0 + 2, win.y0 + 2, win.x1 - 2, win.y1 - 2)
    pad = 1.5
    obstacles = [(x - marker_px, y - marker_px, x + marker_px, y + marker_px) for x, y in pts]
    for artist in avoid or []:
        if artist is not None:
            b = artist.get_window_extent(renderer)
            obstacles.append((b.x0, b.y0, b.x1, b.y1))
    # crowded points first: they have the fewest free places nearby
    d = np.linalg.norm(pts[:, None, :] - pts[None, :, :], axis=-1)
    order = sorted(range(len(pts)), key=lambda i: (-int((d[i] < 40).sum()), i))
    boxes: list[tuple[float, float, float, float] | None] = [None] * len(pts)
    unplaced: list[str] = []
    px_to_pt = 72.0 / fig.dpi
    for i in order:
        w, h, _ = renderer.get_text_width_height_descent(labels[i], font, ismath=False)
        px, py = pts[i]
        best, best_cost = None, math.inf
        for r in _RADII:
            for a in _ANGLES:
                c, s = math.cos(math.radians(a)), math.sin(math.radians(a))
                ax_, ay_ = px + r * c, py + r * s
                ha = "left" if c > 0.35 else "right" if c < -0.35 else "center"
                va = "bottom" if s > 0.35 else "top" if s < -0.35 else "center"
                x0 = ax_ if ha == "left" else ax_ - w if ha == "right" else ax_ - w / 2
                y0 = ay_ if va == "bottom" else ay_ - h if va == "top" else ay_ - h / 2
                box = (x0 - pad, y0 - pad, x0 + w + pad, y0 + h + pad)
                outside = max(frame[0] - box[0], 0) + max(box[2] - frame[2], 0) + max(frame[1] - box[1], 0) \
                    + max(box[3] - frame[3], 0)
                hit = sum(_overlap(box, o) for o in obstacles) + sum(_overlap(box, b) for b in boxes if b)
                cost = hit + 1e3 * outside
                if cost == 0:
                    best, best_cost = (r, ha, va, ax_ - px, ay_ - py, box), 0.0
                    break
                if cost < best_cost:
                    best, best_cost = (r, ha, va, ax_ - px, ay_ - py, box), cost
            if best_cost == 0:
                break
        r, ha, va, dx, dy, box = best  # type: ignore[misc]
        if best_cost > 0:
            unplaced.append(labels[i])
        boxes[i] = box
        arrow = dict(arrowstyle="-", color="0.55", lw=0.5, shrinkA=0, shrinkB=marker_px * px_to_pt) if r > 12 else None
        ax.annotate(labels[i], (xs[i], ys[i]), xytext=(dx * px_to_pt, dy * px_to_pt), textcoords="offset points",
                    ha=ha, va=va, fontsize=fontsize, color=color, arrowprops=arrow, annotation_clip=False, zorder=4)
    fig.set_layout_engine("none")  # keep the layout the labels were placed on
    return Placement([b for b in boxes if b], unplaced)


def mark_percentiles(ax, values: np.ndarray, color, *, qs: tuple[int, ...] = (50, 99),
                     styles: tuple[str, ...] = ("--", ":")) -> dict[int, float]:
    """Vertical lines at the given percentiles of `values` on `ax`; returns {q: value}."""
    out = {}
    for q, ls in zip(qs, styles, strict=True):
        v = float(np.percentile(values, q))
        ax.axvline(v, color=color, ls=ls, lw=1.3)
        out[q] = v
    return out
