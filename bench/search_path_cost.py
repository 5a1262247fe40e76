"""The cost of one request of each kind through the cloud's WSGI app, in-process (issues 15 / 16): deterministic
instruction counts (valgrind callgrind) and CPU-time medians, table printed, JSON out.

Request kinds (each a WSGI environ as gunicorn builds it, the app called directly: no sockets, no HTTP parser):

- ``ping``: GET /ping; ``ping_post``: POST /ping with a search body (read and ignored)
- ``page``: POST /v1/search for searches whose ranking is cached (pages 0-3 of 64 searches, ``cloud_bench``'s bodies)
- ``search``: POST /v1/search, a new (user, query, context) every request (``cloud_bench``'s world: 2,400 items,
  registry with a promoted device model, ranking cache on)
- ``search_10k``: the same on a 10^4-item world without the coarse stage; ``search_coarse``: with the trained
  soft two-tower coarse stage (top 200), both with the ranking cache off (``coarse_bench --http``'s setup)

The worlds, the coarse bundle and the request bodies are built once into ``--data`` (a trained coarse model is
not bit-reproducible across machines, so keep the directory to compare code versions on the same inputs).
``--cloud-from DIR`` imports ``edge_rerank.cloud`` from another checkout's ``cloud/`` folder (a before / after
comparison on the same data: ``git archive <commit> cloud | tar -x -C /tmp/base``). Every kind's responses
(status, headers, body) are hashed: the digests must match between code versions (bytes on the wire unchanged).

    python bench/search_path_cost.py                 # CPU-time medians + valgrind instruction counts
    python bench/search_path_cost.py --no-valgrind   # CPU time only
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

KINDS = ("ping", "ping_post", "page", "search", "ping_post_10k", "search_10k", "search_coarse")
PB = "application/x-protobuf"


def _use_cloud_from(path: str | None) -> None:
    if not path:
        return
    import importlib.util

    d = Path(path).resolve()
    spec = importlib.util.spec_from_file_location("edge_rerank.cloud", d / "__init__.py",
                                                  submodule_search_locations=[str(d)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["edge_rerank.cloud"] = mod
    spec.loader.exec_module(mod)


# ---- data -------------------------------------------------------------------------------------------------------
def prepare(data: Path, *, sessions: int, epochs: int, n_search: int) -> None:
    """Worlds, cloud data directories, registry, coarse bundle and request bodies (once)."""
    import torch
    from cloud_bench import _bodies

    from edge_rerank.cloud.ranking.coarse import CoarseServing
    from edge_rerank.cloud.registry import Registry
    from edge_rerank.cloud.training.coarse_data import CoarseWorld, query_views
    from edge_rerank.cloud.training.coarse_export import write_coarse_bundle
    from edge_rerank.cloud.training.coarse_model import CoarseModelConfig
    from edge_rerank.cloud.training.coarse_train import CoarseTrainConfig, fit_coarse
    from edge_rerank.converters.bundle import write_bundle
    from edge_rerank.pipeline import feature_config_for
    from edge_rerank.simulator.phone import Phone
    from edge_rerank.simulator.transport import InProcessCloud
    from edge_rerank.simulator.user_model import UserModel
    from edge_rerank.simulator.world import World, WorldConfig

    torch.manual_seed(0)
    torch.set_num_threads(1)
    data.mkdir(parents=True, exist_ok=True)
    # world A: cloud_bench's (2,400 items), a registry with a promoted device model
    wa = WorldConfig(seed=0)
    world = World(wa)
    world.provision_cloud(data / "a")
    reg = Registry(data / "registry")
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model.onnx"
        model.write_bytes(np.random.default_rng(0).bytes(64 * 1024))
        b = write_bundle(Path(tmp) / "bundle", model_file=model, fmt="onnx", name="device-reranker", version="b0",
                         feature_config=feature_config_for(wa))
        reg.publish(b)
    reg.promote("device-reranker", "b0")
    bodies = {"page": _bodies(world, 256, unique=False, seed=1),
              "search": _bodies(world, n_search, unique=True, seed=2)}
    # world B: coarse_bench --http's (10^4 items), with and without a soft two-tower coarse stage
    small = World(WorldConfig(seed=0, n_items=3000, n_users=300))
    sdata = small.provision_cloud(data / "small")
    phone = Phone(UserModel(small), InProcessCloud(str(sdata)), arm="cloud")
    rows = []
    for i in range(sessions):
        rows.extend(phone.run(small.session(i, 100)).rows)
    cw = CoarseWorld.load(sdata)
    views = query_views(rows, cw)
    model, _ = fit_coarse(cw, views.split("train"), CoarseModelConfig(variant="soft"),
                          CoarseTrainConfig(epochs=epochs, fine_weight=1.0))
    big = World(WorldConfig(seed=0, n_items=10_000, n_users=300))
    big.provision_cloud(data / "b")
    bc = big.provision_cloud(data / "bc")
    write_coarse_bundle(model, CoarseWorld.load(bc, model.spec), bc / "coarse", version="bench",
                        serving=CoarseServing(top_k=200))
    bodies["search_10k"] = _bodies(big, n_search, unique=True, seed=2)
    (data / "bodies.pkl").write_bytes(pickle.dumps(bodies))
    (data / "READY").write_text("ok")


# ---- requests ---------------------------------------------------------------------------------------------------
def environ(method: str, path: str, body: bytes = b"") -> dict:
    """A WSGI environ as gunicorn builds it for wrk's request (Host, Content-Type, Accept, Content-Length)."""
    env = {"REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": "", "RAW_URI": path,
           "SERVER_PROTOCOL": "HTTP/1.1", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000",
           "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "40000", "HTTP_HOST": "127.0.0.1:8000",
           "SERVER_SOFTWARE": "gunicorn/bench", "wsgi.version": (1, 0), "wsgi.url_scheme": "http",
           "wsgi.errors": sys.stderr, "wsgi.multithread": False, "wsgi.multiprocess": True,
           "wsgi.run_once": False, "wsgi.file_wrapper": None, "wsgi.input_terminated": True}
    if method == "POST":
        env.update(CONTENT_TYPE=PB, CONTENT_LENGTH=str(len(body)), HTTP_ACCEPT=PB)
    return env


class Caller:
    """Calls a WSGI app with fresh copies of prepared environs; keeps a digest of what it answered."""

    def __init__(self, app, path: str, bodies: list[bytes] | None, method: str):
        self.app, self.k = app, 0
        self.reqs = ([(environ(method, path, b), b) for b in bodies] if bodies is not None
                     else [(environ(method, path), b"")])
        self.digest = hashlib.sha256()
        self.statuses: dict[str, int] = {}

    def _start(self, status, headers, exc_info=None):
        self._status, self._headers = status, headers

    def run(self, n: int, *, record: bool = False) -> None:
        reqs, app, start = self.reqs, self.app, self._start
        for _ in range(n):
            env, body = reqs[self.k % len(reqs)]
            self.k += 1
            e = dict(env)
            e["wsgi.input"] = io.BytesIO(body)
            it = app(e, start)
            try:
                out = b"".join(it)
            finally:
                close = getattr(it, "close", None)
                if close is not None:
                    close()
            if record:
                self.statuses[self._status] = self.statuses.get(self._status, 0) + 1
                self.digest.update(repr((self._status, sorted(self._headers))).encode())
                self.digest.update(out)


def build(data: Path, n_page_warm: int = 256) -> dict[str, Caller]:
    from edge_rerank.cloud.app import CloudConfig, create_app

    bodies = pickle.loads((data / "bodies.pkl").read_bytes())
    a = create_app(CloudConfig(data_dir=str(data / "a"), registry_dir=str(data / "registry"), admin_key="bench",
                               model_version="fallback"))
    b = create_app(CloudConfig(data_dir=str(data / "b"), ranking_cache_size=0))
    bc = create_app(CloudConfig(data_dir=str(data / "bc"), ranking_cache_size=0))
    kind = bc.extensions["edge_rerank.pipeline"].coarse.kind
    if kind != "two-tower":
        raise SystemExit(f"the coarse app runs {kind!r}, not the two-tower stage")
    callers = {"ping": Caller(a, "/ping", None, "GET"), "ping_post": Caller(a, "/ping", bodies["page"], "POST"),
               "page": Caller(a, "/v1/search", bodies["page"], "POST"),
               "search": Caller(a, "/v1/search", bodies["search"], "POST"),
               "ping_post_10k": Caller(b, "/ping", bodies["search_10k"], "POST"),
               "search_10k": Caller(b, "/v1/search", bodies["search_10k"], "POST"),
               "search_coarse": Caller(bc, "/v1/search", bodies["search_10k"], "POST")}
    callers["page"].run(n_page_warm)  # every page body's ranking and encoded page cached
    callers["page"].k = 0
    gc.collect()  # what cloud.gunicorn_conf.post_worker_init does once the app is loaded in a worker
    gc.freeze()
    return callers


def check_outputs(data: Path, n: int) -> dict:
    """Digest of the first `n` answers of each kind from freshly built apps (deterministic: compare across code)."""
    callers = build(data)
    out = {}
    for k, c in callers.items():
        c.run(n, record=True)
        out[k] = {"sha256": c.digest.hexdigest(), "statuses": c.statuses}
    return out


def cpu_times(data: Path, rounds: int, n: dict[str, int]) -> dict:
    """CPU µs per request: each round runs every kind once (interleaved), medians over rounds."""
    callers = build(data)
    for k, c in callers.items():
        c.run(max(n[k] // 4, 5))  # warm
    per: dict[str, list[float]] = {k: [] for k in callers}
    for _ in range(rounds):
        for k, c in callers.items():
            t0 = time.process_time()
            c.run(n[k])
            per[k].append((time.process_time() - t0) / n[k] * 1e6)
    return {k: {"median_us": float(np.median(v)), "min_us": float(np.min(v)), "max_us": float(np.max(v)),
                "rounds": v} for k, v in per.items()}


def _ctl(*args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(os.getpid())], check=True, capture_output=True)


def callgrind_inner(data: Path, n: dict[str, int], out_dir: Path) -> None:
    """Runs under ``valgrind --tool=callgrind --instr-atstart=no``: each kind's requests in one instrumented
    segment, dumped under the kind's name; an empty segment measures the control overhead."""
    callers = build(data)
    for k, c in callers.items():
        c.run(max(n[k] // 4, 5))  # warm (first-call imports, caches)
    for label, k in [("empty", None), *[(k, k) for k in callers]]:
        _ctl("-z")
        _ctl("-i", "on")
        if k is not None:
            callers[k].run(n[k])
        _ctl("-i", "off")
        _ctl(f"--dump={label}")
    (out_dir / "done").write_text("ok")


def _dump_totals(out_dir: Path) -> dict[str, int]:
    res = {}
    for f in sorted(out_dir.glob("cg.out*")):
        label, total = None, None
        for line in f.read_text(errors="replace").splitlines():
            if line.startswith("desc: Trigger: dump "):  # callgrind_control --dump=<label>
                label = line[len("desc: Trigger: dump "):].strip()
            elif line.startswith("totals:"):
                total = int(line.split()[1])
        if label and total is not None:
            res[label] = total
    return res


def callgrind(args, n: dict[str, int]) -> dict:
    with tempfile.TemporaryDirectory(prefix="spc-cg-") as d:
        out_dir = Path(d)
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out_dir}/cg.out",
               sys.executable, str(Path(__file__).resolve()), "--inner-callgrind", str(out_dir), "--data", args.data,
               "--n-valgrind", str(args.n_valgrind)]
        if args.cloud_from:
            cmd += ["--cloud-from", args.cloud_from]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT))
        if p.returncode != 0 or not (out_dir / "done").exists():
            raise SystemExit(f"callgrind run failed ({p.returncode}):\n{p.stderr[-3000:]}")
        tot = _dump_totals(out_dir)
    empty = tot.get("empty", 0)
    return {k: {"instructions_per_request": (tot[k] - empty) / n[k], "n": n[k]} for k in KINDS if k in tot} | {
        "_control_overhead": empty}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT / "runs" / "bench" / "search_path_cost_data"))
    p.add_argument("--out", default=str(ROOT / "runs" / "bench" / "search_path_cost.json"))
    p.add_argument("--label", default="", help="a name for this run in the JSON (e.g. before / after)")
    p.add_argument("--cloud-from", default=None, help="import edge_rerank.cloud from this folder (A/B of code)")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--n", type=int, default=400, help="requests per kind per round (searches: a quarter)")
    p.add_argument("--n-valgrind", type=int, default=200, help="requests per kind under valgrind (searches: 1/4)")
    p.add_argument("--check", type=int, default=200, help="answers per kind hashed (0: skip)")
    p.add_argument("--no-valgrind", action="store_true")
    p.add_argument("--no-cpu", action="store_true")
    p.add_argument("--sessions", type=int, default=300, help="coarse training sessions (prepare only)")
    p.add_argument("--epochs", type=int, default=2, help="coarse training epochs (prepare only)")
    p.add_argument("--inner-callgrind", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    _use_cloud_from(args.cloud_from)
    data = Path(args.data)
    nv = {k: (args.n_valgrind // 4 if k.startswith("search") else args.n_valgrind) for k in KINDS}
    if args.inner_callgrind:
        callgrind_inner(data, nv, Path(args.inner_callgrind))
        return 0
    if not (data / "READY").exists():
        print(f"preparing worlds, coarse model and bodies in {data} ...", flush=True)
        prepare(data, sessions=args.sessions, epochs=args.epochs, n_search=20_000)
    import edge_rerank.cloud.app as app_mod

    res: dict = {"label": args.label, "cloud_code": str(Path(app_mod.__file__).parent),
                 "load_average_start": os.getloadavg(), "data": str(data)}
    print(f"cloud code: {res['cloud_code']}  load average {os.getloadavg()[0]:.2f}", flush=True)
    if args.check:
        res["outputs"] = check_outputs(data, args.check)
    n = {k: (args.n // 4 if k.startswith("search") else args.n) for k in KINDS}
    if not args.no_cpu:
        res["cpu"] = cpu_times(data, args.rounds, n)
    if not args.no_valgrind:
        print("callgrind ...", flush=True)
        res["instructions"] = callgrind(args, nv)
    res["load_average_end"] = os.getloadavg()
    print(f"\n{'kind':15s} {'CPU µs (median)':>16s} {'min–max':>15s} {'M instr':>8s} {'vs ping (CPU)':>14s}"
          f" {'vs ping (instr)':>16s}  output sha256")
    cpu, ins = res.get("cpu", {}), res.get("instructions", {})
    for k in KINDS:
        c = cpu.get(k, {})
        i = ins.get(k, {}).get("instructions_per_request")
        base = "ping" if k in ("ping", "ping_post", "page", "search") else "ping_post_10k"
        rc = cpu[base]["median_us"] / c["median_us"] if c else None
        ri = ins[base]["instructions_per_request"] / i if i else None
        print(f"{k:15s} {c.get('median_us', float('nan')):16.1f} "
              f"{c.get('min_us', float('nan')):7.1f}–{c.get('max_us', float('nan')):<7.1f} "
              f"{(i or float('nan')) / 1e6:8.3f} {rc or float('nan'):14.3f} {ri or float('nan'):16.3f}  "
              f"{res.get('outputs', {}).get(k, {}).get('sha256', '')[:16]}")
    print("(ratios: ping / kind; the 10k kinds against ping_post_10k of the same app)")
    print(f"load average {res['load_average_start'][0]:.2f} -> {res['load_average_end'][0]:.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
