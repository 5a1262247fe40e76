"""Compression–accuracy benchmark: one trained reranker, every method x format (``compression.methods``):
file size (and its gzip download), max abs diff and Kendall τ against the fp32 ONNX model (and against the fp32
file of the method's own format), NDCG@10 on held-out lists and its delta, and latency p50 in the method's
runtime — all offline. Writes ``compression.json``. The simulator's QV_CTR column is added one floor up, by
``edge_rerank.compression_ab``; the table (``compression.md``) and the Pareto plot by
``edge_rerank.compression_report`` (compression imports neither the simulator nor the top floor).
"""

from __future__ import annotations

import contextlib
import io
import json
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge_rerank.cloud.training.ranking_metrics import ndcg_at_k
from edge_rerank.compression.methods import METHODS, REFERENCE, Context, Method
from edge_rerank.compression.sizes import file_size, gzip_size
from edge_rerank.converters.export import median_latency_ms
from edge_rerank.converters.validate import fidelity

OK, UNAVAILABLE, FAILED = "ok", "unavailable", "failed"


@dataclass
class MethodResult:
    method: str
    format: str
    family: str
    status: str = OK
    reason: str = ""
    description: str = ""
    evaluated_by: str = ""
    file_kb: float | None = None
    gzip_kb: float | None = None
    max_abs_diff: float | None = None
    min_kendall_tau: float | None = None
    mean_kendall_tau: float | None = None
    ndcg10: float | None = None
    ndcg10_delta: float | None = None
    ndcg10_rel_delta_pct: float | None = None
    qv_ctr_delta_pp: float | None = None  # vs the fp32 model's arm, same sessions
    qv_ctr_ci_pp: tuple[float, float] | None = None
    qv_ctr_sessions: int | None = None  # simulated sessions per arm behind the two fields above
    latency_p50_ms: float | None = None
    n_lists: int | None = None  # held-out lists behind the offline numbers
    params: int | None = None  # of the model behind the file (students: the student's); sets modelled cost
    extra: dict = field(default_factory=dict)
    file: str | None = None  # the built model file
    reference: str | None = None  # the fp32 method of the same format (None: this is one)
    reference_kb: float | None = None  # its file size
    # (max abs diff, min Kendall τ, mean Kendall τ) against that same-format fp32 file: what the format's own
    # compression changed (the columns above compare with the ONNX fp32 reference)
    vs_reference: tuple[float, float, float] | None = None
    scores: np.ndarray | None = field(default=None, repr=False, compare=False)  # [S, N] on the measured lists

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("scores")
        return d


@dataclass
class Evaluation:
    """Offline numbers of one set of scores against the reference scores on the same held-out lists."""

    max_abs_diff: float
    min_kendall_tau: float
    mean_kendall_tau: float
    ndcg10: float


def evaluate_scores(scores: np.ndarray, ref: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> Evaluation:
    return Evaluation(*fidelity(scores, ref, mask), float(np.nanmean(ndcg_at_k(scores, labels, mask, 10))))


def score_lists(run, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """One list per call (batch 1, as on the phone)."""
    n = len(inputs["cand_mask"])
    return np.concatenate([run({k: v[i: i + 1] for k, v in inputs.items()}) for i in range(n)])


def run_benchmark(model, train, test, out: str | Path, *, methods: list[str | Method] | None = None,
                  n_lists: int = 300, latency_runs: int = 200, progress: bool = True,
                  **ctx_kw) -> list[MethodResult]:
    """Build and measure each method offline (all known ones by default; names, or Method objects). `train`:
    lists for calibration, fine-tuning and distillation (``tune=`` the model's validation lists, where those pick
    their epochs); `test`: the model's recorded test lists, for every number reported. Writes ``compression.json``;
    the simulator's columns, the table and the plot are added one floor up (``edge_rerank.compression_ab``,
    ``edge_rerank.compression_report``)."""
    out = Path(out)
    ctx = Context(model, train, test, out, progress=progress, **ctx_kw)
    chosen = _choose(methods)
    sub = test.subset(np.arange(min(n_lists, len(test))))
    x1 = {k: v[:1] for k, v in sub.inputs.items()}
    results = {m.name: MethodResult(m.name, m.format, m.family, description=m.description,
                                    evaluated_by=m.evaluated_by or m.runtime, reference=m.reference)
               for m in chosen}
    for m in tqdm(chosen, desc="compression methods", unit="method", disable=not progress):
        r = results[m.name]
        why = m.unavailable_reason(ctx)
        if why:
            r.status, r.reason = UNAVAILABLE, why
            continue
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # converters print their passes
                path = m.build(ctx, out / "methods" / m.name)
            run = m.runner(path)
            s = score_lists(run, sub.inputs)
            ref = results[REFERENCE]
            if ref.scores is None and m.name != REFERENCE:
                raise RuntimeError(f"no reference scores: {REFERENCE} did not build ({ref.reason})")
            ev = evaluate_scores(s, s if ref.scores is None else ref.scores, sub.labels, sub.mask)
            ref_ndcg = ev.ndcg10 if ref.scores is None else ref.ndcg10
            r.file, r.scores, r.n_lists = str(path), s, len(sub)
            r.file_kb, r.gzip_kb = (m.size or file_size)(path) / 1024, gzip_size(path) / 1024
            r.max_abs_diff, r.min_kendall_tau, r.mean_kendall_tau = ev.max_abs_diff, ev.min_kendall_tau, \
                ev.mean_kendall_tau
            r.ndcg10, r.ndcg10_delta = ev.ndcg10, ev.ndcg10 - ref_ndcg
            r.ndcg10_rel_delta_pct = 100 * r.ndcg10_delta / ref_ndcg if ref_ndcg else None
            r.latency_p50_ms = None if m.scorer is not None or not latency_runs else _latency(run, x1, latency_runs)
            if m.name in ctx.reports:  # what pruning / distillation measured while building
                r.extra["training"] = _jsonable(ctx.reports[m.name])
            r.params = ctx.params_of(m.name)
        except Exception as exc:  # noqa: BLE001 - one failing method is a result, not the end of the run
            r.status, r.reason = FAILED, f"{type(exc).__name__}: {str(exc)[:1000]}"
            r.extra["traceback"] = traceback.format_exc(limit=4)
    for r in results.values():  # each against the fp32 file of its own format, when that was measured too
        fmt_ref = results.get(r.reference or r.method)
        if r.scores is not None and fmt_ref is not None and fmt_ref.scores is not None:
            r.reference_kb, r.vs_reference = fmt_ref.file_kb, fidelity(r.scores, fmt_ref.scores, sub.mask)
    rows = list(results.values())
    write_json(rows, out)
    return rows


def _choose(methods: list[str | Method] | None) -> list[Method]:
    """The methods to run, in the given order, the reference first when it was not asked for."""
    if methods is None:
        return list(METHODS)
    by_name = {m.name: m for m in METHODS}
    unknown = sorted(m for m in methods if isinstance(m, str) and m not in by_name)
    if unknown:
        raise KeyError(f"unknown compression methods {unknown}; known: {list(by_name)}")
    chosen = [by_name[m] if isinstance(m, str) else m for m in methods]
    return chosen if chosen and chosen[0].name == REFERENCE else [by_name[REFERENCE], *(m for m in chosen
                                                                                        if m.name != REFERENCE)]


def _latency(run, x1, runs: int) -> float:
    return median_latency_ms(run, x1, runs)


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def write_json(rows: list[MethodResult], out: Path, summary: dict | None = None) -> Path:
    """``OUT/compression.json``: every row (and `summary`, e.g. the simulator's). The table and the Pareto plot are
    drawn one floor up (``edge_rerank.compression_report``), like the simulator's columns."""
    path = out / "compression.json"
    path.write_text(json.dumps({"results": [r.to_dict() for r in rows], **(summary or {})}, indent=2, default=str))
    return path


def pareto_front(rows: list[MethodResult]) -> list[MethodResult]:
    """Methods no other method beats on both size (smaller) and NDCG@10 (higher)."""
    ok = [r for r in rows if r.status == OK]
    front = [r for r in ok if not any((o.file_kb <= r.file_kb and o.ndcg10 >= r.ndcg10)
                                      and (o.file_kb < r.file_kb or o.ndcg10 > r.ndcg10) for o in ok)]
    return sorted(front, key=lambda r: r.file_kb)
