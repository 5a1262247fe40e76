"""The ML engineer's entry points as plain functions: train, export, compress, evaluate.

A notebook calls these directly; the CLI subcommands of the same names only parse arguments and print what they
return. Nothing from Flask / gunicorn (nor torch) is imported until a function runs.

Held-out numbers are honest: ``train`` splits the logs' sessions three ways (train / validation / test, seeded,
shares in :class:`~edge_rerank.cloud.training.data.SplitConfig`), picks epochs on validation only, reports on
test and records the split in the checkpoint. ``export``, ``compress`` and ``evaluate`` measure on that recorded
test split and refuse logs whose sessions are not the ones it was made from
(:class:`~edge_rerank.cloud.training.data.SplitMismatch`) instead of re-splitting them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_rerank.cloud.training.configs import TrainConfig
    from edge_rerank.cloud.training.data import Samples, SessionSplit, SplitConfig
    from edge_rerank.cloud.training.model import DeviceReranker, ModelConfig
    from edge_rerank.cloud.training.ray_train import RayOptions
    from edge_rerank.compression.benchmark import MethodResult
    from edge_rerank.compression.presets import PresetCheck
    from edge_rerank.compression_ab import SimulationSetup
    from edge_rerank.converters.export import ExportReport
    from edge_rerank.device_sdk.features import FeatureConfig
    from edge_rerank.simulator.world import WorldConfig

DEFAULT_EPOCHS = 15  # train()'s (and `edge-rerank train`'s) maximum epochs; early stopping usually ends sooner

__all__ = ["CompressResult", "EvalResult", "ExportResult", "HeldOut", "TrainResult", "compress", "compress_benchmark",
           "evaluate", "export", "feature_config_for", "load_held_out", "train"]

SPLIT_FILE = "split.json"  # next to a bundle's manifest: the compact split record (no session ids)


def feature_config_for(world: WorldConfig | None = None) -> FeatureConfig:
    """The feature config matching a simulated world's catalog (default: the default world)."""
    from edge_rerank.device_sdk.features import FeatureConfig
    from edge_rerank.simulator.world import WorldConfig

    world = world or WorldConfig()
    fc = FeatureConfig(emb_dim=world.emb_dim, dense_dim=world.dense_dim, n_categories=world.n_categories,
                       n_brands=world.n_brands)
    if getattr(world, "domain", "shop") == "feed":  # no price or geo; items come back within a session
        from edge_rerank.device_sdk.features.config import DEFAULT_CANDIDATE_OPS, IDENTITY_OPS

        ops = tuple(op for op in DEFAULT_CANDIDATE_OPS if not op.startswith("dist") and "price" not in op)
        fc = replace(fc, candidate_ops=ops + IDENTITY_OPS)
    return fc


@dataclass
class HeldOut:
    """A trained model with the three parts of its recorded split, as the device sees them (for a joint model:
    with the jointly trained cloud ranker's outputs)."""

    model: DeviceReranker
    summary: dict
    split: SessionSplit
    train: Samples
    valid: Samples
    test: Samples
    checkpoint: Path | None = None

    def split_record(self) -> dict:
        return {"split": self.split.describe(), "checkpoint": str(self.checkpoint) if self.checkpoint else None,
                "joint": self.summary.get("joint")}


@dataclass
class TrainResult:
    checkpoint: Path
    train_lists: int
    valid_lists: int
    test_lists: int
    valid: dict[str, float]  # the model on the validation lists (what picked the epoch)
    test: dict[str, float]  # the model on the test lists: the numbers to report
    test_cloud_order: dict[str, float]  # the logged cloud order on the same test lists
    split: dict  # seed, shares, session counts per part, sha256 of the session ids
    epochs_run: int
    params: int
    summary: dict = field(repr=False)
    held_out: HeldOut = field(repr=False)

    @property
    def model(self) -> DeviceReranker:
        return self.held_out.model


@dataclass
class ExportResult:
    out: Path
    ok: bool
    bundles: dict[str, Path]  # format -> bundle directory (formats that passed)
    test_lists: int  # lists of the recorded test split the formats were validated on
    parity: dict[str, dict]  # format -> status, max |Δ| and mean Kendall τ vs torch
    errors: list[str]
    report: ExportReport = field(repr=False)

    def table(self) -> str:
        return self.report.table()


@dataclass
class CompressResult:
    bundle: Path
    preset: str
    method: str
    file_kb: float
    rel_ndcg10_loss_pct: float  # vs the fp32 model on the recorded test lists
    mean_kendall_tau: float
    n_lists: int
    check: PresetCheck = field(repr=False)


@dataclass
class EvalResult:
    source: str  # the checkpoint or bundle evaluated
    test_lists: int
    model: dict[str, float]  # NDCG@5/10, MRR, AUC on the recorded test split
    cloud_order: dict[str, float]  # the logged cloud order on the same lists
    split: dict


# ------------------------------------------------------------------ loading the recorded split


def load_held_out(checkpoint: str | Path, logs: str | Path, *, progress: bool = False) -> HeldOut:
    """The checkpoint's model and its recorded train / validation / test parts of `logs`. Raises
    ``NoRecordedSplit`` for a checkpoint without a split and ``SplitMismatch`` when the sessions of `logs` are not
    the ones that split was made from."""
    from edge_rerank.cloud.logs import read_logs
    from edge_rerank.cloud.training.data import build_samples
    from edge_rerank.cloud.training.train import read_checkpoint

    for what, p in (("checkpoint", checkpoint), ("logs", logs)):
        if not Path(p).exists():
            raise FileNotFoundError(f"{what} {p}: no such file or directory")
    ck = read_checkpoint(checkpoint)
    split = ck.require_split()
    samples = build_samples(read_logs(logs), ck.model.fcfg, progress=progress)
    parts = split.apply(samples, source=f"the logs in {logs}")
    train_, valid, test = _served(parts, ck.summary.get("joint"), ck.path, ck.model.fcfg)
    return HeldOut(ck.model, ck.summary, split, train_, valid, test, ck.path)


def _served(parts, joint: dict | None, checkpoint: Path | None, fcfg: FeatureConfig) -> list[Samples]:
    if not joint:
        return list(parts)
    from edge_rerank.cloud.training.cloud_ranker import CloudFeaturizer, load_cloud_ranker
    from edge_rerank.cloud.training.joint import served_samples

    ranker = Path(joint["cloud_ranker"])
    if not ranker.is_absolute() and checkpoint is not None:
        ranker = checkpoint.parent / ranker
    cloud, featurizer = load_cloud_ranker(ranker), CloudFeaturizer(joint["cloud_data"])
    return [served_samples(p, cloud, featurizer, fcfg) if len(p) else p for p in parts]


def _held_out(checkpoint_or_model: str | Path | TrainResult | HeldOut, logs: str | Path | None,
              progress: bool) -> HeldOut:
    if isinstance(checkpoint_or_model, TrainResult):
        return checkpoint_or_model.held_out
    if isinstance(checkpoint_or_model, HeldOut):
        return checkpoint_or_model
    if logs is None:
        raise ValueError("a checkpoint path needs logs= (the log directory it was trained on) for its test split")
    return load_held_out(checkpoint_or_model, logs, progress=progress)


def _write_split_record(bundle: Path, held: HeldOut) -> None:
    (Path(bundle) / SPLIT_FILE).write_text(json.dumps(held.split_record(), indent=2))


# ------------------------------------------------------------------ the entry points


def _skipped(r) -> dict:
    return {"files": r.skipped_files, "rows": r.skipped_rows, "examples": r.examples}


def train(logs: str | Path, out: str | Path, *, feature_config: FeatureConfig | str | Path | None = None,
          epochs: int | None = None, loss: str | None = None, seed: int = 0, split: SplitConfig | None = None,
          model_config: ModelConfig | None = None, train_config: TrainConfig | None = None,
          joint_cloud_data: str | Path | None = None, tune: int = 0, progress: bool = True,
          ray: RayOptions | None = None) -> TrainResult:
    """Train the device reranker on impression logs (a Parquet file or directory) into ``OUT/checkpoint.pt``.

    Sessions split three ways by `split` (default: 15 % validation, 15 % test, seeded by `seed`); early stopping
    and the best epoch on validation; test scored once at the end. The checkpoint records the split (each part's
    session ids, config, hash). With `joint_cloud_data` (the cloud's data directory) the cloud ranker is trained
    jointly too (``OUT/cloud_ranker.pt`` and ``OUT/ranker.onnx`` for the server). Without `feature_config`,
    v1 logs get the simulator world's config and v2 logs a config fitted to them (``edge-rerank logs
    infer-config``). `train_config` sets the optimisation (learning rate, batch size, patience, ...; default
    ``TrainConfig(epochs=15, seed=seed)``); `epochs` and `loss`, when given, override its fields. With ``tune=N``
    an Optuna search of N trials (``cloud.training.tune``, scored on the validation sessions only) picks the model
    and training configuration first; the search is recorded in the summary (``tune``). With `ray`
    (:class:`~edge_rerank.cloud.training.ray_train.RayOptions`: workers, cluster address) the samples are built on
    Ray Data and the model trained data-parallel on Ray Train: the same samples, split, evaluation and checkpoint
    format (not with `tune`, which runs in one process; with `joint_cloud_data` the samples are built in this
    process and the three joint stages train on Ray Train)."""
    from edge_rerank.cloud.logs import LogReadReport, read_logs
    from edge_rerank.cloud.training.data import SplitConfig, build_samples, split_sessions
    from edge_rerank.cloud.training.train import TrainConfig, fit, save_checkpoint
    from edge_rerank.device_sdk.features import FeatureConfig
    from edge_rerank.device_sdk.features.operators import load_feature_config

    if ray is not None and tune:
        raise ValueError("--tune runs its trials in one process (drop --ray)")
    if feature_config is None or isinstance(feature_config, FeatureConfig):
        fcfg = feature_config
    else:
        fcfg = load_feature_config(feature_config)
    # first: unreadable files go to quarantine/ (so the config inference below sees readable files only), invalid
    # rows are skipped and counted
    log_report = LogReadReport()
    if ray is None or joint_cloud_data is not None:  # joint training: the cloud ranker's pages need the rows
        rows = read_logs(logs, report=log_report)
        n_rows = len(rows)
        if fcfg is None:
            from edge_rerank.cloud.log_tools import infer_config, logs_are_v2

            # v1 logs: the simulator world's config; v2 logs declare their fields: a config fitted to them
            fcfg = infer_config(logs)[0] if logs_are_v2(logs) else feature_config_for()
        samples = build_samples(rows, fcfg, progress=progress)
    else:  # the same reads, quarantine, config choice and samples, on Ray Data
        from edge_rerank.cloud.training.ray_data import build_samples_ray

        samples, ray_report = build_samples_ray(logs, fcfg, address=ray.address,
                                                v1_config=feature_config_for() if fcfg is None else None)
        fcfg, log_report, n_rows = ray_report.feature_config, ray_report.log_report, ray_report.rows
    if log_report.skipped_files or log_report.skipped_rows:
        import sys

        print(f"training logs: {log_report.summary()}", file=sys.stderr)
    out = Path(out)
    record, tr, va, te = split_sessions(samples, split or SplitConfig(seed=seed))
    if min(len(tr), len(va), len(te)) == 0:
        raise ValueError(f"the logs' {len(set(samples.session_ids))} sessions leave a split part empty "
                         f"({record.counts()}): log more sessions")
    tcfg = train_config or TrainConfig(epochs=DEFAULT_EPOCHS, seed=seed)
    tcfg = replace(tcfg, **{k: v for k, v in (("epochs", epochs), ("loss", loss)) if v is not None})
    searched = None
    if tune:
        from edge_rerank.cloud.training.tune import tune as search

        searched = search(tr, va, fcfg, tune, mcfg=model_config, tcfg=tcfg, progress=progress)
        model_config, tcfg = searched.model_config, searched.train_config
    if joint_cloud_data is None:
        if ray is None:
            model, summary = fit(tr, va, fcfg, model_config, tcfg, test=te, progress=progress)
        else:
            from edge_rerank.cloud.training.ray_train import fit_ray

            model, summary = fit_ray(tr, va, fcfg, model_config, tcfg, test=te, options=ray, progress=progress)
        checkpoint = save_checkpoint(model, out / "checkpoint.pt", summary | {"log_rows": n_rows,
                                                                                "log_skipped": _skipped(log_report)},
                                     record)
    else:
        from edge_rerank.cloud.training.cloud_ranker import CloudFeaturizer, export_cloud_ranker_onnx
        from edge_rerank.cloud.training.joint import save_joint, served_samples, train_joint

        cloud, model, summary = train_joint(rows, joint_cloud_data, tr, va, fcfg, model_config, tcfg, test=te,
                                            progress=progress, ray=ray)
        summary["joint"] = {"cloud_data": str(Path(joint_cloud_data).resolve()), "cloud_ranker": "cloud_ranker.pt"}
        summary["log_rows"] = n_rows
        summary["log_skipped"] = _skipped(log_report)
        _, checkpoint = save_joint(cloud, model, out, summary, record)
        export_cloud_ranker_onnx(cloud, out / "ranker.onnx")
        featurizer = CloudFeaturizer(joint_cloud_data)
        tr, va, te = (served_samples(p, cloud, featurizer, fcfg) for p in (tr, va, te))
    summary = summary | {"log_rows": n_rows, "log_skipped": _skipped(log_report), "split": record.describe()}
    if searched is not None:
        summary["tune"] = searched.to_dict()
    held = HeldOut(model, summary, record, tr, va, te, checkpoint)
    return TrainResult(checkpoint=checkpoint, train_lists=len(tr), valid_lists=len(va), test_lists=len(te),
                       valid=summary["valid_model"], test=summary["test_model"],
                       test_cloud_order=summary["test_cloud_order"], split=record.describe(),
                       epochs_run=int(summary.get("epochs_run", summary.get("finetune", {}).get("epochs_run", 0))),
                       params=int(summary["params"]), summary=summary, held_out=held)


def export(checkpoint_or_model: str | Path | TrainResult | HeldOut, out: str | Path,
           formats: Sequence[str] = ("onnx",), *, logs: str | Path | None = None, version: str = "dev",
           n_validate: int = 300, latency_runs: int = 200, progress: bool = False) -> ExportResult:
    """Export to each format (``onnx``, ``tflite``, ``coreml``, ``mnn``) as a verified bundle under
    ``OUT/<format>/``, validated against torch on the model's recorded test lists (from `logs` for a checkpoint
    path; a :class:`TrainResult` carries them). Writes ``OUT/export_report.json``."""
    from edge_rerank.converters.export import export_formats

    held = _held_out(checkpoint_or_model, logs, progress)
    report = export_formats(held.model, held.test.inputs, out, formats=list(formats), version=version,
                            metrics=held.summary.get("test_model", {}), n_validate=n_validate,
                            latency_runs=latency_runs, progress=progress)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "export_report.json").write_text(json.dumps(report.to_dict(), indent=2, default=str))
    bundles = {r.format: Path(r.bundle) for r in report.results if r.bundle}
    for b in bundles.values():
        _write_split_record(b, held)
    parity = {r.format: {"status": r.status, "max_abs_diff": r.vs_torch.max_abs_diff if r.vs_torch else None,
                         "mean_kendall_tau": r.vs_torch.mean_kendall_tau if r.vs_torch else None}
              for r in report.results}
    return ExportResult(out, report.ok, bundles, report.n_lists, parity, report.failures, report)


def compress(checkpoint_or_model: str | Path | TrainResult | HeldOut, out: str | Path, preset: str = "default", *,
             logs: str | Path | None = None, n_lists: int = 300, version: str | None = None,
             fp32_onnx: str | Path | None = None, progress: bool = False) -> CompressResult:
    """Build a compression preset's bundle (``OUT/bundle``) and check its accuracy budget against the fp32 model
    on the recorded test lists; methods that fine-tune pick epochs on the recorded validation lists. Raises
    ``BudgetExceeded`` (no bundle) when the budget is broken. Writes ``OUT/preset.json``."""
    from edge_rerank.compression.presets import run_preset

    held = _held_out(checkpoint_or_model, logs, progress)
    out = Path(out)
    check, bundle = run_preset(preset, held.model, held.train, held.test, out, n_lists=n_lists,
                               version=version or preset, metrics=held.summary.get("test_model", {}),
                               fp32_onnx=fp32_onnx, tune=held.valid, progress=progress)
    _write_split_record(bundle, held)
    (out / "preset.json").write_text(json.dumps(check.to_dict(), indent=2))
    return CompressResult(Path(bundle), check.preset, check.method, check.file_kb, check.rel_ndcg10_loss_pct,
                          check.mean_kendall_tau, check.n_lists, check)


def compress_benchmark(checkpoint_or_model: str | Path | TrainResult | HeldOut, out: str | Path, *,
                       logs: str | Path | None = None, methods: Sequence[str] | None = None, n_lists: int = 300,
                       simulation: SimulationSetup | None = None, progress: bool = False,
                       **ctx_kw: Any) -> list[MethodResult]:
    """Every compression method (or `methods`) measured on the recorded test lists: size, fidelity, NDCG@10,
    latency, and the simulator's QV_CTR with `simulation`; writes compression.json / .md and pareto.png."""
    from edge_rerank.compression_ab import benchmark

    held = _held_out(checkpoint_or_model, logs, progress)
    return benchmark(held.model, held.train, held.test, out, methods=list(methods) if methods else None,
                         n_lists=n_lists, simulation=simulation, progress=progress, tune=held.valid, **ctx_kw)


def evaluate(checkpoint_or_bundle: str | Path | TrainResult, logs: str | Path, *, backend: str | None = None,
             progress: bool = False) -> EvalResult:
    """NDCG@5/10, MRR and AUC of a checkpoint (torch) or a bundle (its device backend) against the logged cloud
    order, on the recorded test split of `logs`. A bundle carries the split's record (``split.json``, written by
    :func:`export` / :func:`compress`): seed, shares and the hash of the sessions, verified against `logs`."""
    from edge_rerank.cloud.training.train import cloud_order_scores
    from edge_rerank.cloud.training.train import evaluate_lists as metrics

    src = checkpoint_or_bundle
    if isinstance(src, TrainResult):
        src = src.checkpoint
    src = Path(src)
    if src.is_dir():
        from edge_rerank.cloud.logs import read_logs
        from edge_rerank.cloud.training.data import build_samples, split_from_record
        from edge_rerank.compression.benchmark import score_lists
        from edge_rerank.device_sdk.model_manager import load_model

        rec_file = src / SPLIT_FILE
        if not rec_file.is_file():
            raise FileNotFoundError(f"{src} has no {SPLIT_FILE}: evaluate the checkpoint it was exported from, or "
                                    "export it again with edge_rerank.api.export / compress")
        rec = json.loads(rec_file.read_text())
        loaded = load_model(src, backend=backend)
        samples = build_samples(read_logs(logs), loaded.bundle.feature_config, progress=progress)
        split = split_from_record(rec["split"], samples.session_ids, source=f"the logs in {logs}")
        _, _, test = _served(split.parts_of(samples), rec.get("joint"),
                             Path(rec["checkpoint"]) if rec.get("checkpoint") else None, loaded.bundle.feature_config)
        scores = score_lists(loaded.backend.run, test.inputs)
    else:
        from edge_rerank.cloud.training.train import predict

        held = load_held_out(src, logs, progress=progress)
        split, test = held.split, held.test
        scores = predict(held.model, test)
    return EvalResult(str(src), len(test), metrics(scores, test), metrics(cloud_order_scores(test), test),
                      split.describe())
