"""The simulator's session outcomes are pinned: a faster loop must not change any of them.

Every session's outcome (clicks, orders, exposures, examined and clicked positions, pages, screens, modelled
latencies and energy, triggers, reranks, and for logging phones every impression-log row: candidates with all their
page-item fields, events) is reduced to a digest, and the digests of a few hundred seeded sessions per case are
compared with ``tests/data/simulator_outcome_digests.json``. That file was written by the code *before* the
cloud-only loop was made cheaper (issue 18, branch h26: commit ac07634), with::

    .venv/bin/python tests/test_simulator_outcome_digest.py --write

and must only be rewritten by a change that is *meant* to change outcomes (say so in the commit).

The cases: the cloud-only arm as ``bench/simulator_bench.py`` runs it (lean events, no logs); the same with
impression logs (every field of every row); a reranker reading the page items (heuristic, with logs); the oracle
(reads the user's utility); the feed world (re-shown items, the topic as the saturation key, its own user model);
the protobuf round trip (``InProcessCloud(wire=True)``).

The digests are float bit patterns of this platform's numpy/BLAS: a ``platform`` canary (float work the changed
code does not do: world arrays, a matrix product, the cloud ranker on fixed inputs) is pinned beside them, and a
platform whose canary differs skips the comparison (saying so) instead of failing on rounding it did not cause.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import tempfile
from collections import Counter
from enum import Enum
from pathlib import Path

import numpy as np
import pytest

from edge_rerank.simulator.arms import ArmSpec, build_arm
from edge_rerank.simulator.transport import InProcessCloud
from edge_rerank.simulator.user_model import UserModel
from edge_rerank.simulator.world import World, WorldConfig

DATA = Path(__file__).resolve().parent / "data" / "simulator_outcome_digests.json"

# name -> (world domain, arm kind, keep_logs, wire, sessions, run seed)
CASES: dict[str, tuple[str, str, bool, bool, int, int]] = {
    "shop_cloud_lean": ("shop", "cloud", False, False, 300, 3),
    "shop_cloud_logs": ("shop", "cloud", True, False, 80, 5),
    "shop_heuristic_logs": ("shop", "heuristic", True, False, 60, 6),
    "shop_oracle": ("shop", "oracle", False, False, 80, 7),
    "shop_cloud_wire": ("shop", "cloud", False, True, 40, 8),
    "feed_cloud_logs": ("feed", "cloud", True, False, 60, 9),
    "feed_oracle": ("feed", "oracle", False, False, 60, 10),
}
SKIP_FIELDS = {"rerank_ms"}  # the host's wall clock (the only outcome that is not a function of the seeds)


def _canon(x, out: list) -> None:
    """Append a canonical, exact text form of `x` (floats by their bits, arrays by dtype, shape and bytes)."""
    if isinstance(x, np.ndarray):
        a = np.ascontiguousarray(x)
        out.append(f"A{a.dtype.str}{a.shape}{hashlib.sha1(a.tobytes()).hexdigest()}")
    elif isinstance(x, bool | type(None) | str) or isinstance(x, Enum):
        out.append(repr(x))
    elif isinstance(x, int | np.integer):
        out.append(f"i{int(x)}")
    elif isinstance(x, float | np.floating):
        out.append(f"f{float(x).hex()}")
    elif dataclasses.is_dataclass(x):
        out.append(type(x).__name__ + "(")
        for f in dataclasses.fields(x):
            if f.name not in SKIP_FIELDS:
                out.append(f.name + "=")
                _canon(getattr(x, f.name), out)
        out.append(")")
    elif isinstance(x, Counter | dict):
        out.append("{")
        for k in sorted(x, key=repr):
            _canon(k, out)
            out.append(":")
            _canon(x[k], out)
        out.append("}")
    elif isinstance(x, list | tuple):
        out.append("[")
        for v in x:
            _canon(v, out)
            out.append(",")
        out.append("]")
    else:
        raise TypeError(f"no canonical form for {type(x).__name__}")


def outcome_digest(outcome) -> str:
    out: list = []
    _canon(outcome, out)
    return hashlib.sha1("".join(out).encode()).hexdigest()[:16]


def platform_canary(world: World, cloud: InProcessCloud) -> str:
    """Float work of this platform the outcomes rest on but the changed code does not do."""
    from edge_rerank.cloud.ranking.fine import FEATURES

    x = np.random.default_rng(0).standard_normal((64, len(FEATURES))).astype(np.float32)
    out: list = []
    _canon([world.latent, world.emb_rows, world.latent @ world.user_latent.T,
            *cloud._pipeline.ranker.forward(x)], out)
    return hashlib.sha1("".join(out).encode()).hexdigest()[:16]


def run_case(name: str, root: Path, worlds: dict) -> list[str]:
    domain, arm_kind, keep_logs, wire, n, seed = CASES[name]
    if domain not in worlds:
        w = World(WorldConfig(seed=0, domain=domain))
        worlds[domain] = (w, str(w.provision_cloud(root / f"cloud_{domain}")))
    world, data_dir = worlds[domain]
    um = UserModel(world)
    cloud = InProcessCloud(data_dir, wire=wire)
    phone = build_arm(ArmSpec(arm_kind, arm_kind), um).phone(um, cloud, keep_logs=keep_logs)
    return [outcome_digest(phone.run(world.session(i, seed))) for i in range(n)]


def compute_all(root: Path) -> dict:
    worlds: dict = {}
    cases = {name: run_case(name, root, worlds) for name in CASES}
    w, data_dir = worlds["shop"]
    return {"platform": platform_canary(w, InProcessCloud(data_dir, wire=False)), "cases": cases}


@pytest.fixture(scope="module")
def pinned() -> dict:
    return json.loads(DATA.read_text())


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    w = World(WorldConfig(seed=0))
    return w, str(w.provision_cloud(tmp_path_factory.mktemp("digest_shop")))


@pytest.fixture(scope="module")
def worlds(shop, pinned) -> dict:
    w, data_dir = shop
    canary = platform_canary(w, InProcessCloud(data_dir, wire=False))
    if canary != pinned["platform"]:
        pytest.skip(f"this platform's float results differ from the ones the digests were made on (canary {canary} "
                    f"!= {pinned['platform']}): the pinned outcomes cannot be compared here")
    return {"shop": shop}


@pytest.mark.parametrize("name", list(CASES))
def test_session_outcomes_are_unchanged(name, worlds, pinned, tmp_path_factory):
    got = run_case(name, tmp_path_factory.mktemp(name), worlds)
    want = pinned["cases"][name]
    assert len(got) == len(want) == CASES[name][4]
    bad = [i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b]
    assert not bad, f"{name}: {len(bad)} of {len(want)} sessions changed outcome, first: session {bad[0]}"


def test_the_digest_sees_every_outcome_field():
    """A changed click position, exposure, float bit or log row changes the digest (so the test can fail)."""
    from edge_rerank.simulator.phone import SessionOutcome

    base = SessionOutcome(session_id="s", query="q", predecided=False, clicks=1, click_positions=[3],
                          exposed_positions=[0, 1, 2, 3], page_ms=[151.25])
    d0 = outcome_digest(base)
    assert outcome_digest(dataclasses.replace(base, click_positions=[2])) != d0
    assert outcome_digest(dataclasses.replace(base, exposed_positions=[0, 1, 2])) != d0
    assert outcome_digest(dataclasses.replace(base, page_ms=[np.nextafter(151.25, 200.0)])) != d0
    assert outcome_digest(dataclasses.replace(base, rows=[np.zeros(2, np.float32)])) != d0
    assert outcome_digest(dataclasses.replace(base, rows=[np.zeros(2, np.float64)])) != outcome_digest(
        dataclasses.replace(base, rows=[np.zeros(2, np.float32)]))
    assert outcome_digest(dataclasses.replace(base, rerank_ms=[1.0])) == d0  # the wall clock is not an outcome


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_simulator_outcome_digest.py --write   (rewrites the pinned digests)")
    data = compute_all(Path(tempfile.mkdtemp(prefix="digests-")))
    data = {"_comment": "session outcome digests written by tests/test_simulator_outcome_digest.py --write at "
                        "commit ac07634 (before issue 18's cloud-only loop work, branch h26); see its docstring",
            **data}
    DATA.parent.mkdir(parents=True, exist_ok=True)
    DATA.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {DATA}: {sum(len(v) for v in data['cases'].values())} sessions")
