"""The simulator's device loop (one session at a time, the device model in the loop), the SDK of this checkout
against the rerank service and feature builder of a git revision (``--baseline``), interleaved in one process:
chunks of sessions alternate between the two arms, each chunk timed in CPU seconds (what a shared machine's load
does not inflate as much as wall time). Same bundle, same sessions, same outcomes expected (checked).

The baseline arms also keep their sessions' events in the baseline revision's ``FeedbackStore`` (its per-event
``add``), so the store's work is part of the before/after.

``--lockstep B`` adds the lock-step runner of both (``simulator/lockstep.py`` of this checkout and of the baseline
revision, batch B) as two more arms, interleaved with the other two: chunks are then ``--chunk`` sessions of each arm
in turn, in a rotating order, and the report gives each arm's median over chunks as well as the total. Without
``--bundle`` a small device model is trained first and every arm scores through a batch-dynamic ONNX export of it
(the bundles' files have a fixed batch of 1, which lock-step can only run row by row).

    .venv/bin/python bench/sim_device_ab.py --bundle runs/demo/shipped/bundle [--sessions 600] [--chunk 25]
    .venv/bin/python bench/sim_device_ab.py --lockstep 64 --sessions 512 --chunk 128 --baseline 76bf501
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from device_bench import _module_at, baseline_modules  # noqa: E402

from edge_rerank.device_sdk.features.operators import FeatureBuilder  # noqa: E402
from edge_rerank.device_sdk.model_manager import load_model  # noqa: E402
from edge_rerank.device_sdk.reranker import RerankService  # noqa: E402
from edge_rerank.simulator.ab import Arm  # noqa: E402
from edge_rerank.simulator.transport import InProcessCloud  # noqa: E402
from edge_rerank.simulator.user_model import UserModel  # noqa: E402
from edge_rerank.simulator.world import World, WorldConfig  # noqa: E402


def _cpu_timed(fn, acc: list):
    """`fn` adding its thread CPU time and call count to `acc` ([seconds, calls])."""
    def timed(*args, **kwargs):
        c = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            acc[0] += time.thread_time() - c
            acc[1] += 1

    return timed


def _one_at_a_time(phone):
    return lambda specs: [phone.run(s) for s in specs]


def baseline_lockstep(rev: str, old_reranker):
    """The lock-step runner of git revision `rev`, over that revision's RerankService (`old_reranker`)."""
    mod = _module_at(rev, "simulator/lockstep.py", "baseline_lockstep", {
        "from edge_rerank.device_sdk.reranker import": "from baseline_reranker import"})
    if not isinstance(old_reranker.RerankService.__new__(old_reranker.RerankService), mod.RerankService):
        raise RuntimeError(f"the lock-step runner of {rev} does not take that revision's RerankService: it would "
                           "run one session at a time")
    return mod


def baseline_sdk(rev: str):
    """``device_bench.baseline_modules`` with the rerank-time path (``features/rerank_path.py``) of `rev` too."""
    return baseline_modules(rev, ("event_rows", "item_table", "rerank_path"))


def baseline_store(rev: str):
    """The in-memory ``FeedbackStore`` of git revision `rev` (its ``add`` and validation path; the columns and
    contracts modules are this checkout's, whose ``append`` and ``validate_feedback_event`` it calls)."""
    return _module_at(rev, "device_sdk/feedback_store.py", "baseline_feedback_store").FeedbackStore


def with_store(phone, store_cls):
    """`phone` (and the lock-step runner's copies of it) running each session's ``RerankSession`` over a fresh
    `store_cls` store instead of the SDK's default ``FeedbackStore`` (the baseline arms' store: a before/after of
    the store's per-event work in the same process)."""
    from edge_rerank.device_sdk.session import RerankSession
    from edge_rerank.simulator.phone import PhoneSession

    def device_session(*args, **kwargs):
        return RerankSession(*args, store=store_cls(strict=kwargs.get("strict", False)), **kwargs)

    class _Session(PhoneSession):
        device_session_class = staticmethod(device_session)

    class _Phone(type(phone)):
        def session(self, spec):
            return _Session(self, spec)

        def run(self, spec):
            s = _Session(self, spec)
            while not s.done:
                s.play_screen()
            return s.out

    phone.__class__ = _Phone
    return phone


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", help="device bundle (default: train a small model; every arm then scores through a "
                   "batch-dynamic ONNX export of it)")
    p.add_argument("--lockstep", type=int, default=0, help="also the lock-step runners of both, batch B (0: no)")
    p.add_argument("--gc-freeze", action="store_true",
                   help="gc.freeze() after setup and warm-up: full collections stop walking the ~0.5 M objects of the "
                        "imported modules (torch) and the world (every arm alike)")
    p.add_argument("--sessions", type=int, default=600)
    p.add_argument("--chunk", type=int, default=25)
    p.add_argument("--baseline", default="ecc4a41")
    p.add_argument("--out", default="runs/bench/sim_device_ab.json")
    a = p.parse_args()
    world = World(WorldConfig(seed=0))
    um = UserModel(world)
    tmp = Path(tempfile.mkdtemp())
    cloud = InProcessCloud(str(world.provision_cloud(tmp / "cloud")), wire=False)
    old_ops, old = baseline_sdk(a.baseline)
    if a.bundle:
        def loaded():
            return load_model(a.bundle)
    else:  # a small model, scored through a batch-dynamic export (what lock-step batches through)
        from simulator_bench import batch_dynamic_arm, small_bundle

        bundle, model, test = small_bundle(world, cloud, tmp / "export", with_model=True)
        dyn = batch_dynamic_arm(str(bundle), model, test, tmp / "onnx-batch").reranker.model

        def loaded():
            return dyn
    # per call, each arm's feature build and whole rerank call in CPU time (the loop's share of them); not with
    # lock-step arms (a call's thread time would include the other sessions of its round)
    spent = {k: [0.0, 0] for k in ("now_features", "baseline_features", "now_call", "baseline_call")}
    if not a.lockstep:
        for cls, name, key in ((FeatureBuilder, "build", "now_features"), (old_ops.FeatureBuilder, "build",
                                                                              "baseline_features"),
                               (RerankService, "rerank", "now_call"), (old.RerankService, "rerank", "baseline_call")):
            setattr(cls, name, _cpu_timed(getattr(cls, name), spent[key]))
    phones = {"now": Arm("device", RerankService(loaded())).phone(um, cloud),
              "baseline": with_store(Arm("device", old.RerankService(loaded())).phone(um, cloud),
                                     baseline_store(a.baseline))}
    runners = {k: _one_at_a_time(ph) for k, ph in phones.items()}
    if a.lockstep:
        from edge_rerank.simulator.lockstep import LockstepRunner

        old_ls = baseline_lockstep(a.baseline, old)
        runners["now_lockstep"] = LockstepRunner(phones["now"], a.lockstep).run
        runners["baseline_lockstep"] = old_ls.LockstepRunner(phones["baseline"], a.lockstep).run
    warm = [world.session(i, 1) for i in range(max(20, 2 * a.lockstep))]
    for run in runners.values():
        run(warm)
    for v in spent.values():
        v[:] = [0.0, 0]
    if a.gc_freeze:
        import gc

        gc.collect()
        gc.freeze()
    cpu = {k: 0.0 for k in runners}
    per_chunk: dict[str, list[float]] = {k: [] for k in runners}
    digest: dict[str, list] = {k: [] for k in runners}
    specs = [world.session(i, 0) for i in range(a.sessions)]
    load0 = os.getloadavg()
    names = list(runners)
    for c, start in enumerate(range(0, len(specs), a.chunk)):
        chunk = specs[start: start + a.chunk]
        order = names[c % len(names):] + names[: c % len(names)]  # rotating: every arm goes first as often
        if c % 2:
            order = order[::-1]
        for k in order:
            t = time.process_time()
            outs = runners[k](chunk)
            dt = time.process_time() - t
            cpu[k] += dt
            per_chunk[k].append(len(chunk) / dt)
            digest[k].extend((o.session_id, o.clicks, len(o.device_ms), tuple(o.device_ms)) for o in outs)
    res: dict = {k: {"sessions": len(specs), "cpu_s": cpu[k], "sessions_per_cpu_s": len(specs) / cpu[k],
                     "median_chunk_sessions_per_cpu_s": float(np.median(per_chunk[k])),
                     "chunk_sessions_per_cpu_s": per_chunk[k]} for k in runners}
    if not a.lockstep:
        for k in phones:
            for part in ("features", "call"):
                t, n = spent[f"{k}_{part}"]
                res[k][f"{part}_cpu_ms_per_call"] = 1e3 * t / max(n, 1)
                res[k][f"{part}_cpu_share"] = t / cpu[k]
            res[k]["reranks"] = spent[f"{k}_call"][1]
    res["speedup"] = res["now"]["sessions_per_cpu_s"] / res["baseline"]["sessions_per_cpu_s"]

    def paired(x: str, y: str) -> float:
        """Median over chunks of arm x's rate / arm y's in the same chunk (robust to a chunk slowed by the machine)."""
        return float(np.median(np.array(per_chunk[x]) / np.array(per_chunk[y])))

    res["paired_median_speedup"] = paired("now", "baseline")
    if a.lockstep:
        res["speedup_lockstep"] = res["now_lockstep"]["sessions_per_cpu_s"] / res["baseline_lockstep"][
            "sessions_per_cpu_s"]
        res["speedup_lockstep_vs_baseline_one_at_a_time"] = res["now_lockstep"]["sessions_per_cpu_s"] / res[
            "baseline"]["sessions_per_cpu_s"]
        res["paired_median_speedup_lockstep"] = paired("now_lockstep", "baseline_lockstep")
        res["paired_median_speedup_lockstep_vs_baseline_one_at_a_time"] = paired("now_lockstep", "baseline")
        res["paired_median_speedup_lockstep_vs_now_one_at_a_time"] = paired("now_lockstep", "now")
    res["baseline_rev"], res["load_avg"] = a.baseline, [load0, os.getloadavg()]
    res["lockstep_batch"], res["chunk"], res["bundle"] = a.lockstep, a.chunk, a.bundle or "small, batch-dynamic ONNX"
    res["gc_freeze"] = a.gc_freeze
    res["same_outcomes"] = all(digest[k] == digest["now"] for k in runners)
    for k in runners:
        r = res[k]
        line = (f"{k:<18} {r['sessions_per_cpu_s']:7.1f} sessions per CPU-second (median over chunks "
                f"{r['median_chunk_sessions_per_cpu_s']:.1f})")
        if "call_cpu_ms_per_call" in r:
            line += (f"; per rerank call {r['call_cpu_ms_per_call']:.3f} ms CPU ({100 * r['call_cpu_share']:.0f} % "
                     f"of the loop), features {r['features_cpu_ms_per_call']:.3f} ms "
                     f"({100 * r['features_cpu_share']:.0f} %)")
        print(line)
    print(f"same outcomes (clicks, modelled latencies) in every arm: {res['same_outcomes']}")
    print(f"now / baseline: {res['speedup']:.2f}x (paired median over chunks {res['paired_median_speedup']:.2f}x)" + (
        f"; lock-step now / baseline {res['speedup_lockstep']:.2f}x "
        f"({res['paired_median_speedup_lockstep']:.2f}x); lock-step now / baseline one at a time "
        f"{res['speedup_lockstep_vs_baseline_one_at_a_time']:.2f}x "
        f"({res['paired_median_speedup_lockstep_vs_baseline_one_at_a_time']:.2f}x); lock-step now / now one at a "
        f"time ({res['paired_median_speedup_lockstep_vs_now_one_at_a_time']:.2f}x)" if a.lockstep else "")
        + f" (load average {load0[0]:.1f} -> {os.getloadavg()[0]:.1f})")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
