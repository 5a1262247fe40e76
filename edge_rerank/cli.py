"""``edge-rerank`` command line: demo, simulate, train, eval, ablate, export, compress, serve, logs, replay,
coarse, fusion. Train, eval, export and compress call ``edge_rerank.api``; this module only parses and prints."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

from edge_rerank import __version__
from edge_rerank.cloud.training.configs import ModelConfig, TrainConfig
from edge_rerank.console import configure_output

if TYPE_CHECKING:
    from edge_rerank.cloud.training.data import SplitConfig


def _cmd_demo(a: argparse.Namespace) -> int:
    from edge_rerank.pipeline import DemoConfig, quick, run_demo

    cfg = DemoConfig(out=a.out, seed=a.seed)
    if a.quick:
        cfg = quick(cfg)
    overrides = {f.name: getattr(a, f.name) for f in fields(DemoConfig)
                 if f.name not in ("out", "seed") and getattr(a, f.name, None) is not None}
    cfg = DemoConfig(**{**cfg.__dict__, **overrides})
    data = run_demo(cfg, progress=not a.no_progress)
    print((Path(cfg.out) / "report.md").read_text())
    print(f"report: {Path(cfg.out) / 'report.md'}  (total {data['total_s']:.0f} s)")
    return 0


def _existing_path(value: str) -> str:
    """argparse type: a file or directory that exists (said at parse time, before any work starts)."""
    if not Path(value).exists():
        raise argparse.ArgumentTypeError(f"{value}: no such file or directory")
    return value


def _bundle_dir(value: str) -> str:
    """argparse type: a bundle directory (one holding manifest.json)."""
    if not (Path(value) / "manifest.json").is_file():
        raise argparse.ArgumentTypeError(f"{value}: not a bundle directory (no manifest.json)")
    return value


def _positive_int(value: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _cmd_simulate(a: argparse.Namespace) -> int:
    import secrets

    from edge_rerank.cloud.app import CloudConfig
    from edge_rerank.cloud.serve import running_server
    from edge_rerank.pipeline import simulate_logs
    from edge_rerank.simulator.ab import run_ab
    from edge_rerank.simulator.arms import build_arm, parse_arms
    from edge_rerank.simulator.phone import PhoneConfig
    from edge_rerank.simulator.report import write_report
    from edge_rerank.simulator.transport import HttpCloud, InProcessCloud
    from edge_rerank.simulator.user_model import UserModel
    from edge_rerank.simulator.world import World, WorldConfig

    out = Path(a.out)
    arms_text = a.arms or ("cloud,device" if a.bundle else None)
    if arms_text is None and a.ray:
        print("--ray runs A/B arms: pass --arms (e.g. --arms cloud,random,heuristic,oracle)", file=sys.stderr)
        return 2
    try:
        specs = parse_arms(arms_text, bundle=a.bundle, backend=a.backend) if arms_text else []
        phone_cfg = PhoneConfig(device=a.device, late_policy=a.late_policy)
    except ValueError as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    if a.replay and len(specs) < 2:
        print("simulate: --replay compares two arms: pass --arms with at least two (e.g. --arms cloud,heuristic)",
              file=sys.stderr)
        return 2
    wcfg = WorldConfig(seed=a.world_seed, domain=a.world)
    world = World(wcfg)
    data_dir = world.provision_cloud(out / "cloud_data")
    key = secrets.token_hex(16)
    with running_server(CloudConfig(data_dir=str(data_dir), log_dir=str(out / "logs"), api_key=key),
                        workers=a.workers, log_file=out / "server.log") as url:
        if not specs:
            cloud = HttpCloud(url, api_key=key)
            n = simulate_logs(world, cloud, a.sessions, seed=a.seed, progress=not a.no_progress)
            print(f"{a.sessions} cloud-only sessions -> {n} impression-log rows in {out / 'logs'}")
            return 0
        if a.ray:
            from edge_rerank.simulator.distributed import TransportSpec, run_ab_ray

            transport = (TransportSpec("http", url=url, api_key=key) if a.transport == "http"
                         else TransportSpec("inproc", data_dir=str(data_dir), wire=False))
            results = run_ab_ray(wcfg, transport, specs, a.sessions, seed=a.seed, phone_cfg=phone_cfg,
                                 num_workers=a.ray_workers, progress=not a.no_progress)
        else:
            # in-process: no serialisation (pages proven identical to the protobuf/HTTP ones)
            cloud = HttpCloud(url, api_key=key) if a.transport == "http" else InProcessCloud(str(data_dir), wire=False)
            um = UserModel(world)
            results = run_ab(um, cloud, [build_arm(s, um) for s in specs], a.sessions, seed=a.seed,
                             progress=not a.no_progress, config=phone_cfg)
        if a.replay > 0:
            _simulate_replay(a, world, specs, url, key, data_dir, phone_cfg)
    write_report(out, results, title="edge-rerank simulate: A/B", seed=a.seed,
                 extra_json={"config": {"arms": arms_text, "sessions": a.sessions, "seed": a.seed,
                                        "world_seed": a.world_seed, "device": a.device,
                                        "late_policy": a.late_policy, "transport": a.transport,
                                        "ray_workers": a.ray_workers if a.ray else 0}})
    print((out / "report.md").read_text())
    return 0


def _simulate_replay(a: argparse.Namespace, world, specs, url: str, key: str, data_dir: Path, phone_cfg) -> None:
    """Record the first --replay A/B sessions of the first two arms (the A/B's own specs) and write the page."""
    from edge_rerank.replay_page import write_page
    from edge_rerank.simulator.arms import build_arm
    from edge_rerank.simulator.replay import TRACES_FILE, record_replays, write_traces
    from edge_rerank.simulator.transport import HttpCloud, InProcessCloud
    from edge_rerank.simulator.user_model import UserModel

    um = UserModel(world)
    cloud = HttpCloud(url, api_key=key) if a.transport == "http" else InProcessCloud(str(data_dir), wire=False)
    arms = [build_arm(s, um) for s in specs[:2]]
    n = min(a.replay, a.sessions)
    traces = record_replays(um, cloud, arms, [world.session(i, a.seed) for i in range(n)], config=phone_cfg)
    write_traces(traces, Path(a.out) / TRACES_FILE)
    page = write_page(a.out, title="edge-rerank simulate")
    print(f"replay: {n} sessions -> {page}")


TRAIN_FLAGS = ("epochs", "loss", "lr", "batch_size", "weight_decay", "patience", "threads", "gbdt_teacher")
MODEL_FLAGS = ("use_feedback", "residual", "cross", "dropout")


def train_configs(a: argparse.Namespace) -> tuple[TrainConfig, ModelConfig, SplitConfig]:
    """The configs `train` runs with: the defaults, then the --config file, then the flags given. ValueError
    (naming the file, table and key) for anything invalid."""
    from edge_rerank.api import DEFAULT_EPOCHS
    from edge_rerank.cloud.training.configs import read_config_file
    from edge_rerank.cloud.training.data import SplitConfig

    file = read_config_file(a.config) if a.config else {}
    flags = vars(a)
    seed = a.seed if a.seed is not None else file.get("train", {}).get("seed", 0)
    tkw = {"epochs": DEFAULT_EPOCHS, "seed": seed} | file.get("train", {})
    tkw |= {k: flags[k] for k in TRAIN_FLAGS if flags.get(k) is not None}
    if a.seed is not None:
        tkw["seed"] = a.seed
    mkw = file.get("model", {}) | {k: flags[k] for k in MODEL_FLAGS if flags.get(k) is not None}
    if a.views is not None:
        mkw["views"] = tuple(v.strip() for v in a.views.split(",") if v.strip())
    skw = {"seed": seed} | file.get("split", {})
    skw |= {k: flags[k] for k in ("valid_share", "test_share") if flags.get(k) is not None}
    if a.seed is not None:
        skw["seed"] = a.seed
    return TrainConfig(**tkw), ModelConfig(**mkw), SplitConfig(**skw)


def _cmd_train(a: argparse.Namespace) -> int:
    from edge_rerank.api import train

    try:
        tcfg, mcfg, split = train_configs(a)
        ray = None
        if a.ray:
            from edge_rerank.cloud.training.ray_train import RayOptions

            ray = RayOptions(workers=a.workers, address=a.address, storage=a.ray_storage)
        elif a.address or a.ray_storage:
            raise ValueError("--address and --ray-storage need --ray")
        r = train(a.logs, a.out, feature_config=a.feature_config, seed=split.seed, split=split,
                  model_config=mcfg, train_config=tcfg, joint_cloud_data=a.joint, tune=a.tune,
                  progress=not a.no_progress, ray=ray)
    except ValueError as exc:
        print(f"train: {exc}", file=sys.stderr)
        return 2
    (Path(a.out) / "summary.json").write_text(json.dumps(r.summary, indent=2, default=float))
    n = r.split["sessions"]
    print(f"sessions split (seed {r.split['seed']}): {n['train']} train / {n['valid']} validation (epoch choice) / "
          f"{n['test']} test (reported)")
    print(f"{r.train_lists} training / {r.valid_lists} validation / {r.test_lists} test lists, "
          f"{r.params:,} parameters, {r.summary['lists_per_s']:.0f} lists/s"
          + (f" on {r.summary['ray']['workers']} Ray workers" if "ray" in r.summary else ""))
    _print_metrics("test split", [("device reranker", r.test), ("cloud order (logged)", r.test_cloud_order)]
                   + ([("new cloud ranker", r.summary["test_new_cloud_ranker"])]
                      if "test_new_cloud_ranker" in r.summary else [])
                   + [("device, validation", r.valid)])
    g = r.summary.get("test_gain_over_cloud")
    if g:
        print(f"NDCG@10 gain over the cloud order (test): {g['gain']:+.4f} [{g['lo']:+.4f}, {g['hi']:+.4f}] "
              f"(95 % CI, {g['sessions']} sessions resampled)")
    if "tune" in r.summary:
        best = r.summary["tune"]
        print(f"tuned over {len(best['trials'])} trials (validation NDCG@10 {best['best_valid_ndcg10']:.4f}): "
              f"{best['model_config']}")
    print(f"checkpoint: {r.checkpoint} (records its split)")
    if a.joint:
        print(f"cloud ranker for the server: {Path(a.out) / 'ranker.onnx'} (serve it with the device model)")
    return 0


def _print_metrics(title: str, rows: list[tuple[str, dict]]) -> None:
    keys = ("ndcg@5", "ndcg@10", "mrr", "auc")
    print(f"{title:<22}" + "".join(f"{m:>10}" for m in keys))
    for name, m in rows:
        print(f"{name:<22}" + "".join(f"{m[k]:>10.4f}" for k in keys))


def _cmd_eval(a: argparse.Namespace) -> int:
    from edge_rerank.api import evaluate

    try:
        r = evaluate(a.model, a.logs, backend=a.backend, progress=not a.no_progress)
    except (FileNotFoundError, ValueError) as exc:
        print(f"eval: {exc}", file=sys.stderr)
        return 2
    print(f"{r.source}: recorded test split (seed {r.split['seed']}, {r.split['sessions']['test']} sessions, "
          f"{r.test_lists} lists)")
    _print_metrics("test split", [("model", r.model), ("cloud order (logged)", r.cloud_order)])
    return 0


def _cmd_ablate(a: argparse.Namespace) -> int:
    from dataclasses import replace

    from edge_rerank.ablation import QUICK_ABLATION, AblationConfig, run_ablation

    cfg = AblationConfig(out=a.out, seed=a.seed, online=not a.offline_only)
    if a.quick:
        cfg = replace(cfg, **QUICK_ABLATION)
    overrides = {k: getattr(a, k) for k in ("log_sessions", "ab_sessions", "epochs") if getattr(a, k) is not None}
    data = run_ablation(replace(cfg, **overrides), progress=not a.no_progress)
    print((Path(a.out) / "ablation.md").read_text())
    print(f"table: {Path(a.out) / 'ablation.md'}, plot: {Path(a.out) / 'ablation.png'} (total {data['total_s']:.0f} s)")
    return 0


def _held_out(a: argparse.Namespace):
    """The checkpoint with its recorded train / validation / test parts of --logs, or None after saying why not
    (missing files, no recorded split, logs that are not the ones the split was made from)."""
    from edge_rerank.api import load_held_out

    for what, p in (("checkpoint", a.checkpoint), ("logs", a.logs)):
        if not Path(p).exists():
            print(f"--{what} {p}: no such file or directory", file=sys.stderr)
            return None
    try:
        return load_held_out(a.checkpoint, a.logs, progress=not a.no_progress)
    except (FileNotFoundError, ValueError) as exc:
        print(f"{a.command}: {exc}", file=sys.stderr)
        return None


def _cmd_compress(a: argparse.Namespace) -> int:
    from edge_rerank.compression.presets import PRESETS, BudgetExceeded

    if a.list:
        from edge_rerank.compression.methods import all_methods

        print("presets (--preset NAME):")
        for p in PRESETS.values():
            b = p.budget
            print(f"  {p.name:9s} {p.method:28s} budget: NDCG@10 loss <= {b.max_rel_ndcg10_loss_pct} %, "
                  f"tau >= {b.min_mean_kendall_tau}, <= {b.max_kb:g} KB — {p.description}")
        print("methods (--benchmark --methods A,B):")
        for m in all_methods():
            why = m.unavailable_reason()
            print(f"  {m.name:30s} {m.format:7s} {m.family:13s} {m.description}" + (f"  [unavailable: {why}]"
                                                                                     if why else ""))
        return 0
    if not a.benchmark and not a.preset:
        print("choose --benchmark (measure every method) or --preset NAME (build one bundle within its budget); "
              "--list shows both", file=sys.stderr)
        return 2
    if a.preset and a.preset not in PRESETS:  # said before the model and the logs are loaded
        print(f"compress: unknown preset {a.preset!r}; choose from {sorted(PRESETS)} (--list describes them)",
              file=sys.stderr)
        return 2
    held = _held_out(a)
    if held is None:
        return 2
    out = Path(a.out)
    if a.preset:
        from edge_rerank.api import compress

        try:
            r = compress(held, out, a.preset, n_lists=a.lists, version=a.version, progress=not a.no_progress)
        except (BudgetExceeded, KeyError, RuntimeError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"preset {r.preset} ({r.method}): {r.file_kb:.1f} KB, NDCG@10 loss {r.rel_ndcg10_loss_pct:.3f} %, "
              f"mean Kendall tau {r.mean_kendall_tau:.4f} on {r.n_lists} test lists — within budget")
        print(f"bundle: {r.bundle}")
        return 0
    from edge_rerank.api import compress_benchmark
    from edge_rerank.compression_ab import SimulationSetup
    from edge_rerank.compression_report import to_markdown

    methods = [m.strip() for m in a.methods.split(",") if m.strip()] if a.methods else None
    from edge_rerank.simulator.world import WorldConfig

    sim = SimulationSetup(WorldConfig(seed=a.world_seed), a.sim_sessions) if a.sim_sessions > 0 else None
    try:
        rows = compress_benchmark(held, out, methods=methods, n_lists=a.lists, simulation=sim,
                                  progress=not a.no_progress)
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    print(to_markdown(rows))
    print(f"JSON: {out / 'compression.json'}, table: {out / 'compression.md'}, plot: {out / 'pareto.png'}")
    return 0


def _cmd_export(a: argparse.Namespace) -> int:
    from edge_rerank.converters.specs import FORMATS

    held = _held_out(a)
    if held is None:
        return 2
    from edge_rerank.api import export

    formats = list(FORMATS) if a.format == "all" else [a.format]
    r = export(held, a.out, formats=formats, version=a.version, n_validate=a.validate_lists,
               progress=not a.no_progress)
    for res in r.report.results:
        for e in res.errors:
            print(f"{res.format}: {e}", file=sys.stderr)
        for n in res.notes:
            print(f"{res.format} (note): {n}", file=sys.stderr)
        for rc in res.other_runtimes:
            print(f"{res.format} on {rc.runtime}: " + (f"agrees={rc.agrees}, max abs diff {rc.max_abs_diff:.2e}"
                                                        if rc.ran else f"not run: {rc.reason}"), file=sys.stderr)
    print(f"validated on {r.test_lists} lists of the checkpoint's recorded test split")
    print(r.table())
    for fmt, b in r.bundles.items():
        print(f"bundle ({fmt}): {b}")
    print(f"report: {Path(a.out) / 'export_report.json'}")
    return 0 if r.ok else 1


def _cmd_serve(a: argparse.Namespace) -> int:
    import numpy as np

    from edge_rerank.cloud.app import CloudConfig
    from edge_rerank.cloud.serve import serve_forever

    data = Path(a.data_dir)
    if not (data / "items.npz").exists():
        if a.world_seed is None:
            print(f"{data} holds no cloud data; pass --world-seed N to provision a simulated world there",
                  file=sys.stderr)
            return 2
        from edge_rerank.simulator.world import World, WorldConfig

        World(WorldConfig(seed=a.world_seed)).provision_cloud(data)
    if a.embedding_store == "redis":
        if not a.redis_url:
            print("--embedding-store redis needs --redis-url (e.g. redis://127.0.0.1:6379/0)", file=sys.stderr)
            return 2
        if a.load_redis:
            from edge_rerank.cloud.embedding_store import FileEmbeddingStore, RedisEmbeddingStore

            ids, rows = FileEmbeddingStore(data / "embeddings").table()
            n = RedisEmbeddingStore.write(a.redis_url, ids, np.asarray(rows), prefix=a.redis_prefix)
            print(f"loaded {n} embedding rows into {a.redis_url} (prefix {a.redis_prefix!r})")
    if a.log_dir and not a.api_key:
        if not a.insecure:
            print("--log-dir without --api-key would accept anyone's log uploads: pass --api-key KEY, or --insecure "
                  "for a local run", file=sys.stderr)
            return 2
        print("WARNING: --insecure: /v1/logs accepts uploads without a key (rate-limited per client address)",
              file=sys.stderr)
    cfg = CloudConfig(data_dir=str(data), log_dir=a.log_dir, api_key=a.api_key, model_version=a.model_version,
                      embedding_encoding=a.embedding_encoding, embedding_store=a.embedding_store,
                      redis_url=a.redis_url, redis_prefix=a.redis_prefix, registry_dir=a.registry_dir,
                      admin_key=a.admin_key, model_name=a.model_name, ranking_cache_size=a.ranking_cache,
                      ranking_cache_bytes=a.ranking_cache_mib << 20, allow_anonymous_logs=bool(a.insecure),
                      max_log_rows=a.max_log_rows, quota_rows_per_s=a.quota_rows_per_s,
                      quota_bytes_per_day=a.quota_bytes_per_day)
    from edge_rerank.cloud.serve import default_worker_class

    wc = a.worker_class or default_worker_class(a.threads)
    if wc != "gevent":
        print(f"WARNING: {wc} workers: slow clients can hold every thread (install the [cloud] extra for gevent "
              "workers, or put a buffering proxy in front: docs/cloud.md)", file=sys.stderr)
    from edge_rerank.device_sdk.extras import importable

    parser = a.http_parser
    if parser == "fast" and not importable("gunicorn_h1c"):
        print("error: --http-parser fast needs gunicorn's C parser: pip install 'edge-rerank[cloud]'", file=sys.stderr)
        return 2
    if parser == "auto":
        parser = "C (gunicorn_h1c)" if importable("gunicorn_h1c") else "pure-Python"
    print(f"serving {data} on http://{a.host}:{a.port} with {a.workers} gunicorn {wc} worker(s), {parser} HTTP parser")
    return serve_forever(cfg, host=a.host, port=a.port, workers=a.workers, threads=a.threads, worker_class=wc,
                         http_parser=a.http_parser)


class _Fmt(argparse.HelpFormatter):
    """Help that lists every default once: ``(default: X)`` is added unless the help already says its default,
    the default is None (an unset override) or the option is an on/off flag."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or action.default is None or action.default is argparse.SUPPRESS
                or action.default is False or action.nargs == 0 or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


_FMT = _Fmt


def _add_run_sizes(p: argparse.ArgumentParser) -> None:
    """Overrides of a preset's sizes (None keeps the preset's value)."""
    p.add_argument("--log-sessions", dest="log_sessions", type=int, help="cloud-only sessions to log for training")
    p.add_argument("--ab-sessions", dest="ab_sessions", type=int, help="sessions per A/B arm")
    p.add_argument("--epochs", type=int, help="maximum training epochs (early stopping on validation NDCG@10)")


def _add_demo_parser(sub) -> None:
    d = sub.add_parser("demo", formatter_class=_FMT, help="the whole story on embedded defaults",
                       description="Build a seeded world, start the cloud under gunicorn, simulate cloud-only "
                                   "sessions and log them as Parquet, train the device reranker, export it to "
                                   "ONNX as a verified bundle, and A/B cloud order vs on-device reranking. "
                                   "Writes report.md, report.json and plots to --out.")
    d.add_argument("--out", default="runs/demo", help="output directory")
    d.add_argument("--seed", type=int, default=0, help="world and run seed")
    d.add_argument("--quick", action="store_true", help="small preset (about a minute; what the tests run)")
    _add_run_sizes(d)
    d.add_argument("--loss", choices=["lambda", "listnet", "pairwise"], help="ranking loss")
    d.add_argument("--world", choices=["shop", "feed"], help="simulated domain (default shop; docs/simulator.md)")
    d.add_argument("--replay-sessions", dest="replay_sessions", type=int,
                   help="A/B sessions recorded for the replay page replay.html (default 40, quick 20; 0: none)")
    d.add_argument("--coarse-top-k", dest="coarse_top_k", type=int,
                   help="the cloud's coarse two-tower stage, trained on the logged sessions: items it passes to "
                        "the fine ranker (default 100; 0: no coarse stage)")
    d.add_argument("--coarse-epochs", dest="coarse_epochs", type=_positive_int,
                   help="coarse two-tower training epochs (default 4)")
    d.set_defaults(func=_cmd_demo)


def _add_simulate_parser(sub) -> None:
    s = sub.add_parser("simulate", formatter_class=_FMT, help="simulate phone sessions against a local cloud",
                       description="Without --bundle/--arms: cloud-only sessions whose impression logs land in "
                                   "OUT/logs (Parquet). With --arms (and --bundle for the device arm): an A/B "
                                   "over the same sessions, report.md + plots in OUT; --ray runs it on Ray "
                                   "workers with identical results.")
    s.add_argument("--out", default="runs/simulate", help="output directory (logs, report.md, plots)")
    s.add_argument("--sessions", type=_positive_int, default=1000, help="sessions (per arm in an A/B)")
    s.add_argument("--seed", type=int, default=1000, help="session seed")
    s.add_argument("--world-seed", type=int, default=0, help="seed of the simulated world (catalog, users)")
    s.add_argument("--world", choices=["shop", "feed"], default="shop", help="simulated domain (docs/simulator.md)")
    s.add_argument("--bundle", type=_bundle_dir, help="bundle directory for the device arm (runs an A/B)")
    s.add_argument("--backend", default="onnxruntime", help="device backend that runs --bundle")
    s.add_argument("--workers", type=int, default=1, help="gunicorn workers")
    s.add_argument("--arms", help="comma-separated A/B arms from cloud,random,heuristic,oracle,informed,"
                                  "informed_any,device "
                                  "(default with --bundle: cloud,device); the first is the baseline; "
                                  "device=DIR adds a device reranker variant from another bundle")
    s.add_argument("--device", default="recent_iphone", help="device profile for modelled rerank latency and "
                                                             "energy (device_sdk.budgets.PROFILES)")
    s.add_argument("--late-policy", dest="late_policy", choices=["remaining", "drop"], default="remaining",
                   help="a rerank finishing after the user reached its positions: reorder what is still unseen, "
                        "or drop it")
    s.add_argument("--transport", choices=["http", "inproc"], default="http",
                   help="reach the cloud over HTTP (the gunicorn server) or in-process (identical pages)")
    s.add_argument("--ray", action="store_true", help="run the A/B on Ray workers (identical results)")
    s.add_argument("--ray-workers", dest="ray_workers", type=int, default=2, help="Ray workers (local Ray)")
    s.add_argument("--replay", type=int, default=0, metavar="N",
                   help="also record the first N A/B sessions of the first two arms for the replay page "
                        "(OUT/replay/traces.json and OUT/replay.html; see `edge-rerank replay`)")
    s.set_defaults(func=_cmd_simulate)


def _add_train_parser(sub) -> None:
    t = sub.add_parser("train", formatter_class=_FMT, help="train the device reranker from impression logs",
                       description="Train from any logs in the documented impression-log schema "
                                   "(docs/impression_log_schema.md).")
    t.add_argument("--logs", required=True, type=_existing_path, help="a .parquet file or a directory of them")
    t.add_argument("--out", default="runs/train", help="output directory (checkpoint.pt, summary.json)")
    t.add_argument("--feature-config", help="feature config JSON (default: the simulator world's for v1 logs, one "
                                            "fitted to the logs for v2)")
    t.add_argument("--config", type=_existing_path, metavar="TOML",
                   help="training config file with [train], [model] and [split] tables (keys: the flags below "
                        "with underscores, e.g. batch_size; README, CLI); flags given here override it")
    o = t.add_argument_group("optimisation (default: the config file's, else the value shown)")
    o.add_argument("--epochs", type=_positive_int, help="maximum epochs, early stopping on validation NDCG@10 "
                                                       "(default: 15)")
    o.add_argument("--loss", choices=["lambda", "listnet", "pairwise"],
                   help="LambdaLoss (|ΔNDCG|-weighted pairs), ListNet, or pairwise logistic (default: lambda)")
    o.add_argument("--lr", type=float, help=f"AdamW learning rate (default: {TrainConfig.lr:g})")
    o.add_argument("--batch-size", dest="batch_size", type=_positive_int,
                   help=f"lists per batch (default: {TrainConfig.batch_size})")
    o.add_argument("--weight-decay", dest="weight_decay", type=float,
                   help=f"AdamW weight decay (default: {TrainConfig.weight_decay:g})")
    o.add_argument("--patience", type=_positive_int,
                   help=f"epochs without a better validation NDCG@10 before stopping (default: {TrainConfig.patience})")
    o.add_argument("--threads", type=_positive_int,
                   help=f"torch intra-op threads (default: {TrainConfig.threads}; small models train fastest on one)")
    o.add_argument("--gbdt-teacher", dest="gbdt_teacher", type=float, metavar="W",
                   help="weight of the distillation term to a LightGBM lambdarank teacher fitted on the same training "
                        "lists first; the model is also trained without it and the better on validation kept "
                        "(config file: gbdt_teacher_choice = false to skip that); 0 trains on the labels alone "
                        f"(default: {TrainConfig.gbdt_teacher:g})")
    o.add_argument("--seed", type=int, help="training and session-split seed (default: 0)")
    o.add_argument("--tune", type=int, default=0, metavar="N",
                   help="search N model/training configurations first (Optuna, scored on validation only)")
    sp = t.add_argument_group("session split")
    sp.add_argument("--valid-share", dest="valid_share", type=float,
                    help="share of sessions for validation: early stopping, best epoch (default: 0.15)")
    sp.add_argument("--test-share", dest="test_share", type=float,
                    help="share of sessions for test: reported numbers only, recorded in the checkpoint "
                         "(default: 0.15)")
    m = t.add_argument_group("model")
    m.add_argument("--mvfan", dest="use_feedback", action="store_const", const=True,
                   help="add the MVFAN feedback attention network (off by default: it lost to Match&Aggregate-only "
                        "on held-out sessions, see the README)")
    m.add_argument("--no-residual", dest="residual", action="store_const", const=False,
                   help="score from scratch instead of adding to the cloud score (the default keeps the cloud order "
                        "on lists without feedback)")
    m.add_argument("--no-cross", dest="cross", action="store_const", const=False,
                   help="MVFAN without negatives<->positives cross attention")
    m.add_argument("--views", help="MVFAN query views, comma-separated (default: id,attr,context)")
    m.add_argument("--dropout", type=float, help=f"dropout after fusing the candidate parts (default: "
                                                 f"{ModelConfig.dropout:g})")
    t.add_argument("--joint", metavar="CLOUD_DATA",
                   help="cloud data directory: train the cloud ranker too (three-stage joint training); writes "
                        "ranker.onnx for the server next to the device checkpoint")
    r = t.add_argument_group("distributed (Ray: needs the ray extra; README, \"Past one machine\")")
    r.add_argument("--ray", action="store_true",
                   help="build samples on Ray Data and train data-parallel on Ray Train (CPU workers, gloo gradient "
                        "sync): same split, evaluation and checkpoint format as the single-process run; with "
                        "--joint the three joint stages train on Ray Train (samples and pages built in one process)")
    r.add_argument("--address", help="a running Ray cluster (`ray start --head` prints it, or 'auto'); default: "
                                     "start a local one")
    r.add_argument("--workers", type=_positive_int, default=2, help="Ray Train workers, one CPU each")
    r.add_argument("--ray-storage", dest="ray_storage", metavar="DIR",
                   help="Ray Train run state, on storage every node reaches (default: a temporary directory; "
                        "enough on one machine)")
    t.set_defaults(func=_cmd_train)


def _add_eval_parser(sub) -> None:
    ev = sub.add_parser("eval", formatter_class=_FMT, help="evaluate a checkpoint or bundle on its recorded test split",
                        description="NDCG@5/10, MRR and AUC of a checkpoint (torch) or a bundle written by export / "
                                    "compress (its device backend) against the logged cloud order, on the test "
                                    "sessions recorded at training. Logs whose sessions differ from the recorded "
                                    "split are refused.")
    ev.add_argument("model", type=_existing_path, help="checkpoint.pt, or a bundle directory with split.json")
    ev.add_argument("--logs", required=True, type=_existing_path, help="the log directory the model was trained on")
    ev.add_argument("--backend", help="backend for a bundle (default: its format's)")
    ev.set_defaults(func=_cmd_eval)


def _add_ablate_parser(sub) -> None:
    b = sub.add_parser("ablate", formatter_class=_FMT, help="model ablation table, offline and online",
                       description="Train every variant (cloud order, heuristic, LightGBM, PRM without feedback, "
                                   "+ Match&Aggregate, + MVFAN, + joint training) on the same simulated logs; "
                                   "held-out NDCG@5/10 and simulator A/B QV_CTR with paired 95 % CIs. Writes "
                                   "ablation.md, ablation.json and ablation.png to --out.")
    b.add_argument("--out", default="runs/ablation", help="output directory")
    b.add_argument("--seed", type=int, default=0, help="world and run seed")
    b.add_argument("--quick", action="store_true", help="small preset (about a minute)")
    b.add_argument("--offline-only", action="store_true", help="skip the simulator A/B")
    _add_run_sizes(b)
    b.set_defaults(func=_cmd_ablate)


def _add_export_parser(sub) -> None:
    e = sub.add_parser("export", formatter_class=_FMT, help="export a checkpoint to verified bundles",
                       description="Export to ONNX / TFLite (litert-torch, run by LiteRT) / Core ML (coremltools) / "
                                   "MNN, validate each file in its runtime against the torch model and onnxruntime "
                                   "on real inputs from --logs, write one bundle per passed format under "
                                   "OUT/<format>/ (model + feature config + manifest with sha256, tolerance, "
                                   "measured parity) and print a parity table. Exit 1 if a format failed or its "
                                   "toolchain is missing. Core ML numerics need macOS: elsewhere the program's "
                                   "structure is checked and the bundle is marked structure-only.")
    e.add_argument("--checkpoint", required=True, type=_existing_path, help="checkpoint.pt written by train")
    e.add_argument("--logs", required=True, help="the logs the checkpoint was trained on: its recorded test "
                                                  "sessions are the validation inputs")
    e.add_argument("--format", default="onnx", choices=["onnx", "tflite", "coreml", "mnn", "all"],
                   help="target format, or all of them")
    e.add_argument("--out", default="runs/export", help="output directory (one bundle per format)")
    e.add_argument("--version", default="dev", help="version written into the bundles' manifests")
    e.add_argument("--validate-lists", type=_positive_int, default=300,
                   help="real lists to validate on (edge cases always included)")
    e.set_defaults(func=_cmd_export)


def _add_compress_parser(sub) -> None:
    c = sub.add_parser("compress", formatter_class=_FMT, help="compress a checkpoint: benchmark or build a preset",
                       description="--benchmark builds every compression method (ONNX fp16 / dynamic and static "
                                   "int8, pruning + fine-tuning, distilled students, and the LiteRT / Core ML / MNN "
                                   "variants whose toolchains are installed) from one trained model and measures "
                                   "size, max abs diff and Kendall tau vs fp32, NDCG@10 on held-out lists from "
                                   "--logs, the simulator's QV_CTR vs the fp32 model, and latency; writes "
                                   "compression.json, compression.md and pareto.png. --preset NAME builds one "
                                   "method, checks it against the preset's accuracy budget and writes a bundle, or "
                                   "fails naming the broken limits. --list shows presets and methods.")
    mode = c.add_mutually_exclusive_group()
    mode.add_argument("--benchmark", action="store_true", help="measure every method (or --methods)")
    mode.add_argument("--preset", help="build one preset's bundle within its budget (see --list)")
    mode.add_argument("--list", action="store_true", help="list presets and methods, then exit")
    c.add_argument("--checkpoint", default="runs/demo/checkpoint.pt", help="trained model (make demo writes one)")
    c.add_argument("--logs", default="runs/demo/logs",
                   help="the logs the checkpoint was trained on (its recorded train / validation / test split)")
    c.add_argument("--out", default="runs/compression", help="output directory")
    c.add_argument("--lists", type=_positive_int, default=300, help="test lists to evaluate")
    c.add_argument("--methods", help="comma-separated method names (default: all)")
    c.add_argument("--sim-sessions", type=int, default=1000,
                   help="simulated sessions per method arm (0: skip the simulator)")
    c.add_argument("--world-seed", type=int, default=0, help="the simulated world the logs came from")
    c.add_argument("--version", help="bundle version for --preset")
    c.set_defaults(func=_cmd_compress)


def _add_serve_parser(sub) -> None:
    v = sub.add_parser("serve", formatter_class=_FMT, help="run the cloud companion under gunicorn")
    v.add_argument("--data-dir", required=True, help="cloud data directory (see cloud/catalog.py)")
    v.add_argument("--world-seed", type=int, help="provision a simulated world into --data-dir if it is empty")
    v.add_argument("--host", default="127.0.0.1", help="address to bind")
    v.add_argument("--port", type=int, default=8080, help="port to bind")
    v.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    v.add_argument("--threads", type=int, default=1, help="threads per worker (gthread workers)")
    v.add_argument("--worker-class", choices=["gevent", "gthread", "sync"],
                   help="gunicorn worker class (default: gevent when installed; slow clients cannot starve it)")
    v.add_argument("--http-parser", choices=["auto", "fast", "python"], default="auto",
                   help="gunicorn's HTTP parser: auto = the C parser (gunicorn_h1c, in the [cloud] extra) when "
                        "installed, fast = require it, python = gunicorn's pure-Python parser")
    v.add_argument("--log-dir", help="accept opt-in impression logs into this directory")
    v.add_argument("--api-key", help="key required on /v1/logs")
    v.add_argument("--insecure", action="store_true", help="accept /v1/logs uploads without --api-key (local runs)")
    v.add_argument("--max-log-rows", type=int, default=4096, help="rows per /v1/logs request (413 above)")
    v.add_argument("--quota-rows-per-s", type=float, default=2000.0, help="per-key /v1/logs row rate (0: none)")
    v.add_argument("--quota-bytes-per-day", type=int, default=8 << 30, help="per-key /v1/logs bytes/day (0: none)")
    v.add_argument("--model-version", default="", help="model version pages advertise when the registry has none")
    v.add_argument("--embedding-encoding", choices=["fp16", "int8"], default="fp16",
                   help="how pages carry the sparse ID embedding rows")
    v.add_argument("--embedding-store", choices=["file", "redis"], default="file",
                   help="file: DATA_DIR/embeddings (memmap); redis: a table loaded at --redis-url")
    v.add_argument("--redis-url", help="e.g. redis://127.0.0.1:6379/0")
    v.add_argument("--redis-prefix", default="emb", help="key prefix of the embedding table in Redis")
    v.add_argument("--load-redis", action="store_true", help="load DATA_DIR/embeddings into Redis before serving")
    v.add_argument("--registry-dir", help="model registry directory (enables /v1/models)")
    v.add_argument("--admin-key", help="key required to publish, promote and roll back models")
    v.add_argument("--model-name", default="device-reranker", help="registry model whose rollout pages advertise")
    v.add_argument("--ranking-cache", type=int, default=4096, help="rankings cached per worker for later pages")
    v.add_argument("--ranking-cache-mib", type=int, default=64, help="bytes bound of the ranking cache per worker")
    v.set_defaults(func=_cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-rerank", description="On-device search reranking with a cloud companion.",
                                formatter_class=_FMT)
    _add_global_flags(p, default=False)
    p.add_argument("--version", action="version", version=f"edge-rerank {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    _add_demo_parser(sub)
    _add_simulate_parser(sub)
    _add_train_parser(sub)
    _add_eval_parser(sub)
    _add_ablate_parser(sub)
    _add_export_parser(sub)
    _add_compress_parser(sub)
    _add_serve_parser(sub)
    _add_logs_parser(sub)
    _add_replay_parser(sub)
    _add_coarse_parser(sub)
    _add_fusion_parser(sub)
    for sp in _nested_parsers(p):  # global flags also after a (nested) subcommand (`edge-rerank train ... -q`)
        _add_global_flags(sp, default=argparse.SUPPRESS)
    return p


def _nested_parsers(p: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every subcommand parser below `p`, nested ones (`coarse train`, `logs validate`) included, each once."""
    out: list[argparse.ArgumentParser] = []
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sp in dict.fromkeys(a.choices.values()):
                out += [sp, *_nested_parsers(sp)]
    return out


def _add_global_flags(p: argparse.ArgumentParser, default: object) -> None:
    """--no-progress, -q and -v; on the subcommands with a SUPPRESS default so they do not reset the main parser's."""
    p.add_argument("--no-progress", action="store_true", default=default, help="hide progress bars")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-q", "--quiet", action="store_true", default=default,
                   help="warnings and errors only, no progress bars")
    g.add_argument("-v", "--verbose", action="store_true", default=default,
                   help="debug logging, and the third-party warnings that are hidden otherwise")


# ------------------------------------------------------------------ logs (self-contained: parser + handler)

def _add_logs_parser(sub) -> None:
    lg = sub.add_parser("logs", formatter_class=_FMT,
                        help="check impression logs, fit a feature config to them, compact them",
                        description="Impression logs in the documented schema (docs/impression_log_schema.md, "
                                    "v1 or v2).")
    lsub = lg.add_subparsers(dest="logs_command", required=True)
    va = lsub.add_parser("validate", formatter_class=_FMT, help="types, ranges, lists without positives, all-null "
                         "fields, unknown-bucket rates per field; exit 1 on malformed logs")
    va.add_argument("dir", help="a .parquet file or a directory of them")
    va.add_argument("--feature-config", help="feature config JSON to measure unknown buckets and event kinds against")
    va.add_argument("--json", action="store_true", help="print the report as JSON")
    ic = lsub.add_parser("infer-config", formatter_class=_FMT, help="a feature config fitted to the logs")
    ic.add_argument("dir", help="a .parquet file or a directory of them")
    ic.add_argument("--out", help="write the config JSON here (default: print it)")
    ic.add_argument("--max-vocab", type=int, default=1000, help="larger categorical fields are hashed")
    ic.add_argument("--event-kind", action="append", default=[], metavar="KIND=ROLE",
                    help="role of an event kind: positive, positive_dwell, negative, negative_dwell, neutral "
                         "(repeatable; kinds named nowhere become neutral)")
    co = lsub.add_parser("compact", formatter_class=_FMT,
                         help="merge the part-*.parquet files of every partition directory of a log tree",
                         description="Crash-safe compaction (cloud.logs.compact_logs) of the log directory and "
                                     "of every partition directory below it (e.g. one per day); unreadable parts "
                                     "go to the partition's quarantine/, stale temp files are removed. With --ray "
                                     "each partition is one Ray task (the same result).")
    co.add_argument("dir", help="a log directory (or a tree of partition directories)")
    co.add_argument("--min-parts", type=int, default=2, help="leave a partition with fewer parts as it is")
    co.add_argument("--ray", action="store_true", help="one Ray task per partition (needs the ray extra)")
    co.add_argument("--address", help="a running Ray cluster (`ray start --head` prints it, or 'auto'); default: "
                                      "a local one (implies --ray)")
    lg.set_defaults(func=_cmd_logs)


def _cmd_logs(a: argparse.Namespace) -> int:
    from edge_rerank.cloud.log_tools import infer_config, validate_logs
    from edge_rerank.device_sdk.features.operators import load_feature_config

    try:
        if a.logs_command == "compact":
            from edge_rerank.cloud.log_partitions import compact_tree

            print(json.dumps(compact_tree(a.dir, min_parts=a.min_parts, ray=a.ray, address=a.address), indent=2))
            return 0
        if a.logs_command == "validate":
            cfg = load_feature_config(a.feature_config) if a.feature_config else None
            rep = validate_logs(a.dir, cfg)
            print(json.dumps(rep.to_dict(), indent=2, default=str) if a.json else rep.text())
            return 0 if rep.ok else 1
        kinds = dict(k.split("=", 1) for k in a.event_kind if "=" in k)
        if len(kinds) != len(a.event_kind):
            raise ValueError("--event-kind takes KIND=ROLE")
        cfg, summary = infer_config(a.dir, max_vocab=a.max_vocab, event_kinds=kinds)
    except (ValueError, FileNotFoundError) as exc:
        print(f"logs {a.logs_command}: {exc}", file=sys.stderr)
        return 2
    if a.out:
        cfg.save(a.out)
        print(json.dumps(summary, indent=2, default=str))
        print(f"feature config: {a.out} (fingerprint {cfg.fingerprint()})")
    else:
        print(json.dumps(cfg.to_dict(), indent=2))
    return 0


# ------------------------------------------------------------------ replay (self-contained: parser + handler)

def _add_replay_parser(sub) -> None:
    r = sub.add_parser("replay", formatter_class=_FMT, help="write (or serve) the session replay page of a run",
                       description="A self-contained page (HTML/CSS/JS, the traces embedded as JSON, no external "
                                   "requests) that plays back the replay traces a run recorded (RUN_DIR/replay/"
                                   "traces.json: `edge-rerank demo` writes them, `simulate --arms A,B --replay N` "
                                   "too): the two arms side by side, step / play / jump to the next rerank, a "
                                   "session picker with filters. Keys: Space play, arrows step, N next rerank.")
    r.add_argument("run_dir", type=_existing_path, help="a run directory holding replay/traces.json (or the file)")
    r.add_argument("--out", help="page to write (default: RUN_DIR/replay.html)")
    r.add_argument("--title", default="", help="a line shown under the page's heading (default: none)")
    r.add_argument("--serve", action="store_true", help="then serve the page over HTTP until interrupted")
    r.add_argument("--host", default="127.0.0.1", help="address to bind for --serve")
    r.add_argument("--port", type=int, default=8765, help="port for --serve (0: any free port)")
    r.set_defaults(func=_cmd_replay)


def _cmd_replay(a: argparse.Namespace) -> int:
    from edge_rerank.replay_page import make_server, write_page

    run = Path(a.run_dir)  # a run directory, or a traces file (the page then goes next to it)
    out = a.out or (run / "replay.html" if run.is_dir() else run.with_suffix(".html"))
    try:
        page = write_page(run, out, title=a.title)
    except (FileNotFoundError, ValueError) as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 2
    print(f"replay page: {page} ({page.stat().st_size / 1024:.0f} KiB, self-contained)", flush=True)
    if not a.serve:
        return 0
    srv = make_server(page, a.host, a.port)
    print(f"serving it on http://{a.host}:{srv.server_port}/ (Ctrl-C stops)", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
    return 0


# ------------------------------------------------------------------ coarse (self-contained: parser + handler)

def _coarse_train_args(tr) -> None:
    tr.add_argument("--data-dir", required=True, type=_existing_path, help="cloud data directory (catalog, ranker)")
    tr.add_argument("--logs", required=True, type=_existing_path, help="impression logs (.parquet file or directory)")
    tr.add_argument("--out", required=True, help="writes coarse.pt and coarse_summary.json here")
    tr.add_argument("--variant", choices=["dot", "soft", "esim"], default="soft",
                    help="dot: one vector per side; soft: multi-head soft-attention dot; esim: ESIM matching")
    tr.add_argument("--heads", type=_positive_int, default=3, help="query and item heads (soft, esim)")
    tr.add_argument("--teacher", choices=["none", "pairwise", "all_pairs"], default="all_pairs",
                    help="distil a cross-feature teacher: pairwise scores, or pairwise + in-batch all-pairs")
    tr.add_argument("--fine-weight", type=float, default=1.0, help="fine ranker -> coarse distillation weight (0: off)")
    tr.add_argument("--epochs", type=_positive_int, default=8, help="training epochs")
    tr.add_argument("--seed", type=int, default=0, help="training and session-split seed")


def _add_coarse_parser(sub) -> None:
    co = sub.add_parser("coarse", formatter_class=_FMT,
                        help="the cloud's coarse two-tower stage: train, export, publish",
                        description="Coarse ranking (recall -> coarse -> fine): a query tower and an item tower "
                                    "trained on the impression logs and the cloud's catalog (SPEC §2, seed 000).")
    csub = co.add_subparsers(dest="coarse_command", required=True)
    _coarse_train_args(csub.add_parser("train", formatter_class=_FMT, help="train the towers; held-out AUC, "
                                       "consistency with the fine ranker (bootstrap CI), recall@100 of its page 1, "
                                       "FLOPs, vs random / popularity"))
    alias = sub.add_parser("train-coarse", formatter_class=_FMT, help="the same as `coarse train`")
    _coarse_train_args(alias)
    alias.set_defaults(func=_cmd_coarse, coarse_command="train")
    ex = csub.add_parser("export", formatter_class=_FMT, help="ONNX query tower + matching layer, item vectors, "
                         "faiss index for large catalogs: a verified bundle")
    ex.add_argument("--checkpoint", required=True, type=_existing_path, help="coarse.pt from `coarse train`")
    ex.add_argument("--data-dir", required=True, type=_existing_path, help="the catalog to precompute item vectors for")
    ex.add_argument("--out", required=True, help="bundle directory to write")
    ex.add_argument("--version", required=True, help="bundle version (registry name: coarse-ranker)")
    ex.add_argument("--logs", type=_existing_path, help="check ONNX parity on these logs' test query views")
    ex.add_argument("--top-k", type=_positive_int, default=200, help="items passed on to the fine ranker")
    ex.add_argument("--exact-threshold", type=_positive_int, default=50_000,
                    help="recall sets up to this size are scored exactly; larger catalogs get a faiss index")
    ex.add_argument("--install", action="store_true",
                    help="also copy the bundle to DATA_DIR/coarse (served from the next start)")
    pu = csub.add_parser("publish", formatter_class=_FMT, help="publish a coarse bundle to a model registry")
    pu.add_argument("--bundle", required=True, type=_bundle_dir)
    pu.add_argument("--registry-dir", required=True, help="registry directory (as `serve --registry-dir`)")
    pu.add_argument("--no-promote", action="store_true", help="publish only; do not make it the stable version")
    co.set_defaults(func=_cmd_coarse)


def _cmd_coarse(a: argparse.Namespace) -> int:
    try:
        if a.coarse_command == "publish":
            from edge_rerank.cloud.registry import RegistryError
            from edge_rerank.cloud.training.coarse_export import publish_coarse

            try:
                m = publish_coarse(a.bundle, a.registry_dir, promote=not a.no_promote)
            except RegistryError as exc:
                print(f"coarse publish: {exc.reason}", file=sys.stderr)
                return 2
            print(f"published {m.name}@{m.version}" + ("" if a.no_promote else " (stable)"))
            return 0
        from edge_rerank.cloud.training.coarse_pipeline import export_coarse, train_coarse

        if a.coarse_command == "train":
            from edge_rerank.cloud.training.coarse_model import CoarseModelConfig
            from edge_rerank.cloud.training.coarse_train import CoarseTrainConfig

            res = train_coarse(a.data_dir, a.logs, a.out,
                               model=CoarseModelConfig(variant=a.variant, q_heads=a.heads, d_heads=a.heads),
                               train=CoarseTrainConfig(epochs=a.epochs, seed=a.seed, teacher=a.teacher,
                                                       fine_weight=a.fine_weight))
            t = res.summary["test"]
            print(f"test ({res.summary['test_views']} query views): AUC {t['auc']:.4f}, consistency with the fine "
                  f"ranker {t['consistency']['mean']:.4f} [{t['consistency']['lo']:.4f}, {t['consistency']['hi']:.4f}]"
                  f", query tower {t['query_tower_flops']} FLOPs, {t['params']} parameters")
            for k, b in res.summary.get("baselines", {}).items():
                print(f"  baseline {k}: AUC {b['auc']:.4f}, consistency {b['consistency']['mean']:.4f}")
            print(f"checkpoint: {res.checkpoint}")
            return 0
        from edge_rerank.cloud.ranking.coarse import CoarseServing

        bundle = export_coarse(a.checkpoint, a.data_dir, a.out, version=a.version, logs=a.logs, install=a.install,
                               serving=CoarseServing(top_k=a.top_k, exact_threshold=a.exact_threshold))
        print(f"bundle: {bundle}" + (f" (installed in {Path(a.data_dir) / 'coarse'})" if a.install else ""))
        return 0
    except (ValueError, FileNotFoundError) as exc:
        print(f"coarse {a.coarse_command}: {exc}", file=sys.stderr)
        return 2


# ------------------------------------------------------------------ fusion (self-contained: parser + handler)

def _add_fusion_parser(sub) -> None:
    fu = sub.add_parser("fusion", formatter_class=_FMT, help="RL score fusion in the cloud: train the agent, A/B it",
                        description="Click + order models fused per page request by a DDPG agent, in the "
                                    "simulator's order-aware world (docs/cloud.md, README 'RL score fusion').")
    fsub = fu.add_subparsers(dest="fusion_command", required=True)
    _fusion_train_args(fsub.add_parser("train", formatter_class=_FMT,
                                       help="logs -> two-head ranker -> agent -> ONNX bundle"))
    alias = sub.add_parser("train-fusion", formatter_class=_FMT, help="the same as `fusion train`")
    _fusion_train_args(alias)
    alias.set_defaults(func=_cmd_fusion, fusion_command="train")
    ab = fsub.add_parser("ab", formatter_class=_FMT, help="A/B in the simulator: agent vs fixed a = 1")
    ab.add_argument("--run", type=_existing_path, default="runs/fusion", help="a `fusion train` run directory")
    ab.add_argument("--sessions", type=_positive_int, default=4000, help="sessions per arm")
    ab.add_argument("--ablation-run", type=_existing_path, help="a run trained without penalties (extra arm)")
    ab.add_argument("--no-device", action="store_true", help="skip the device-rerank arms")
    ab.add_argument("--json", help="write the results here")
    fu.set_defaults(func=_cmd_fusion)


def _beta_pair(text: str) -> tuple[float, float]:
    try:
        a, b = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected A,B (two positive numbers), got {text!r}") from None
    if not (a > 0 and b > 0):
        raise argparse.ArgumentTypeError(f"Beta parameters must be > 0, got {text!r}")
    return a, b


def _fusion_train_args(tr) -> None:
    tr.add_argument("--out", default="runs/fusion", help="run directory (cloud_data/, bundle/, training.json)")
    tr.add_argument("--log-sessions", type=_positive_int, default=3000, help="baseline sessions logged")
    tr.add_argument("--episodes", type=_positive_int, default=3000, help="DDPG episodes (all policies)")
    tr.add_argument("--pretrain-episodes", type=_positive_int, default=1500, help="baseline episodes for V")
    tr.add_argument("--eval-episodes", type=_positive_int, default=800, help="held-out episodes per policy")
    tr.add_argument("--policies", type=_positive_int, default=2, help="parallel policies (shared state and V)")
    tr.add_argument("--clip", type=float, default=0.75, help="actions in [1 - clip, 1 + clip]")
    tr.add_argument("--no-conversion-penalty", type=float, default=0.3,
                    help="reward penalty for a page without a click or order")
    tr.add_argument("--leave-penalty", type=float, default=0.5, help="reward penalty for the page the user leaves on")
    tr.add_argument("--twin-critic", action="store_true",
                    help="a lower-variance critic target: two advantage heads, the smaller one at a smoothed action")
    tr.add_argument("--critic-target", choices=("td", "mc"), default="td",
                    help="the critic's target: td (r + gamma Q(s', pi(s')), the article's) or mc (the page's "
                         "discounted Monte Carlo return)")
    tr.add_argument("--explore-uniform", type=float, default=0.0, metavar="P",
                    help="share of DDPG episodes served with uniformly random actions (0: Gaussian noise only)")
    tr.add_argument("--actor-preact-limit", type=float, default=0.0, metavar="Z",
                    help="penalise the actor's pre-tanh output beyond +-Z so it cannot saturate (0: off; README "
                         "'RL fusion: what the learner needs')")
    tr.add_argument("--v-anchor", choices=("mc", "td"), default="mc",
                    help="baseline rows in DDPG: mc anchors V at their baseline return (the article's), td uses "
                         "them as u = 0 transitions with the policy's TD target (docs/results/rl_fusion.md "
                         "'RL fusion: what the learner needs')")
    tr.add_argument("--paired-rollouts", action="store_true",
                    help="train the advantage heads on common-random-number paired rollouts (the session replayed "
                         "with the same luck: the chosen a at a page vs a = 1, both then a = 1; simulator-only; "
                         "docs/results/rl_fusion.md 'RL fusion: paired rollouts')")
    tr.add_argument("--paired-horizon", type=int, default=0, metavar="PAGES",
                    help="with --paired-rollouts: cut both continuations after this many pages (0: to the end)")
    tr.add_argument("--scroll-lever", action="store_true",
                    help="the order world with searching buyers (docs/simulator.md): what the penalties are about")
    tr.add_argument("--click-bait", action="store_true",
                    help="the scroll lever plus click bait and a delivery radius, 8-item pages (docs/simulator.md): "
                         "the world where the penalties change the policy")
    tr.add_argument("--purpose-history", action="store_true",
                    help="click bait with persistent per-user purposes; the agent also observes the user's purpose "
                         "history from the cloud's own order logs (a first-page signal; docs/results/rl_fusion.md "
                         "'RL fusion: a first-page purpose signal')")
    tr.add_argument("--buyer-propensity", type=_beta_pair, default=None, metavar="A,B",
                    help="with --purpose-history: the Beta(A, B) of the per-user buyer propensity (default 0.3,0.45)")
    tr.add_argument("--reuse-data", type=_existing_path, help="an earlier run: reuse its logs, ranker and store")
    tr.add_argument("--ranker-from", type=_existing_path,
                    help="an earlier run's two-head ranker: log this world's traffic with it, train no new ranker")
    tr.add_argument("--registry-dir", help="also publish the bundle to this model registry")
    tr.add_argument("--version", default="1", help="bundle version")
    tr.add_argument("--seed", type=int, default=0, help="training seed")


def _cmd_fusion(a: argparse.Namespace) -> int:
    from edge_rerank.fusion import FusionABConfig, FusionTrainConfig, format_ab, fusion_ab, train_fusion

    if a.fusion_command == "train":
        if not 0.0 < a.clip < 1.0:
            print("fusion train: --clip must be in (0, 1)", file=sys.stderr)
            return 2
        if not 0.0 <= a.explore_uniform <= 1.0 or a.actor_preact_limit < 0:
            print("fusion train: --explore-uniform must be in [0, 1] and --actor-preact-limit >= 0", file=sys.stderr)
            return 2
        if a.paired_horizon < 0 or (a.paired_horizon and not a.paired_rollouts):
            print("fusion train: --paired-horizon must be >= 0 and needs --paired-rollouts", file=sys.stderr)
            return 2
        if a.paired_rollouts and (a.twin_critic or a.critic_target != "td" or a.v_anchor != "mc"):
            print("fusion train: --paired-rollouts replaces the critic's target; it does not combine with "
                  "--twin-critic, --critic-target mc or --v-anchor td", file=sys.stderr)
            return 2
        cfg = FusionTrainConfig(out=a.out, log_sessions=a.log_sessions, episodes=a.episodes,
                                pretrain_episodes=a.pretrain_episodes, eval_episodes=a.eval_episodes,
                                n_policies=a.policies, clip=a.clip, no_conversion_penalty=a.no_conversion_penalty,
                                leave_penalty=a.leave_penalty, scroll_lever=a.scroll_lever,
                                click_bait=a.click_bait, purpose_history=a.purpose_history,
                                buyer_propensity=a.buyer_propensity,
                                twin_critic=a.twin_critic, critic_target=a.critic_target,
                                explore_uniform=a.explore_uniform, actor_preact_limit=a.actor_preact_limit,
                                v_anchor=a.v_anchor, paired_rollouts=a.paired_rollouts,
                                paired_horizon=a.paired_horizon,
                                reuse_data=a.reuse_data, ranker_from=a.ranker_from, registry_dir=a.registry_dir,
                                version=a.version, seed=a.seed)
        s = train_fusion(cfg, progress=not a.no_progress)
        best = s["agent"]["eval"][s["agent"]["chosen_policy"]]
        print(f"bundle: {s['bundle']}  (held-out reward/episode vs a = 1: {best['delta_vs_baseline']:+.4f} "
              f"± {best['delta_se']:.4f})")
        return 0
    res = fusion_ab(FusionABConfig(run=a.run, sessions=a.sessions, ablation_run=a.ablation_run,
                                   device=not a.no_device, out_json=a.json), progress=not a.no_progress)
    print(format_ab(res))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quiet and args.verbose:
        print("edge-rerank: -q and -v contradict each other; pass one", file=sys.stderr)
        return 2
    args.no_progress = args.no_progress or args.quiet
    configure_output(quiet=args.quiet, verbose=args.verbose)
    try:
        return int(args.func(args) or 0)
    except ModuleNotFoundError as exc:  # an extra that is not installed: say which, not a traceback
        from edge_rerank.device_sdk.extras import install_hint

        if args.verbose or not exc.name:
            raise
        hint = install_hint([exc.name])
        print(f"edge-rerank {args.command}: needs the Python module {exc.name!r}, which is not installed"
              + (f": {hint}" if hint else ""), file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
