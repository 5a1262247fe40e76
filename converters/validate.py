"""Check an exported model against the reference on real inputs: max abs diff, Kendall tau, top-5 overlap."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.stats import kendalltau


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
    min_top5_overlap: float = float("nan")
    reference: str = "reference"
    candidate: str = "candidate"

    def to_dict(self) -> dict:
        return asdict(self)


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall tau-b between two score vectors (``scipy.stats.kendalltau``).

    Without ties it equals the tau-a this module used to compute by hand ((concordant - discordant) / all pairs).
    With ties tau-b divides by the geometric mean of the untied pairs of each side instead of all pairs, so a
    quantized model that rounds two near-equal scores onto the same value is no longer charged for that pair as
    if it had reordered it: tau-b >= |tau-a| on tied inputs, and 1.0 for the same order with ties in both.
    Edge cases, where tau-b is undefined: fewer than two candidates, or both sides constant, give 1.0; one
    side constant and the other not gives 0.0 (the order is lost)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape[0] < 2:
        return 1.0
    const_a, const_b = bool(np.all(a == a[0])), bool(np.all(b == b[0]))
    if const_a or const_b:
        return 1.0 if const_a and const_b else 0.0
    if np.array_equal(a, b):
        return 1.0  # exactly (scipy's tau-b of identical vectors can be 1 - 1e-16)
    return float(np.clip(kendalltau(a, b, variant="b").statistic, -1.0, 1.0))


def list_taus(scores: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> list[float]:
    """Kendall τ (tau-b) of `scores` against `ref` per list ([S, N] arrays), over each list's real candidates
    (``mask > 0``); lists without a real candidate are skipped."""
    real = np.asarray(mask) > 0
    return [kendall_tau(ref[i][real[i]], scores[i][real[i]]) for i in range(len(scores)) if real[i].any()]


def fidelity(scores: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> tuple[float, float, float]:
    """(max abs diff, min Kendall τ, mean Kendall τ) of `scores` against `ref` over each list's real candidates
    (``mask > 0``): how faithful a converted / compressed / distilled model is to the one it came from."""
    real = np.asarray(mask) > 0
    taus = list_taus(scores, ref, mask)
    diff = np.abs(np.asarray(scores, np.float64) - np.asarray(ref, np.float64))[real]
    return float(diff.max()), float(np.nanmin(taus)), float(np.nanmean(taus))


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int = 5) -> float:
    k = min(k, a.shape[0])
    return len(set(np.argsort(-a)[:k]) & set(np.argsort(-b)[:k])) / max(k, 1)


def validate(reference: Callable[[dict[str, np.ndarray]], np.ndarray],
             candidate: Callable[[dict[str, np.ndarray]], np.ndarray],
             inputs: list[dict[str, np.ndarray]], *, tolerance: float = 1e-4,
             min_tau: float = 0.99, min_top5: float = 0.0, reference_name: str = "reference",
             candidate_name: str = "candidate") -> ValidationReport:
    """Run both on each batch-1 input; compare scores on the real (unpadded) candidates. Every failure (a
    crash of the candidate on one list, non-finite scores, a tolerance missed) is gathered, never raised."""
    diffs, taus, overlaps, failures = [], [], [], []
    for i, x in enumerate(inputs):
        n = int(x["cand_mask"][0].sum())
        r = np.asarray(reference(x), dtype=np.float64)[0, :n]
        try:
            c = np.asarray(candidate(x), dtype=np.float64)[0, :n]
        except Exception as exc:  # any runtime error of the candidate is a validation failure, with its reason
            failures.append(f"list {i}: {candidate_name} raised {type(exc).__name__}: {exc}")
            continue
        if c.shape != r.shape:
            failures.append(f"list {i}: {candidate_name} scores have shape {c.shape}, expected {r.shape}")
            continue
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
    if overlaps and min(overlaps) < min_top5:
        failures.append(f"min top-5 overlap {min(overlaps):.2f} < {min_top5}")
    return ValidationReport(n_lists=len(inputs), max_abs_diff=max_diff,
                            mean_kendall_tau=float(np.mean(taus)) if taus else float("nan"),
                            min_kendall_tau=float(np.min(taus)) if taus else float("nan"),
                            mean_top5_overlap=float(np.mean(overlaps)) if overlaps else float("nan"),
                            tolerance=tolerance, passed=not failures, failures=failures,
                            min_top5_overlap=float(np.min(overlaps)) if overlaps else float("nan"),
                            reference=reference_name, candidate=candidate_name)


def validation_inputs(inputs: dict[str, np.ndarray], n: int, *, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Up to `n` batch-1 lists drawn from real inputs (``Samples.inputs``), always including the edge cases
    an export must survive: a list with no feedback at all (every sequence slot padding), the fullest list
    (``N_max`` candidates if the logs have one), the list with the most feedback, and the shortest list.
    If the logs hold no list without feedback, one is made from a real list by blanking its sequences."""
    size = int(inputs["cand_mask"].shape[0])
    if size == 0 or n <= 0:
        return []
    n_cand = inputs["cand_mask"].sum(axis=1)
    n_fb = inputs["seq_pos_mask"].sum(axis=1) + inputs["seq_neg_mask"].sum(axis=1)
    picks = [int(np.argmax(n_cand)), int(np.argmax(n_fb)), int(np.argmin(n_cand))]
    no_fb = np.flatnonzero(n_fb == 0)
    if len(no_fb):
        picks.append(int(no_fb[0]))
    rng = np.random.default_rng(seed)
    rest = [int(i) for i in rng.permutation(size) if int(i) not in picks]
    picks = list(dict.fromkeys(picks)) + rest
    out = [{k: np.ascontiguousarray(v[i: i + 1]) for k, v in inputs.items()} for i in picks[:n]]
    if not len(no_fb):
        blank = {k: v.copy() for k, v in out[0].items()}
        for k in blank:
            if k.startswith("seq_"):
                blank[k][...] = 0
        out.append(blank)
    return out
