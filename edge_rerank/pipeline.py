"""The end-to-end story, one stage per function (each also a CLI subcommand):

simulate (cloud-only sessions against the real server, logs uploaded as Parquet) -> train -> export ->
compress -> A/B in the simulator (cloud order vs the device SDK reranking unseen items) -> report.
Train, export and compress are ``edge_rerank.api``'s functions; every held-out number is on the trained model's
recorded test sessions.
"""

from __future__ import annotations

import json
import secrets
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from edge_rerank import report_format as rf
from edge_rerank.api import compress, export, feature_config_for, train
from edge_rerank.cloud.app import CloudConfig
from edge_rerank.cloud.serve import running_server
from edge_rerank.compression.presets import BudgetExceeded
from edge_rerank.converters.specs import MODEL_FILES
from edge_rerank.device_sdk.model_manager import load_model
from edge_rerank.device_sdk.privacy import PrivacyConfig
from edge_rerank.device_sdk.reranker import RerankService
from edge_rerank.simulator.ab import Arm, run_ab, run_sessions
from edge_rerank.simulator.phone import Phone
from edge_rerank.simulator.transport import HttpCloud
from edge_rerank.simulator.user_model import UserModel
from edge_rerank.simulator.world import World, WorldConfig

__all__ = ["DemoConfig", "export_bundle", "feature_config_for", "quick", "run_demo", "simulate_logs"]


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
    world: str = "shop"  # simulated domain: "shop" or "feed" (WorldConfig.domain)
    replay_sessions: int = 40  # A/B sessions recorded for the replay page (replay.html; 0: none)
    # the cloud's coarse stage (issue 16): two towers trained on the logged sessions, published to the demo's
    # registry; the A/B's cloud serves through it, and its cloud arm is compared with the same sessions served
    # without it. 0: no coarse stage (every recalled item goes to the fine ranker, the demo before issue 16)
    coarse_top_k: int = 100
    coarse_epochs: int = 4


QUICK = {"log_sessions": 700, "ab_sessions": 500, "epochs": 4, "validate_lists": 60, "replay_sessions": 20}


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


def export_bundle(model, test, out: str | Path, *, version: str, n_validate: int, metrics: dict) -> tuple[Path, dict]:
    """The ONNX bundle (``OUT/onnx/``) through the converters' one export path, validated against torch on real
    lists never used in training (`test`: the model's test split; edge cases included); (bundle directory, parity
    report vs torch). Raises if it fails. For a checkpoint, ``edge_rerank.api.export`` loads its recorded split."""
    from edge_rerank.converters.export import export_formats

    report = export_formats(model, test.inputs, out, formats=["onnx"], version=version, metrics=metrics,
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
    wcfg = WorldConfig(seed=cfg.seed, domain=cfg.world)
    world = World(wcfg)
    fcfg = feature_config_for(wcfg)
    data_dir = world.provision_cloud(out / "cloud_data")
    log_dir = out / "logs"
    for old in log_dir.glob("*.parquet"):
        old.unlink()
    registry_dir = out / "registry"
    if registry_dir.exists():
        shutil.rmtree(registry_dir)
    api_key = secrets.token_hex(16)
    stages: dict[str, float] = {}
    server_cfg = CloudConfig(data_dir=str(data_dir), log_dir=str(log_dir), api_key=api_key,
                             model_version="device-reranker@demo")
    with running_server(server_cfg, workers=cfg.server_workers, log_file=out / "server.log") as url:
        cloud = HttpCloud(url, api_key=api_key)
        t = time.perf_counter()
        n_rows = simulate_logs(world, cloud, cfg.log_sessions, seed=1000 + cfg.seed, progress=progress)
        stages["simulate_logs_s"] = time.perf_counter() - t
        cloud.close()

    coarse = None
    if cfg.coarse_top_k > 0:  # the cloud's coarse stage, from the same logs, served from the next start on
        t = time.perf_counter()
        coarse = train_publish_coarse(cfg, data_dir, log_dir, out / "coarse", registry_dir)
        stages["coarse_s"] = time.perf_counter() - t
        server_cfg = replace(server_cfg, registry_dir=str(registry_dir))

    t = time.perf_counter()
    trained = train(log_dir, out, feature_config=fcfg, epochs=cfg.epochs, loss=cfg.loss, seed=cfg.seed,
                    progress=progress)
    summary = trained.summary
    stages["train_s"] = time.perf_counter() - t

    t = time.perf_counter()
    exported = export(trained, out, formats=["onnx"], version=f"demo-{cfg.seed}", n_validate=cfg.validate_lists,
                      latency_runs=50)
    if not exported.ok:
        raise RuntimeError(f"ONNX export failed validation: {exported.errors}")
    bundle_dir = exported.bundles["onnx"]
    validation = exported.report.by_format("onnx").vs_torch.to_dict()
    stages["export_s"] = time.perf_counter() - t

    # what ships: the default compression preset (fp16 ONNX), checked against its accuracy budget on the
    # recorded test lists; the A/B's device arm runs this bundle. A model whose near-tied scores fp16 reorders
    # beyond that budget (seen with the --quick model) ships the lossless fp32 preset instead, and says so.
    t = time.perf_counter()
    fallback = ""
    try:
        shipped = compress(trained, out / "shipped", "default", n_lists=cfg.validate_lists,
                           version=f"demo-{cfg.seed}", fp32_onnx=Path(bundle_dir) / MODEL_FILES["onnx"])
    except BudgetExceeded as exc:
        fallback = str(exc)
        shipped = compress(trained, out / "shipped", "lossless", n_lists=cfg.validate_lists,
                           version=f"demo-{cfg.seed}", fp32_onnx=Path(bundle_dir) / MODEL_FILES["onnx"])
    shipped_dir = shipped.bundle
    stages["compress_s"] = time.perf_counter() - t

    with running_server(server_cfg, workers=cfg.server_workers, log_file=out / "server_ab.log") as url:
        cloud = HttpCloud(url, api_key=api_key)
        served = cloud_coarse_kind(url)
        if coarse is not None and served != "two-tower":
            raise RuntimeError(f"the demo's cloud does not serve the trained coarse stage (healthz: {served!r}); "
                               f"see {out / 'server_ab.log'}")
        t = time.perf_counter()
        loaded = load_model(shipped_dir, backend="onnxruntime", expected_fingerprint=fcfg.fingerprint())
        # The phone gates reranks on the *modelled* device latency (simulator.phone); a gate on this machine's
        # wall clock would make the A/B depend on its load, so the SDK's own host gate is off here.
        arms = [Arm("A_cloud"), Arm("B_device", RerankService(loaded))]
        results = run_ab(UserModel(world), cloud, arms, cfg.ab_sessions, seed=2000 + cfg.seed, progress=progress)
        stages["ab_s"] = time.perf_counter() - t
        replay_md = _write_replay(out, UserModel(world), cloud, arms, min(cfg.replay_sessions, cfg.ab_sessions),
                                  seed=2000 + cfg.seed)
        cloud.close()

    coarse_md, coarse_json = [], {}
    if coarse is not None:  # the A/B's cloud arm served without the coarse stage: same sessions, paired
        t = time.perf_counter()
        coarse_md, coarse_json = compare_without_coarse(world, data_dir, results[0], cfg, coarse, progress=progress)
        stages["coarse_ab_s"] = time.perf_counter() - t

    model_bytes = loaded.bundle.manifest.model_bytes
    st, sc, sv = trained.test, trained.test_cloud_order, trained.valid
    sp = trained.split
    extra_md = "\n".join([
        *replay_md,
        *coarse_md,
        "## Model", "",
        *rf.caveats(rf.lists_caveat(trained.test_lists, what="test lists behind the offline numbers")),
        f"- trained on {trained.train_lists:,} rerank lists from {n_rows:,} logged lists "
        f"({cfg.log_sessions:,} cloud-only sessions; split by session {sp['sessions']['train']:,} train / "
        f"{sp['sessions']['valid']:,} validation / {sp['sessions']['test']:,} test, seed {sp['seed']}); "
        f"{trained.params:,} parameters; {trained.epochs_run} epochs (best by validation NDCG@10 "
        f"{sv['ndcg@10']:.4f} on {trained.valid_lists:,} lists), {summary['lists_per_s']:,.0f} lists/s",
        f"- offline (test sessions, {trained.test_lists:,} lists, never seen by training or epoch selection): "
        f"NDCG@5 {st['ndcg@5']:.4f} vs cloud order {sc['ndcg@5']:.4f}; NDCG@10 {st['ndcg@10']:.4f} vs "
        f"{sc['ndcg@10']:.4f}",
        f"- fp32 ONNX export {Path(bundle_dir).joinpath(MODEL_FILES['onnx']).stat().st_size / 1024:.1f} KiB; parity "
        f"vs torch on {validation['n_lists']} real lists: max |Δ| {validation['max_abs_diff']:.2e}, Kendall τ "
        f"{validation['mean_kendall_tau']:.4f}, top-5 overlap {validation['mean_top5_overlap']:.3f}",
        f"- shipped bundle (preset `{shipped.preset}`, {shipped.method}, `{shipped_dir}`): {model_bytes / 1024:.1f} "
        f"KiB; vs fp32 on {shipped.n_lists} test lists: NDCG@10 loss {shipped.rel_ndcg10_loss_pct:+.3f} %, "
        f"mean Kendall τ {shipped.mean_kendall_tau:.4f}" + (" (budget: ≤ 0.1 %, ≥ 0.99, ≤ 1 MB)" if not fallback
                                                          else f" — the default preset was not shipped: {fallback}"),
        "- stage times (s): " + ", ".join(f"{k[:-2]} {v:.1f}" for k, v in stages.items()),
    ])
    data = write_report(out, results, title="edge-rerank demo: cloud order (A) vs on-device rerank (B)",
                        extra_md=extra_md, seed=cfg.seed,
                        extra_json={"train": {k: v for k, v in summary.items() if k != "history"},
                                    "validation": validation, "model_bytes": model_bytes,
                                    "shipped": shipped.check.to_dict() | {"fallback_from_default": fallback},
                                    "stages_s": stages, "coarse": coarse_json,
                                    "config": asdict(cfg)})
    data["total_s"] = time.perf_counter() - t0
    (out / "report.json").write_text(json.dumps(data, indent=2, default=float))
    return data


def _write_replay(out: Path, user_model: UserModel, cloud, arms: list[Arm], n: int, *, seed: int) -> list[str]:
    """Record the first `n` A/B sessions (the same specs the A/B ran) for the replay page; the report's lines."""
    if n <= 0:
        return []
    from edge_rerank.replay_page import PAGE_FILE, write_page
    from edge_rerank.simulator.replay import TRACES_FILE, record_replays, write_traces

    traces = record_replays(user_model, cloud, arms, [user_model.world.session(i, seed) for i in range(n)])
    write_traces(traces, out / TRACES_FILE)
    write_page(out, title="edge-rerank demo")
    ss = traces["sessions"]
    differ = [s for s in ss if s["outcome_differs"]]
    example = f" ([the first of them]({PAGE_FILE}#session={differ[0]['id']}))" if differ else ""
    return ["## Session replay", "",
            f"[Watch the first {n} A/B sessions]({PAGE_FILE}) (`{PAGE_FILE}`, self-contained; `edge-rerank replay "
            f"{out} --serve` serves it): A and B side by side, each trigger and rerank, what moved. "
            f"{len(differ)} of them end differently in the two arms{example}, "
            f"{sum(s['has_orders'] for s in ss)} have orders.", ""]


def quick(cfg: DemoConfig) -> DemoConfig:
    return replace(cfg, **QUICK)



def cloud_coarse_kind(url: str) -> str:
    """What coarse stage a running cloud serves (its /healthz), e.g. "two-tower" or "pass-through"."""
    import requests

    health = requests.get(url + "/healthz", timeout=10).json()
    coarse = health.get("coarse", {})
    return str(coarse.get("kind", "")) if isinstance(coarse, dict) else str(coarse)


def train_publish_coarse(cfg: DemoConfig, data_dir: Path, log_dir: Path, out: Path, registry_dir: Path):
    """The coarse two towers (multi-head soft-attention dot, fine-ranker distillation, no teacher: the demo keeps
    it short) trained on the logged sessions' train split, exported and published as the registry's stable
    ``coarse-ranker``."""
    from edge_rerank.cloud.ranking.coarse import CoarseServing
    from edge_rerank.cloud.training.coarse_model import CoarseModelConfig
    from edge_rerank.cloud.training.coarse_pipeline import train_and_publish
    from edge_rerank.cloud.training.coarse_train import CoarseTrainConfig

    return train_and_publish(data_dir, log_dir, out, registry_dir, version=f"demo-{cfg.seed}",
                             model=CoarseModelConfig(variant="soft"),
                             train=CoarseTrainConfig(epochs=cfg.coarse_epochs, seed=cfg.seed, fine_weight=1.0),
                             serving=CoarseServing(top_k=cfg.coarse_top_k))


def compare_without_coarse(world: World, data_dir: Path, with_coarse, cfg: DemoConfig, coarse, *,
                           progress: bool = True) -> tuple[list[str], dict]:
    """The A/B's cloud arm (served through the coarse stage) against the same sessions served without it (the
    cloud's pipeline in-process, no coarse bundle: pages identical to HTTP's, tests/test_simulator_arms.py):
    paired differences with bootstrap CIs, and the report's lines."""
    from edge_rerank.simulator.ab import paired_delta, summarize
    from edge_rerank.simulator.transport import InProcessCloud

    cloud = InProcessCloud(str(data_dir), wire=False)  # data_dir has no coarse bundle: recall -> fine
    kind = getattr(cloud._pipeline.coarse, "kind", "")
    if kind != "pass-through":
        raise RuntimeError(f"the no-coarse comparison arm runs a {kind!r} coarse stage")
    specs = [world.session(i, 2000 + cfg.seed) for i in range(cfg.ab_sessions)]
    outcomes = run_sessions(Arm("A_cloud_no_coarse").phone(UserModel(world), cloud), specs,
                            desc="A/B arm A without the coarse stage", progress=progress)
    without = summarize("A_cloud_no_coarse", outcomes, seed=2000 + cfg.seed)
    deltas = {m: paired_delta(without, with_coarse, m, seed=2000 + cfg.seed)
              for m in ("qv_ctr", "clicks", "orders")}
    test = coarse.trained.summary["test"]
    rec = test.get("recall@100_of_fine_page1", {})
    data = {"top_k": cfg.coarse_top_k, "version": coarse.version, "bundle": str(coarse.bundle),
            "seconds": coarse.seconds, "test": {k: v for k, v in test.items() if k != "history"},
            "without": {m: asdict(without.metrics[m]) for m in deltas},
            "with": {m: asdict(with_coarse.metrics[m]) for m in deltas},
            "delta_with_minus_without": {m: asdict(d) for m, d in deltas.items()}}
    dq = deltas["qv_ctr"]
    md = ["## Cloud coarse stage (two towers)", "",
          f"- the A/B's cloud (both arms) ranks recall → **coarse** (two towers, `{coarse.name}@{coarse.version}` "
          f"from the demo's registry, top {cfg.coarse_top_k}) → fine; trained on the logged sessions' train split "
          f"({coarse.trained.summary['train_views']:,} query views, {coarse.seconds['train_s']:.1f} s)",
          f"- held out ({coarse.trained.summary['test_views']:,} test query views): click AUC {test['auc']:.4f}, "
          f"consistency with the fine ranker {test['consistency']['mean']:.4f} "
          f"[{test['consistency']['lo']:.4f}, {test['consistency']['hi']:.4f}]"
          + (f", recall@100 of the fine ranker's page 1 {rec['mean']:.3f}" if rec else ""),
          f"- cloud arm A with vs without the coarse stage ({cfg.ab_sessions:,} paired sessions): QV_CTR "
          f"{with_coarse.metrics['qv_ctr'].mean * 100:.2f} % vs {without.metrics['qv_ctr'].mean * 100:.2f} %, "
          f"Δ **{dq.mean * 100:+.2f} pp [{dq.lo * 100:+.2f}, {dq.hi * 100:+.2f}]**; clicks / query "
          f"{deltas['clicks'].mean:+.3f} [{deltas['clicks'].lo:+.3f}, {deltas['clicks'].hi:+.3f}]", ""]
    return md, data
