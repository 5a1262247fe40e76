"""How numbers read in the markdown reports (report.md, ablation.md, compression.md): one style everywhere.

- A rate's level is a percentage, ``71.80 % [67.60, 75.40]``; a *difference* of two rates is in percentage
  points, ``+1.27 pp [0.47, 2.20]`` (a relative change would be a percentage; none of the reports shows one
  without saying "rel."). Never ``1.27 %`` for a difference of rates.
- Point estimate first, its 95 % CI in brackets, in the point estimate's unit; differences carry a sign, bounds
  only a minus when negative; minus signs are U+2212 (−), as in the README.
- ``—`` (em dash) where a number does not apply or was not measured (a cloud-only arm's rerank latency), never
  ``nan`` or ``None``.
- A caveat line when a run is too small for its differences to mean much (:func:`sessions_caveat`,
  :func:`lists_caveat`); the thresholds and why are below.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

NA = "—"
MINUS = "−"

# "Few" sessions per A/B arm. QV_CTR is a per-session yes/no near 70 %: with n sessions one arm's 95 % CI is
# ±1.96·sqrt(0.7·0.3/n), ±2.0 pp at 2,000; the paired Δ (common random numbers) is narrower, ±0.85 pp at 4,000
# sessions in `make demo`, so about ±1.2 pp at 2,000. The effects this project measures are ~1–1.5 pp; below
# 2,000 sessions per arm a real +1 pp effect usually has a CI that includes 0. (Measured: `demo --quick`, 500
# sessions per arm, gives ΔQV_CTR CIs ±2.3 pp wide.)
FEW_SESSIONS = 2000
# "Few" held-out lists. Per-list NDCG@10 varies with an SD of about 0.3 in these logs (measured: 0.29 for the demo
# model, 0.31 for its per-list difference to the cloud order, on the demo's 1,723 test lists), so a mean over n
# lists has a standard error of ~0.3/sqrt(n): 0.0095 at 1,000 lists. Variants in the ablation and compression
# tables differ by 0.005–0.02; below 1,000 lists those differences are within about two standard errors, i.e.
# not resolved.
FEW_LISTS = 1000
NDCG_LIST_SD = 0.3


def is_na(x: object) -> bool:
    """True for None and for a float that is not finite (nan, ±inf)."""
    if x is None:
        return True
    try:
        return not math.isfinite(float(x))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return True


def num(x: float | None, digits: int = 2, *, signed: bool = False) -> str:
    """One number: fixed `digits`, U+2212 for minus, a leading + when `signed` and positive; ``—`` when n/a.
    A value that rounds to zero prints unsigned (``0.00``, not ``−0.00`` or ``+0.00``)."""
    if is_na(x):
        return NA
    s = f"{float(x):.{digits}f}"  # type: ignore[arg-type]
    if float(s) == 0:
        return s.lstrip("-")
    if s.startswith("-"):
        return MINUS + s[1:]
    return "+" + s if signed else s


def _triple(est: object) -> tuple[float, float, float] | None:
    """(mean, lo, hi) of an ``Estimate``, a {"mean", "lo", "hi"} mapping or a 3-sequence; None when missing."""
    if est is None:
        return None
    if isinstance(est, Mapping):
        if not est:
            return None
        return est.get("mean"), est.get("lo"), est.get("hi")  # type: ignore[return-value]
    if hasattr(est, "mean") and hasattr(est, "lo") and hasattr(est, "hi"):
        return est.mean, est.lo, est.hi  # type: ignore[attr-defined]
    mean, lo, hi = est  # type: ignore[misc]
    return mean, lo, hi


def ci(est: object, *, digits: int = 2, scale: float = 1.0, unit: str = "", signed: bool = False) -> str:
    """``point unit [lo, hi]``: the estimate times `scale`; ``—`` when there is no point estimate, the point
    alone when the interval is missing. `signed` for differences."""
    t = _triple(est)
    if t is None or is_na(t[0]):
        return NA
    mean, lo, hi = t
    u = f" {unit}" if unit else ""
    head = num(scale * float(mean), digits, signed=signed) + u
    if is_na(lo) or is_na(hi):
        return head
    return f"{head} [{num(scale * float(lo), digits)}, {num(scale * float(hi), digits)}]"


def rate(est: object, digits: int = 2) -> str:
    """A rate's level (a fraction in [0, 1]) as a percentage: ``71.80 % [67.60, 75.40]``."""
    return ci(est, digits=digits, scale=100.0, unit="%")


def rate_delta(est: object, digits: int = 2) -> str:
    """A difference of two rates (fractions) in percentage points: ``+1.27 pp [0.47, 2.20]``."""
    return ci(est, digits=digits, scale=100.0, unit="pp", signed=True)


def pp(est: object, digits: int = 2) -> str:
    """A difference already in percentage points: ``+1.27 pp [0.47, 2.20]``."""
    return ci(est, digits=digits, unit="pp", signed=True)


def delta(est: object, digits: int = 3, unit: str = "") -> str:
    """A signed difference of a non-rate metric: ``+0.123 [0.095, 0.150]``."""
    return ci(est, digits=digits, unit=unit, signed=True)


def pair(a: float | None, b: float | None, digits: int = 2, unit: str = "") -> str:
    """``a / b unit`` (e.g. p50 / p99 latency); ``—`` when both are n/a, each n/a side as ``—``."""
    if is_na(a) and is_na(b):
        return NA
    return f"{num(a, digits)} / {num(b, digits)}" + (f" {unit}" if unit else "")


def table(header: list[str], rows: list[list[object]]) -> list[str]:
    """A markdown table; None / nan cells read ``—``; a ``|`` inside a cell is escaped, line breaks become spaces
    (a failed method's reason can hold both)."""
    def cell(v: object) -> str:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return NA
        s = str(v)
        return NA if s == "" else " ".join(s.split("\n")).replace("|", "\\|")

    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return out


def sessions_caveat(n_per_arm: int, *, delta_halfwidth_pp: float | None = None,
                    threshold: int | None = None) -> str | None:
    """A caveat line when an A/B has fewer than `threshold` (default FEW_SESSIONS) sessions per arm, else None."""
    threshold = FEW_SESSIONS if threshold is None else threshold
    if n_per_arm >= threshold:
        return None
    width = (f" here the 95 % CIs of ΔQV_CTR reach ±{num(delta_halfwidth_pp, 1)} pp;"
             if not is_na(delta_halfwidth_pp) else "")
    return (f"> **Small sample: {n_per_arm:,} sessions per arm** (few = under {threshold:,}):{width} effects of the "
            "size this project measures (~1 pp QV_CTR) are not resolved at this size, so read the differences as a "
            "smoke test of the pipeline, not as a result (the demo's headline A/B runs 4,000 sessions per arm).")


def lists_caveat(n_lists: int, *, what: str = "held-out lists", threshold: int | None = None) -> str | None:
    """A caveat line when offline metrics are means over fewer than `threshold` (default FEW_LISTS) lists, else
    None."""
    threshold = FEW_LISTS if threshold is None else threshold
    if n_lists >= threshold:
        return None
    se = NDCG_LIST_SD / math.sqrt(max(n_lists, 1))
    return (f"> **Small sample: {n_lists:,} {what}** (few = under {threshold:,}): a mean NDCG@10 has a standard "
            f"error of about {num(se, 3)} here (per-list SD ≈ {NDCG_LIST_SD}), so NDCG@10 differences under "
            f"~{num(2 * se, 3)} (two standard errors) are within noise.")


def caveats(*lines: str | None) -> list[str]:
    """The caveat lines that apply, each followed by a blank line (for a markdown list of lines)."""
    out: list[str] = []
    for line in lines:
        if line:
            out += [line, ""]
    return out
