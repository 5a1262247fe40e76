"""The Gymnasium PhoneSessionEnv: API conformance (env_checker), determinism per seed, and that its actions
reach the user (an agent scoring by the hidden intent beats keeping the cloud order)."""

import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")

from gymnasium.utils.env_checker import check_env  # noqa: E402

from edge_rerank.simulator.env import PhoneSessionEnv  # noqa: E402


@pytest.fixture(scope="module")
def env(world, inproc_cloud):
    return PhoneSessionEnv(world, inproc_cloud, session_seed=5)


def test_passes_gymnasium_env_checker(env):
    check_env(env, skip_render_check=True)


def _episode(env, seed, policy):
    obs, info = env.reset(seed=seed)
    total, steps, trace = 0.0, 0, []
    done = False
    while not done:
        obs, r, done, trunc, info = env.step(policy(env, obs))
        total += r
        steps += 1
        trace.append((r, obs.copy()))
    return total, steps, trace


def _keep(env, obs):
    return np.zeros(env.action_space.shape, np.float32)


def _intent(env, obs):
    """Cheating agent: scores the unseen window by the user's true utility (what the oracle arm does)."""
    s = env.session
    window = s.display[s.shown_upto: s.shown_upto + env.window]
    a = np.zeros(env.action_space.shape, np.float32)
    if window:
        rows = np.array([it.item_id for it in window]) - env.world.item_id[0]
        u = env.um.utility(s.spec, rows)
        a[: len(window)] = np.tanh(u - u.mean())
    return a


def test_deterministic_for_a_seed(env):
    a = _episode(env, 123, _keep)
    b = _episode(env, 123, _keep)
    assert a[:2] == b[:2] and all(np.array_equal(x[1], y[1]) for x, y in zip(a[2], b[2], strict=True))
    obs_a, _ = env.reset(seed=1)
    obs_b, _ = env.reset(seed=2)
    assert not np.array_equal(obs_a, obs_b)


def test_actions_reach_the_user(env):
    keep = sum(_episode(env, s, _keep)[0] for s in range(60))
    intent = sum(_episode(env, s, _intent)[0] for s in range(60))
    assert intent > keep


def test_bad_action_is_a_clear_error(env):
    env.reset(seed=0)
    with pytest.raises(ValueError, match="finite scores"):
        env.step(np.full(env.window, np.nan))
