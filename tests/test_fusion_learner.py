"""The RL fusion learner's options (docs/results/rl_fusion.md "RL fusion: what the learner needs"): the actor's
pre-tanh limit, the Monte Carlo critic target and uniform exploration episodes — each off by default (the
article's agent)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_rerank.cloud.training.fusion_rl import AgentConfig, FusionAgent, actor_loss, critic_target, explorer

E, C, L = 6, 9, 5


def _agent(**kw) -> FusionAgent:
    torch.manual_seed(0)
    return FusionAgent(E, C, AgentConfig(n_policies=1, **kw))


def _saturate(agent: FusionAgent, z: float) -> None:
    """Every state's actor output at pre-tanh z (a = 0.25 or 1.75 for |z| large): where DDPG left the agent."""
    with torch.no_grad():
        agent.actors[0][-1].bias.fill_(z)


@pytest.mark.parametrize("z", [-8.0, 8.0])
def test_saturated_actor_has_no_gradient_without_the_limit_and_one_back_with_it(z):
    s = torch.randn(64, 32)
    plain = _agent()
    _saturate(plain, z)
    actor_loss(plain, 0, s).backward()
    assert abs(float(plain.actors[0][-1].bias.grad)) < 1e-4  # tanh'(8) ~ 5e-7: stuck, whatever the critic says
    limited = _agent(actor_preact_limit=2.5)
    _saturate(limited, z)
    actor_loss(limited, 0, s).backward()
    g = float(limited.actors[0][-1].bias.grad)
    assert abs(g) > 1.0 and np.sign(g) == np.sign(z)  # gradient descent moves z back toward the limit


def test_preact_limit_changes_nothing_inside_the_limit():
    s = torch.randn(64, 32)
    plain, limited = _agent(), _agent(actor_preact_limit=2.5)
    for a in (plain, limited):
        _saturate(a, 1.5)
    assert torch.equal(actor_loss(plain, 0, s), actor_loss(limited, 0, s))
    assert torch.allclose(actor_loss(plain, 0, s), -plain.advantage(0, s, plain.act(0, s)).mean())


def _batch(n: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {"seq": torch.randn(n, L, E, generator=g), "ctx": torch.randn(n, C, generator=g),
            "u": torch.rand(n, generator=g) * 2 - 1, "r": torch.randn(n, generator=g),
            "seq2": torch.randn(n, L, E, generator=g), "ctx2": torch.randn(n, C, generator=g),
            "done": (torch.rand(n, generator=g) < 0.4).float(), "ret": torch.randn(n, generator=g) * 3}


def test_critic_target_td_bootstraps_and_mc_is_the_stored_return():
    b, gen = _batch(), torch.Generator().manual_seed(0)
    td = _agent()
    with torch.no_grad():
        s2 = td.state(b["seq2"], b["ctx2"])
        want = b["r"] + 0.9 * (1 - b["done"]) * (td.value(s2) + td.advantage(0, s2, td.act(0, s2)))
    assert torch.allclose(critic_target(td, 0, b, gen), want)
    assert not torch.allclose(want, b["ret"])
    mc = _agent(critic_target="mc")
    assert torch.equal(critic_target(mc, 0, b, gen), b["ret"])


def _obs(rng: np.random.Generator) -> dict:
    return {"seq": rng.standard_normal((L, E)).astype(np.float32), "ctx": rng.standard_normal(C).astype(np.float32)}


def test_default_exploration_is_the_gaussian_stream_and_uniform_covers_the_range():
    obs = _obs(np.random.default_rng(1))
    a = _agent()  # a fresh actor: u = 0 everywhere
    rng, ref = np.random.default_rng(7), np.random.default_rng(7)
    pi = explorer(a, 0, rng)
    got = [pi(obs) for _ in range(200)]
    assert got == [float(np.clip(0.4 * ref.standard_normal(), -1, 1)) for _ in range(200)]  # no extra draw
    uni = _agent(explore_uniform=1.0)
    rng = np.random.default_rng(7)
    us = np.array([explorer(uni, 0, rng)(obs) for _ in range(400)])
    assert us.min() < -0.9 and us.max() > 0.9 and abs(us.std() - 1 / np.sqrt(3)) < 0.05
    _saturate(uni, -8.0)  # even with the actor at one end, a uniform episode reaches the other
    assert max(explorer(uni, 0, rng)(obs) for _ in range(50)) > 0.8


@pytest.mark.parametrize("kw", [{"critic_target": "n-step"}, {"explore_uniform": 1.5}, {"explore_uniform": -0.1},
                                {"actor_preact_limit": -1.0}, {"v_anchor": "none"}])
def test_bad_learner_options_are_refused(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        AgentConfig(**kw)


def test_cli_learner_options(capsys):
    from edge_rerank.cli import build_parser, main

    a = build_parser().parse_args(["fusion", "train"])
    assert (a.critic_target, a.explore_uniform, a.actor_preact_limit, a.v_anchor) == ("td", 0.0, 0.0, "mc")
    a = build_parser().parse_args(["fusion", "train", "--critic-target", "mc", "--explore-uniform", "0.2",
                                   "--actor-preact-limit", "2.5", "--v-anchor", "td"])
    assert (a.critic_target, a.explore_uniform, a.actor_preact_limit, a.v_anchor) == ("mc", 0.2, 2.5, "td")
    assert main(["fusion", "train", "--explore-uniform", "2", "--out", "/nonexistent/never"]) == 2
    assert "--explore-uniform" in capsys.readouterr().err
