"""Compression presets: a method and the accuracy budget it must meet, checked on held-out lists before a
bundle is written. A preset that breaks its budget fails with a message naming every broken limit.

    edge-rerank compress --preset default --checkpoint runs/demo/checkpoint.pt --logs runs/demo/logs
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge_rerank.compression.benchmark import evaluate_scores, score_lists
from edge_rerank.compression.methods import REFERENCE, Context, get_method
from edge_rerank.compression.sizes import file_size
from edge_rerank.converters.bundle import write_bundle


@dataclass(frozen=True)
class Budget:
    max_rel_ndcg10_loss_pct: float  # (fp32 - method) / fp32 NDCG@10 on held-out lists, in percent
    min_mean_kendall_tau: float  # against the fp32 model's order of the same lists
    max_kb: float  # model file size


@dataclass(frozen=True)
class Preset:
    name: str
    method: str  # a compression.methods name
    budget: Budget
    description: str


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("lossless", "onnx-fp32", Budget(0.0, 0.9999, 1024), "the fp32 export, no compression"),
    Preset("default", "onnx-fp16", Budget(0.1, 0.99, 1024),
           "what ships by default: fp16, within 0.1 % NDCG@10 and τ ≥ 0.99 of fp32, under 1 MB"),
    Preset("small", "onnx-int8-dynamic-qint8-rr", Budget(1.0, 0.95, 100),
           "dynamic int8 (QInt8 + reduce_range): about 60 % of the fp32 size"),
    # a student is a different model: its order agrees with the teacher's far less (τ ~0.75) even when its
    # NDCG@10 is as good, so its budget is on NDCG@10 and size first
    Preset("tiny", "onnx-student-small-int8", Budget(2.0, 0.6, 64),
           "distilled small student, int8: for the strictest app-size budgets"),
)}


class BudgetExceeded(RuntimeError):
    """A preset's result broke its accuracy or size budget."""


@dataclass
class PresetCheck:
    preset: str
    method: str
    file_kb: float
    rel_ndcg10_loss_pct: float
    mean_kendall_tau: float
    broken: list[str]
    n_lists: int = 0

    @property
    def ok(self) -> bool:
        return not self.broken

    def to_dict(self) -> dict:
        return asdict(self) | {"ok": self.ok}


def check_budget(preset: Preset, file_kb: float, ndcg10: float, ndcg10_fp32: float, mean_tau: float) -> PresetCheck:
    b = preset.budget
    loss = 100 * (ndcg10_fp32 - ndcg10) / ndcg10_fp32 if ndcg10_fp32 else 0.0
    broken = []
    if loss > b.max_rel_ndcg10_loss_pct + 1e-9:
        broken.append(f"relative NDCG@10 loss {loss:.3f} % > {b.max_rel_ndcg10_loss_pct} %")
    if mean_tau < b.min_mean_kendall_tau:
        broken.append(f"mean Kendall tau vs fp32 {mean_tau:.4f} < {b.min_mean_kendall_tau}")
    if file_kb > b.max_kb:
        broken.append(f"model file {file_kb:.1f} KB > {b.max_kb} KB")
    return PresetCheck(preset.name, preset.method, file_kb, loss, mean_tau, broken)


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name]


def run_preset(name: str | Preset, model, train, test, out: str | Path, *, n_lists: int = 300,
               version: str = "compressed", metrics: dict | None = None, fp32_onnx: str | Path | None = None,
               tune=None, progress: bool = False) -> tuple[PresetCheck, Path]:
    """Build the preset's method, check its budget on the model's held-out `test` lists (its recorded test
    split: ``edge_rerank.api.compress`` loads it from the checkpoint), and write the bundle (``OUT/bundle``).
    `train` (Samples) is needed only by methods that calibrate or train (static int8, pruning, students), which
    pick their best epoch on `tune` (the model's validation lists); `fp32_onnx`: the model's fp32 ONNX export
    when the caller already has one (else it is exported here).
    Raises :class:`BudgetExceeded` (and writes no bundle) when a limit is broken."""
    preset = name if isinstance(name, Preset) else get_preset(name)
    name = preset.name
    out = Path(out)
    method = get_method(preset.method)
    why = method.unavailable_reason()
    if why:
        raise RuntimeError(f"preset {name!r} ({preset.method}) cannot run here: {why}")
    ctx = Context(model, train, test, out / "work", tune=tune, progress=progress, onnx_fp32_file=fp32_onnx)
    sub = test.subset(np.arange(min(n_lists, len(test))))
    fp32 = get_method(REFERENCE)
    ref = score_lists(fp32.runner(fp32.build(ctx, out / "work" / REFERENCE)), sub.inputs)
    path = method.build(ctx, out / "work" / method.name)
    ev = evaluate_scores(score_lists(method.runner(path), sub.inputs), ref, sub.labels, sub.mask)
    ev_ref = evaluate_scores(ref, ref, sub.labels, sub.mask)
    check = check_budget(preset, file_size(path) / 1024, ev.ndcg10, ev_ref.ndcg10, ev.mean_kendall_tau)
    check.n_lists = len(sub)
    if not check.ok:
        raise BudgetExceeded(f"preset {name!r} ({preset.method}) broke its budget on {len(sub)} held-out lists: "
                             + "; ".join(check.broken))
    bundle = write_bundle(out / "bundle", model_file=path, fmt=method.format, name="device-reranker",
                          version=version, feature_config=model.fcfg,
                          validation={"preset_lists": float(len(sub)), "max_abs_diff_vs_fp32": ev.max_abs_diff,
                                      "mean_kendall_tau_vs_fp32": ev.mean_kendall_tau,
                                      "rel_ndcg10_loss_pct": check.rel_ndcg10_loss_pct},
                          metrics=(metrics or {}) | {"ndcg@10_compressed": ev.ndcg10,
                                                     "params": float(ctx.params_of(method.name))})
    return check, bundle
