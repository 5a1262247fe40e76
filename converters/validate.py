"""Check an exported model against the reference on real inputs: max abs diff, Kendall tau, top-5 overlap."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class ValidationReport:
    n_lists: int
    max_abs_diff: float
    mean_kendall_tau: float
    min_kendall_tau: float
    mean_top5_overlap: float
    tolerance: float
    passed: bool
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall tau-a between two score vectors (ties count as discordant-neutral)."""
    n = a.shape[0]
    if n < 2:
        return 1.0
    da = np.sign(a[:, None] - a[None, :])
    db = np.sign(b[:, None] - b[None, :])
    iu = np.triu_indices(n, 1)
    return float((da[iu] * db[iu]).sum() / len(iu[0]))


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int = 5) -> float:
    k = min(k, a.shape[0])
    return len(set(np.argsort(-a)[:k]) & set(np.argsort(-b)[:k])) / max(k, 1)


def validate(reference: Callable[[dict[str, np.ndarray]], np.ndarray],
             candidate: Callable[[dict[str, np.ndarray]], np.ndarray],
             inputs: list[dict[str, np.ndarray]], *, tolerance: float = 1e-4,
             min_tau: float = 0.99) -> ValidationReport:
    """Run both on each batch-1 input; compare scores on the real (unpadded) candidates."""
    diffs, taus, overlaps, failures = [], [], [], []
    for i, x in enumerate(inputs):
        n = int(x["cand_mask"][0].sum())
        r = np.asarray(reference(x), dtype=np.float64)[0, :n]
        c = np.asarray(candidate(x), dtype=np.float64)[0, :n]
        if not np.all(np.isfinite(c)):
            failures.append(f"list {i}: non-finite scores")
            continue
        diffs.append(float(np.max(np.abs(r - c))) if n else 0.0)
        taus.append(kendall_tau(r, c))
        overlaps.append(top_k_overlap(r, c))
    max_diff = max(diffs) if diffs else float("inf")
    if max_diff > tolerance:
        failures.append(f"max abs diff {max_diff:.3g} > tolerance {tolerance:.3g}")
    if taus and min(taus) < min_tau:
        failures.append(f"min Kendall tau {min(taus):.4f} < {min_tau}")
    return ValidationReport(n_lists=len(inputs), max_abs_diff=max_diff,
                            mean_kendall_tau=float(np.mean(taus)) if taus else float("nan"),
                            min_kendall_tau=float(np.min(taus)) if taus else float("nan"),
                            mean_top5_overlap=float(np.mean(overlaps)) if overlaps else float("nan"),
                            tolerance=tolerance, passed=not failures, failures=failures)
