"""`simulate --ray`: the same A/B on local Ray workers gives identical results to the local run."""

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from edge_rerank.simulator.ab import run_ab  # noqa: E402
from edge_rerank.simulator.arms import build_arm, parse_arms  # noqa: E402
from edge_rerank.simulator.distributed import TransportSpec, run_ab_ray  # noqa: E402
from edge_rerank.simulator.session_metrics import session_table  # noqa: E402
from edge_rerank.simulator.user_model import UserModel  # noqa: E402
from tests.conftest import WCFG  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _same(a, b):
    for x, y in zip(a, b, strict=True):
        assert x.name == y.name
        tx, ty = session_table(x.outcomes), session_table(y.outcomes)
        assert all(np.array_equal(tx[k], ty[k]) for k in tx)
        assert [o.click_positions for o in x.outcomes] == [o.click_positions for o in y.outcomes]
        assert [o.device_ms for o in x.outcomes] == [o.device_ms for o in y.outcomes]
        assert x.reranks_applied == y.reranks_applied and x.triggers == y.triggers


def test_ray_run_is_identical_to_the_local_run(local_ray, world, cloud_data, inproc_cloud):
    specs = parse_arms("cloud,random,heuristic,oracle")
    um = UserModel(world)
    local = run_ab(um, inproc_cloud, [build_arm(s, um) for s in specs], 120, seed=77, progress=False)
    remote = run_ab_ray(WCFG, TransportSpec("inproc", data_dir=str(cloud_data)), specs, 120, seed=77,
                        num_workers=2, chunk=25, progress=False)
    _same(local, remote)
    assert any(r.reranks_applied for r in remote)


def test_cli_simulate_ray_matches_local(local_ray, tmp_path):
    import json

    from edge_rerank.cli import main

    args = ["--no-progress", "simulate", "--sessions", "60", "--seed", "5", "--arms", "cloud,heuristic",
            "--transport", "inproc"]
    assert main([*args, "--out", str(tmp_path / "local")]) == 0
    assert main([*args, "--out", str(tmp_path / "ray"), "--ray"]) == 0
    a = json.loads((tmp_path / "local" / "report.json").read_text())
    b = json.loads((tmp_path / "ray" / "report.json").read_text())
    assert a["arms"]["heuristic"]["qv_ctr"] == b["arms"]["heuristic"]["qv_ctr"]
    assert a["deltas"] == b["deltas"] and a["position_ctr"] == b["position_ctr"]
