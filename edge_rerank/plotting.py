"""Shared pieces of the project's plots (simulator report, ablation, compression benchmark): a headless figure,
point labels that do not overlap, and percentile marks.

Label placement is greedy and deterministic (no dependency): points in crowded places are labelled first; each
label tries positions around its point at growing distances (a thin leader line once it leaves the point's
side) and takes the first that stays inside the axes, overlaps no point, no other label and no legend, and is
nearer to its own point than to any other, or, with a leader line, clear of other points (so it cannot be
read as another point's label).
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


def _dist(box: tuple[float, float, float, float], x: float, y: float) -> float:
    return math.hypot(max(box[0] - x, 0.0, x - box[2]), max(box[1] - y, 0.0, y - box[3]))


def _seg_dist(x0: float, y0: float, x1: float, y1: float, x: float, y: float) -> float:
    """Distance of (x, y) to the segment (x0, y0)-(x1, y1)."""
    dx, dy = x1 - x0, y1 - y0
    t = 0.0 if dx == dy == 0 else max(0.0, min(1.0, ((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy)))
    return math.hypot(x - (x0 + t * dx), y - (y0 + t * dy))


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


_ANGLES = (0, 45, -45, 90, -90, 135, -135, 180, 22.5, -22.5, 67.5, -67.5, 112.5, -112.5, 157.5, -157.5)
_RADII = (5, 12, 22, 34, 48, 64, 84, 108, 136)


def _clusters(pts: np.ndarray, within: float) -> list[list[int]]:
    """Groups of points whose markers overlap (single linkage at `within` pixels), in first-index order."""
    parent = list(range(len(pts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(pts)):
        for j in range(i + 1, len(pts)):
            if np.hypot(*(pts[i] - pts[j])) < within:
                parent[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(pts)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def place_labels(ax, xs, ys, labels: list[str], *, fontsize: float = 7.0, marker_px: float = 5.0,
                 avoid: list | None = None, color: str = "0.15") -> Placement:
    """Label each point (xs[i], ys[i]) of `ax` with labels[i] without overlaps. Points whose markers overlap
    share one label, their names one per line. Call after everything else is on the figure and its layout is
    final (the placement works in display pixels); `avoid`: more artists to keep clear of (legends). Returns
    where the labels went."""
    fig = ax.figure
    if fig.get_layout_engine() is not None:
        fig.draw_without_rendering()  # runs the layout: axes positions and the transforms below are final
        fig.set_layout_engine("none")  # and stay so: labels added now do not move the axes
    renderer = fig.canvas.get_renderer()
    pts = ax.transData.transform(np.column_stack([np.asarray(xs, float), np.asarray(ys, float)]))
    win = ax.get_window_extent(renderer)
    frame = (win.x0 + 2, win.y0 + 2, win.x1 - 2, win.y1 - 2)
    pad = 1.5
    obstacles = [(x - marker_px, y - marker_px, x + marker_px, y + marker_px) for x, y in pts]
    for artist in avoid or []:
        if artist is not None:
            b = artist.get_window_extent(renderer)
            obstacles.append((b.x0, b.y0, b.x1, b.y1))
    groups = _clusters(pts, 1.6 * marker_px)
    centres = np.array([pts[g].mean(0) for g in groups])
    # crowded places first: they have the fewest free places nearby
    d = np.linalg.norm(centres[:, None, :] - centres[None, :, :], axis=-1)
    order = sorted(range(len(groups)), key=lambda k: (-int((d[k] < 40).sum()), k))
    boxes: list[tuple[float, float, float, float]] = []
    unplaced: list[str] = []
    px_to_pt = 72.0 / fig.dpi
    for k in order:
        members = groups[k]
        text = "\n".join(labels[i] for i in members)
        probe = ax.text(0, 0, text, fontsize=fontsize, transform=None)
        bb = probe.get_window_extent(renderer)
        probe.remove()
        w, h = bb.width, bb.height
        px, py = centres[k]
        reach = max(float(np.hypot(*(pts[i] - centres[k]))) for i in members) + marker_px
        others = [pts[j] for j in range(len(pts)) if j not in members]
        best, best_cost = None, math.inf
        for r in _RADII:
            r_eff = r + reach - marker_px
            for a in _ANGLES:
                c, s_ = math.cos(math.radians(a)), math.sin(math.radians(a))
                ax_, ay_ = px + r_eff * c, py + r_eff * s_
                ha = "left" if c > 0.35 else "right" if c < -0.35 else "center"
                va = "bottom" if s_ > 0.35 else "top" if s_ < -0.35 else "center"
                x0 = ax_ if ha == "left" else ax_ - w if ha == "right" else ax_ - w / 2
                y0 = ay_ if va == "bottom" else ay_ - h if va == "top" else ay_ - h / 2
                box = (x0 - pad, y0 - pad, x0 + w + pad, y0 + h + pad)
                outside = max(frame[0] - box[0], 0) + max(box[2] - frame[2], 0) + max(frame[1] - box[1], 0) \
                    + max(box[3] - frame[3], 0)
                hit = sum(_overlap(box, o) for o in obstacles) + sum(_overlap(box, b) for b in boxes)
                # no one may read the label as another point's: next to its point (no leader line) it must be nearer
                # to its own point than to any other; with a leader line it keeps clear of other points, and the
                # line passes no other point
                own = _dist(box, px, py) - reach + marker_px
                if r == _RADII[0]:
                    ambiguous = sum(1 for qx, qy in others if _dist(box, qx, qy) < own + 3)
                else:
                    ambiguous = sum(1 for qx, qy in others if _dist(box, qx, qy) < min(own, marker_px + 12)
                                    or _seg_dist(px, py, ax_, ay_, qx, qy) < marker_px + 1)
                cost = hit + 1e3 * outside + 50.0 * ambiguous
                if cost < best_cost:
                    best, best_cost = (r, ha, va, ax_ - px, ay_ - py, box), cost
                if cost == 0:
                    break
            if best_cost == 0:
                break
        r, ha, va, dx, dy, box = best  # type: ignore[misc]
        if best_cost > 0:
            unplaced.append(text)
        boxes.append(box)
        # the leader starts at the label's corner or side that faces the point (the candidate's anchor)
        relpos = ({"left": 0.0, "right": 1.0, "center": 0.5}[ha], {"bottom": 0.0, "top": 1.0, "center": 0.5}[va])
        arrow = (dict(arrowstyle="-", color="0.55", lw=0.5, shrinkA=0, shrinkB=reach * px_to_pt, relpos=relpos)
                 if r > _RADII[0] else None)
        xy = ax.transData.inverted().transform((px, py))
        ax.annotate(text, xy, xytext=(dx * px_to_pt, dy * px_to_pt), textcoords="offset points", ha=ha, va=va,
                    fontsize=fontsize, color=color, arrowprops=arrow, annotation_clip=False, zorder=4,
                    multialignment=ha if ha != "center" else "center", linespacing=1.1)
    return Placement(boxes, unplaced)


def mark_percentiles(ax, values: np.ndarray, color, *, qs: tuple[int, ...] = (50, 99),
                     styles: tuple[str, ...] = ("--", ":")) -> dict[int, float]:
    """Vertical lines at the given percentiles of `values` on `ax`; returns {q: value}."""
    out = {}
    for q, ls in zip(qs, styles, strict=True):
        v = float(np.percentile(values, q))
        ax.axvline(v, color=color, ls=ls, lw=1.3)
        out[q] = v
    return out
