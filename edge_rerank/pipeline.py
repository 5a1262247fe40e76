"""The end-to-end story, one stage per function (each also a CLI subcommand):

simulate (cloud-only sessions against the real server, logs uploaded as Parquet) -> train -> export ->
A/B in the simulator (cloud order vs the device SDK reranking unseen items) -> report.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from edge_rerank.cloud.app import CloudConfig
from edge_rerank.cloud.serve import running_server
from edge_rerank.converters.specs import MODEL_FILES
from edge_rerank.device_sdk.features import FeatureConfig
from edge_rerank.device_sdk.model_manager import load_model
from edge_rerank.device_sdk.privacy import PrivacyConfig
from edge_rerank.device_sdk.reranker import RerankService
from edge_rerank.simulator.ab import Arm, run_ab, run_sessions
from edge_rerank.simulator.phone import Phone
from edge_rerank.simulator.transport import HttpCloud
from edge_rerank.simulator.user_model import UserModel
from edge_rerank.simulator.world import World, WorldConfig


@dataclass(frozen=True)
class DemoConfig:
    out: str = "runs/demo"
    seed: int = 0
    log_sessions: int = 6000
    ab_sessions: int = 4000
    epochs: int = 15
    loss: str = "lambda"
    server_workers: int = 1
    validate_lists: int = 300


QUICK = {"log_sessions": 700, "ab_sessions": 500, "epochs": 4, "validate_lists": 60}


def feature_config_for(world: WorldConfig) -> FeatureConfig:
    return FeatureConfig(emb_dim=world.emb_dim, dense_dim=world.dense_dim,
                         n_categories=world.n_categories, n_brands=world.n_brands)


def simulate_sessions_with_uploads(phone: Phone, specs, cloud, *, progress: bool = True,
                                   desc: str = "simulate (cloud-only, logging)") -> int:
    """Run sessions on `phone`; whatever impression-log rows the phone's privacy settings let out are
    uploaded to `cloud` in batches. Returns the rows the cloud acknowledged."""
    sent = [0]

    def upload(rows):
        sent[0] += cloud.post_logs(rows)

    run_sessions(phone, specs, desc=desc, progress=progress, on_rows=upload)
    return sent[0]


def simulate_logs(world: World, cloud: HttpCloud, n_sessions: int, seed: int, progress: bool = True) -> int:
    """Cloud-only sessions of opted-in users; the trigger policy marks would-be rerank points; rows go to
    /v1/logs."""
    phone = Phone(UserModel(world), cloud, arm="cloud", reranker=None,
                  privacy=PrivacyConfig(share_impression_logs=True))
    return simulate_sessions_with_uploads(phone, [world.session(i, seed) for i in range(n_sessions)], cloud,
                                          progress=progress)


def train_from_logs(logs: str | Path, out: str | Path, fcfg: FeatureConfig, *, epochs: int, loss: str, seed: int,
                    progress: bool = True, model_config=None, cloud_data: str | Path | None = None
                    ) -> tuple[object, dict, object]:
    """Train the device reranker from impression logs; with `cloud_data` (the cloud's data directory), run the
    three-stage cloud-device joint training and also write the cloud ranker (``cloud_ranker.pt``, ``ranker.onnx``
    for the server). Returns (device model, summary, validation samples as the device will see them)."""
    from edge_rerank.cloud.logs import read_logs
    from edge_rerank.cloud.training.data import build_samples, split_by_session
    from edge_rerank.cloud.training.train import TrainConfig, fit, save_checkpoint

    rows = read_logs(logs)
    samples = build_samples(rows, fcfg, progress=progress)
    tcfg = TrainConfig(epochs=epochs, loss=loss, seed=seed)
    out = Path(out)
    if cloud_data is None:
        train, valid = split_by_session(samples, seed=seed)
        model, summary = fit(train, valid, fcfg, model_config, tcfg, progress=progress)
        save_checkpoint(model, out / "checkpoint.pt", summary)
    else:
        from edge_rerank.cloud.training.cloud_ranker import CloudFeaturizer, export_cloud_ranker_onnx
        from edge_rerank.cloud.training.joint import save_joint, served_samples, train_joint

        train, valid = split_by_session(samples, seed=seed)
        cloud, model, summary = train_joint(rows, cloud_data, train, valid, fcfg, model_config, tcfg,
                                            progress=progress)
        save_joint(cloud, model, out, summary)
        export_cloud_ranker_onnx(cloud, out / "ranker.onnx")
        valid = served_samples(valid, cloud, CloudFeaturizer(cloud_data), fcfg)
    summary["log_rows"] = len(rows)
    return model, summary, valid


def export_bundle(model, valid, out: str | Path, *, version: str, n_validate: int, metrics: dict) -> tuple[Path, dict]:
    """The ONNX bundle (``OUT/onnx/``) through the converters' one export path, validated against torch on real
    held-out lists (edge cases included); (bundle directory, parity report vs torch). Raises if it fails."""
    from edge_rerank.converters.export import export_formats

    report = export_formats(model, valid.inputs, out, formats=["onnx"], version=version, metrics=metrics,
                            n_validate=n_validate, latency_runs=50, progress=False)
    res = report.results[0]
    if not res.ok or res.bundle is None or res.vs_torch is None:
        raise RuntimeError(f"ONNX export failed validation: {res.errors or res.status}")
    return Path(res.bundle), res.vs_torch.to_dict()


def run_demo(cfg: DemoConfig, *, progress: bool = True) -> dict:
    from edge_rerank.simulator.report import write_report

    t0 = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    wcfg = WorldConfig(seed=cfg.seed)
    world = World(wcfg)
    fcfg = feature_config_for(wcfg)
    data_dir = world.provision_cloud(out / "cloud_data")
    log_dir = out / "logs"
    for old in log_dir.glob("*.parquet"):
        old.unlink()
    api_key = secrets.token_hex(16)
    stages: dict[str, float] = {}
    with running_server(CloudConfig(data_dir=str(data_dir), log_dir=str(log_dir), api_key=api_key,
                                    model_version="device-reranker@demo"),
                        workers=cfg.server_workers, log_file=out / "server.log") as url:
        cloud = HttpCloud(url, api_key=api_key)
        t = time.perf_counter()
        n_rows = simulate_logs(world, cloud, cfg.log_sessions, seed=1000 + cfg.seed, progress=progress)
        stages["simulate_logs_s"] = time.perf_counter() - t

        t = time.perf_counter()
        model, summary, valid = train_from_logs(log_dir, out, fcfg, epochs=cfg.epochs, loss=cfg.loss, seed=cfg.seed,
                                                progress=progress)
        stages["train_s"] = time.perf_counter() - t

        t = time.perf_counter()
        bundle_dir, validation = export_bundle(model, valid, out, version=f"demo-{cfg.seed}",
                                               n_validate=cfg.validate_lists, metrics=summary["valid_model"])
        stages["export_s"] = time.perf_counter() - t

        # what ships: the default compression preset (fp16 ONNX), checked against its accuracy budget on
        # held-out lists; the A/B's device arm runs this bundle
        from edge_rerank.compression.presets import run_preset

        t = time.perf_counter()
        shipped, shipped_dir = run_preset("default", model, None, valid, out / "shipped", n_lists=cfg.validate_lists,
                                          version=f"demo-{cfg.seed}", metrics=summary["valid_model"],
                                          fp32_onnx=Path(bundle_dir) / MODEL_FILES["onnx"])
        stages["compress_s"] = time.perf_counter() - t

        t = time.perf_counter()
        loaded = load_model(shipped_dir, backend="onnxruntime", expected_fingerprint=fcfg.fingerprint())
        # The phone gates reranks on the *modelled* device latency (simulator.phone); a gate on this machine's
        # wall clock would make the A/B depend on its load, so the SDK's own host gate is off here.
        arms = [Arm("A_cloud"), Arm("B_device", RerankService(loaded))]
        results = run_ab(UserModel(world), cloud, arms, cfg.ab_sessions, seed=2000 + cfg.seed, progress=progress)
        stages["ab_s"] = time.perf_counter() - t
        cloud.close()

    model_bytes = loaded.bundle.manifest.model_bytes
    sv, sc = summary["valid_model"], summary["valid_cloud_order"]
    extra_md = "\n".join([
        "## Model", "",
        f"- trained on {summary['train_lists']} rerank lists from {n_rows} logged lists "
        f"({cfg.log_sessions} cloud-only sessions); {summary['params']:,} parameters; "
        f"{summary['epochs_run']} epochs, {summary['lists_per_s']:.0f} lists/s",
        f"- offline (held-out sessions, {summary['valid_lists']} lists): NDCG@5 {sv['ndcg@5']:.4f} vs cloud order "
        f"{sc['ndcg@5']:.4f}; NDCG@10 {sv['ndcg@10']:.4f} vs {sc['ndcg@10']:.4f}",
        f"- fp32 ONNX export {Path(bundle_dir).joinpath(MODEL_FILES['onnx']).stat().st_size / 1024:.1f} KiB; parity "
        f"vs torch on {validation['n_lists']} real lists: max |Δ| {validation['max_abs_diff']:.2e}, Kendall τ "
        f"{validation['mean_kendall_tau']:.4f}, top-5 overlap {validation['mean_top5_overlap']:.3f}",
        f"- shipped bundle (preset `default`, {shipped.method}, `{shipped_dir}`): {model_bytes / 1024:.1f} KiB; "
        f"vs fp32 on {shipped.n_lists} held-out lists: NDCG@10 loss {shipped.rel_ndcg10_loss_pct:+.3f} %, "
        f"mean Kendall τ {shipped.mean_kendall_tau:.4f} (budget: ≤ 0.1 %, ≥ 0.99, ≤ 1 MB)",
        "- stage times (s): " + ", ".join(f"{k[:-2]} {v:.1f}" for k, v in stages.items()),
    ])
    data = write_report(out, results, title="edge-rerank demo: cloud order (A) vs on-device rerank (B)",
                        extra_md=extra_md, seed=cfg.seed,
                        extra_json={"train": {k: v for k, v in summary.items() if k != "history"},
                                    "validation": validation, "model_bytes": model_bytes,
                                    "shipped": shipped.to_dict(), "stages_s": stages,
                                    "config": asdict(cfg)})
    data["total_s"] = time.perf_counter() - t0
    (out / "report.json").write_text(json.dumps(data, indent=2, default=float))
    return data


def quick(cfg: DemoConfig) -> DemoConfig:
    return replace(cfg, **QUICK)

