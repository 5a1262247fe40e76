"""The RL fusion agent (SPEC §2, seed 003): DDPG with Q(s, a) = V(s) + A(s, a), a shared state network, V
pre-trained on baseline (a = 1) traffic, actions clipped around 1, and several parallel policies.

Why a small DDPG in torch and not Stable-Baselines3 / TorchRL: the article's network is not a DDPG variant those
libraries parameterise. SB3's DDPG/TD3 keep one actor and one critic with target copies; here the critic is
split into a state value V(s) (trained first on baseline traffic, where no action-dependent part exists) and
advantages A_k(s, a) with A_k(s, a=1) = 0 by construction, one per parallel policy k, all sharing one state
network and one V, with no target networks (the article's "on-policy" parameter sharing: the same parameters
estimate Q_{t+1} and update Q_t). Expressing that in SB3 means replacing its policy, critic and ``train()``,
i.e. everything but the replay buffer; the whole agent here is ~150 lines and adds no dependency.

Pieces:
- :class:`StateNet` — 1-D CNN over the behaviour sequence [L, E] (two conv layers, max + mean pooling) plus an
  MLP over the context; the state s.
- :class:`FusionAgent` — StateNet, V head, K advantage heads ``A_k(s, u) = f_k(s, u) − f_k(s, 0)`` and K actors
  ``u = tanh(·)`` (last layer zero-initialised: every policy starts at u = 0, i.e. a = 1); ``a = 1 + clip · u``.
- :func:`train_fusion_agent` — collect baseline episodes (u = 0) and pre-train StateNet + V on their Monte
  Carlo returns; then DDPG rounds: each episode is served by one policy (round-robin, like A/B buckets) with
  Gaussian exploration noise; critic loss (V + A_k against r + γ Q_k(s', π_k(s'))) updates the state network,
  V and A_k; the actor loss −A_k(s, π_k(s)) updates actor k only. Finally each policy is evaluated greedily on
  held-out sessions (paired with the baseline) and the best is kept (the article trained several seeds and kept
  the best).
- ``AgentConfig.twin_critic``: the critic's overestimation (the actor climbs the noise of A) countered as TD3 does,
  minus its target networks: two advantage heads per policy, the TD target takes the smaller at a smoothed
  action; the actor follows the first head.
- The learner's options (docs/results/rl_fusion.md "RL fusion: what the learner needs"; all off by default):
  ``actor_preact_limit`` (keeps the actor's tanh from saturating), ``v_anchor = "td"`` (baseline rows as a = 1
  transitions with the policy's TD target instead of anchoring V at the baseline's return, so A is the action's own
  effect and does not carry the policy's continuation), ``explore_uniform`` (uniformly random episodes) and
  ``critic_target = "mc"`` (Monte Carlo return targets); see :func:`actor_loss`, :func:`critic_target`,
  :func:`explorer`.
- :func:`export_actor_onnx` — the chosen actor with the state network: inputs ``seq`` [1, L, E], ``ctx`` [1, C],
  output ``a`` [1] (already ``1 + clip · u``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class AgentConfig:
    n_policies: int = 2
    state_dim: int = 32
    gamma: float = 0.9
    lr: float = 2e-3
    actor_lr: float = 1e-3
    pretrain_episodes: int = 3000
    pretrain_epochs: int = 30
    episodes: int = 6000  # DDPG episodes over all policies
    updates_per_episode: int = 1
    batch_size: int = 128
    noise: float = 0.4  # exploration: Gaussian on u (the article used an OU process; episodes here are 1-3 pages)
    eval_episodes: int = 1500
    seed: int = 0
    # a lower-variance critic target (TD3's two fixes, without its target networks): two advantage heads per
    # policy and the TD target takes the smaller (clipped double-Q), at a noisy action (target smoothing)
    twin_critic: bool = False
    target_noise: float = 0.2  # sd of the Gaussian on u' in the target (0: none)
    target_noise_clip: float = 0.5
    # what the critic learns (docs/results/rl_fusion.md "RL fusion: what the learner needs"): "td" bootstraps Q(s, a) on
    # r + gamma Q(s', pi(s')) (the article's); "mc" regresses it on the episode's discounted Monte Carlo return from
    # that page (unbiased on 1-5 page episodes, no bootstrapping through an untrained A)
    critic_target: str = "td"
    # exploration: the share of DDPG episodes served with uniformly random actions on every page (u ~ U[-1, 1]), so
    # the critic keeps seeing the whole action range after the actor has moved to one end (0: Gaussian noise only)
    explore_uniform: float = 0.0
    # the actor's tanh saturating: the actor loss adds (|z| - limit)^2 for pre-tanh outputs z beyond +-limit, so a
    # policy pushed to one end of the clip keeps a gradient (at z = -8, tanh' = 5e-7: it could never come back when
    # the critic later prefers the other end for some states). 0: off (the article's plain actor)
    actor_preact_limit: float = 0.0
    # the baseline rows (a = 1, u = 0) in the DDPG phase: "mc" anchors V(s) = Q_k(s, 0) at their Monte Carlo return
    # under the baseline (the article's: V is the baseline's value), so A_k(s, u) must also carry V^pi_k(s) −
    # V^base(s), the policy's gain on the *later* pages, and extrapolates it in u; "td" uses them as off-policy
    # transitions at u = 0 with the policy's target (with critic_target "td": r + gamma Q_k(s', pi_k(s'))), so
    # Q_k(s, 0) learns the policy's continuation and A_k only the action's own effect
    v_anchor: str = "mc"
    # the advantage target from common-random-number paired rollouts in the simulator (docs/results/rl_fusion.md
    # "RL fusion: paired rollouts"): at every page t of an episode the session is replayed twice with the same random
    # numbers, (i) the episode's u at t then u = 0, (ii) u = 0 from t, and A_k(s_t, u_t) is regressed on G_i − G_ii —
    # the advantage of deviating from the baseline at that one page, A^base (so V stays the baseline's value:
    # v_anchor "mc"). Simulator-only: a real app cannot replay a user. paired_horizon > 0 cuts both continuations
    # after that many pages (0: to the end of the session)
    paired_rollouts: bool = False
    paired_horizon: int = 0

    def __post_init__(self) -> None:
        if self.critic_target not in ("td", "mc"):
            raise ValueError(f"critic_target must be 'td' or 'mc', got {self.critic_target!r}")
        if not 0.0 <= self.explore_uniform <= 1.0:
            raise ValueError(f"explore_uniform must be in [0, 1], got {self.explore_uniform}")
        if self.v_anchor not in ("td", "mc"):
            raise ValueError(f"v_anchor must be 'td' or 'mc', got {self.v_anchor!r}")
        if self.actor_preact_limit < 0:
            raise ValueError(f"actor_preact_limit must be >= 0 (0: off), got {self.actor_preact_limit}")
        if self.paired_horizon < 0:
            raise ValueError(f"paired_horizon must be >= 0 (0: to the end of the session), got {self.paired_horizon}")
        if self.paired_rollouts and (self.twin_critic or self.critic_target != "td" or self.v_anchor != "mc"):
            raise ValueError("paired_rollouts replaces the critic's target (A on G_i − G_ii, V on the baseline's "
                             "return): it does not combine with twin_critic, critic_target 'mc' or v_anchor 'td'")

    def to_dict(self) -> dict:
        return asdict(self)


class StateNet(nn.Module):
    def __init__(self, event_dim: int, ctx_dim: int, state_dim: int = 32, channels: int = 16):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(event_dim, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv1d(channels, channels, 3, padding=1), nn.ReLU())
        self.ctx = nn.Sequential(nn.Linear(ctx_dim, 16), nn.ReLU())
        self.out = nn.Sequential(nn.Linear(2 * channels + 16, state_dim), nn.ReLU())

    def forward(self, seq: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        h = self.conv(seq.transpose(1, 2))  # [B, C, L]
        pooled = torch.cat([h.max(dim=2).values, h.mean(dim=2)], dim=1)
        return self.out(torch.cat([pooled, self.ctx(ctx)], dim=1))


def _mlp(n_in: int, n_hidden: int = 32) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_hidden), nn.ReLU(), nn.Linear(n_hidden, 1))


class FusionAgent(nn.Module):
    def __init__(self, event_dim: int, ctx_dim: int, cfg: AgentConfig):
        super().__init__()
        self.cfg = cfg
        self.state = StateNet(event_dim, ctx_dim, cfg.state_dim)
        self.v = _mlp(cfg.state_dim)
        self.adv = nn.ModuleList(_mlp(cfg.state_dim + 1) for _ in range(cfg.n_policies))
        # the twin advantages (clipped double-Q); empty without twin_critic
        self.adv2 = nn.ModuleList(_mlp(cfg.state_dim + 1) for _ in range(cfg.n_policies if cfg.twin_critic else 0))
        self.actors = nn.ModuleList(_mlp(cfg.state_dim) for _ in range(cfg.n_policies))
        for actor in self.actors:  # every policy starts at u = 0 (a = 1, the baseline)
            nn.init.zeros_(actor[-1].weight)
            nn.init.zeros_(actor[-1].bias)

    def value(self, s: torch.Tensor) -> torch.Tensor:
        return self.v(s).squeeze(-1)

    def advantage(self, k: int, s: torch.Tensor, u: torch.Tensor, twin: bool = False) -> torch.Tensor:
        f = (self.adv2 if twin else self.adv)[k]
        return (f(torch.cat([s, u[:, None]], 1)) - f(torch.cat([s, torch.zeros_like(u)[:, None]], 1))).squeeze(-1)

    def advantage_min(self, k: int, s: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """min of the twin advantages (the first one alone without twin_critic)."""
        a = self.advantage(k, s, u)
        return torch.minimum(a, self.advantage(k, s, u, twin=True)) if len(self.adv2) else a

    def q(self, k: int, s: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self.value(s) + self.advantage(k, s, u)

    def act(self, k: int, s: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.actors[k](s).squeeze(-1))


class ActorExport(nn.Module):
    """(seq [B, L, E], ctx [B, C]) -> a [B] = 1 + clip · u for one policy."""

    def __init__(self, agent: FusionAgent, k: int, clip: float):
        super().__init__()
        self.state, self.actor, self.clip = agent.state, agent.actors[k], float(clip)

    def forward(self, seq: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        return 1.0 + self.clip * torch.tanh(self.actor(self.state(seq, ctx)).squeeze(-1))


@dataclass
class Transitions:
    seq: list = field(default_factory=list)
    ctx: list = field(default_factory=list)
    u: list = field(default_factory=list)
    r: list = field(default_factory=list)
    seq2: list = field(default_factory=list)
    ctx2: list = field(default_factory=list)
    done: list = field(default_factory=list)
    policy: list = field(default_factory=list)
    ret: list = field(default_factory=list)  # Monte Carlo return from this step
    adv: list = field(default_factory=list)  # paired-rollout advantage target G_i − G_ii (nan: none)

    def __len__(self) -> int:
        return len(self.r)

    def tensors(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        def t(name: str, dtype=np.float32) -> torch.Tensor:
            return torch.from_numpy(np.asarray([getattr(self, name)[i] for i in idx], dtype=dtype))

        return {"seq": t("seq"), "ctx": t("ctx"), "u": t("u"), "r": t("r"), "seq2": t("seq2"), "ctx2": t("ctx2"),
                "done": t("done"), "ret": t("ret"), "adv": t("adv")}


def run_episode(env, policy: Callable[[dict], float], *, seed: int, buf: Transitions | None = None, k: int = -1,
                gamma: float = 0.9, paired=None) -> dict:
    """One episode; `policy(obs) -> u`. Appends its transitions to `buf` (with policy index `k`). ``paired`` (a
    ``simulator.fusion_env.PairedRollouts``): each transition also gets its paired advantage target G_i − G_ii
    (otherwise nan)."""
    obs, reset_info = env.reset(seed=seed)
    steps, total, info = [], 0.0, {}
    done = False
    while not done:
        u = float(policy(obs))
        obs2, r, done, _, info = env.step(np.array([u], dtype=np.float32))
        steps.append((obs, u, r, obs2, done))
        total += r
        obs = obs2
    adv = paired_targets(paired, reset_info["session_index"], steps) if paired is not None else [np.nan] * len(steps)
    if buf is not None:
        g = 0.0
        rets = []
        for _, _, r, _, _ in reversed(steps):
            g = r + gamma * g
            rets.append(g)
        for (o, u, r, o2, d), g, a in zip(steps, reversed(rets), adv, strict=True):
            buf.seq.append(o["seq"]), buf.ctx.append(o["ctx"]), buf.u.append(u), buf.r.append(r)
            buf.seq2.append(o2["seq"]), buf.ctx2.append(o2["ctx"]), buf.done.append(float(d)), buf.policy.append(k)
            buf.ret.append(g), buf.adv.append(a)
    return {"reward": total, "steps": len(steps), **info}


def paired_targets(paired, index: int, steps: list) -> list[float]:
    """G_i − G_ii at every page t of a played episode (`steps`: (obs, u, r, obs2, done)): both continuations
    replay the session's first t pages with the episode's actions, then (i) u_t, (ii) u = 0 at t, and u = 0 after
    (common random numbers). A u_t of exactly 0 gives 0 without playing. At the last page without a horizon cut,
    (i) is the episode's own last reward (the same session, the same actions: a replay would repeat it). The
    replays are ``PairedRollouts.episode_targets``'s (each play serves as (i) at one page and (ii) at the next)."""
    if not steps:
        return []
    return paired.episode_targets(index, [u for _, u, _, _, _ in steps], last_reward=steps[-1][2])


def _greedy(agent: FusionAgent, k: int) -> Callable[[dict], float]:
    def pi(obs: dict) -> float:
        with torch.no_grad():
            s = agent.state(torch.from_numpy(obs["seq"][None]), torch.from_numpy(obs["ctx"][None]))
            return float(agent.act(k, s)[0])
    return pi


def explorer(agent: FusionAgent, k: int, rng: np.random.Generator) -> Callable[[dict], float]:
    """The behaviour policy of one DDPG episode of policy k: pi_k(s) + Gaussian noise, clipped to [-1, 1]; with
    probability ``cfg.explore_uniform`` the whole episode is uniform on [-1, 1] instead (no draw when it is 0: the
    default's random stream is the article agent's)."""
    cfg, greedy = agent.cfg, _greedy(agent, k)
    if cfg.explore_uniform > 0 and rng.random() < cfg.explore_uniform:
        return lambda _obs: float(rng.uniform(-1.0, 1.0))
    return lambda obs: float(np.clip(greedy(obs) + cfg.noise * rng.standard_normal(), -1.0, 1.0))


def critic_target(agent: FusionAgent, k: int, b: dict[str, torch.Tensor], gen: torch.Generator) -> torch.Tensor:
    """The regression target of Q_k(s, u) for a batch: ``cfg.critic_target == "mc"`` the stored discounted Monte
    Carlo return from the page; "td" r + gamma (1 - done) (V(s') + A_k(s', pi_k(s'))) (twin: the smaller advantage at
    a smoothed action, noise from `gen`)."""
    cfg = agent.cfg
    if cfg.critic_target == "mc":
        return b["ret"]
    with torch.no_grad():
        s2 = agent.state(b["seq2"], b["ctx2"])
        u2 = agent.act(k, s2)
        if cfg.twin_critic:  # TD3: a smoothed target action, the smaller of the two advantages
            eps = torch.randn(u2.shape, generator=gen) * cfg.target_noise
            u2 = (u2 + eps.clamp(-cfg.target_noise_clip, cfg.target_noise_clip)).clamp(-1.0, 1.0)
        return b["r"] + cfg.gamma * (1.0 - b["done"]) * (agent.value(s2) + agent.advantage_min(k, s2, u2))


def actor_loss(agent: FusionAgent, k: int, s: torch.Tensor) -> torch.Tensor:
    """−A_k(s, pi_k(s)), plus (|z| − limit)² beyond ``cfg.actor_preact_limit`` on the pre-tanh output z (when set)."""
    z = agent.actors[k](s).squeeze(-1)
    loss = -agent.advantage(k, s, torch.tanh(z)).mean()
    if agent.cfg.actor_preact_limit > 0:
        loss = loss + (torch.relu(z.abs() - agent.cfg.actor_preact_limit) ** 2).mean()
    return loss


def train_fusion_agent(env, cfg: AgentConfig, *, progress: Callable[[str], None] | None = None,
                       eval_seed_offset: int = 10_000_000) -> tuple[FusionAgent, dict]:
    """Pre-train V on baseline episodes, then DDPG with `cfg.n_policies` parallel policies; returns the agent and
    a summary (curves, per-policy evaluation, the chosen policy). Runs torch on one thread (tiny batches: more
    threads only spin on a shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_fusion_agent(env, cfg, progress, eval_seed_offset)
    finally:
        torch.set_num_threads(threads)


def _train_fusion_agent(env, cfg: AgentConfig, progress: Callable[[str], None] | None,
                        eval_seed_offset: int) -> tuple[FusionAgent, dict]:
    if cfg.paired_rollouts and not hasattr(env, "paired_rollouts"):
        raise TypeError("paired_rollouts needs an env that can replay a session with the same random numbers "
                        "(simulator.fusion_env.FusionEnv): a simulator-only technique")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)  # target smoothing noise
    rng = np.random.default_rng(cfg.seed)
    E, C = env.observation_space["seq"].shape[1], env.observation_space["ctx"].shape[0]
    agent = FusionAgent(E, C, cfg)
    say = progress or (lambda _m: None)
    t0 = time.perf_counter()
    # 1) baseline traffic (a = 1): pre-train the state network and V on Monte Carlo returns
    base = Transitions()
    base_rewards = [run_episode(env, lambda _o: 0.0, seed=i, buf=base, gamma=cfg.gamma)["reward"]
                    for i in range(cfg.pretrain_episodes)]
    opt_v = torch.optim.Adam([*agent.state.parameters(), *agent.v.parameters()], lr=cfg.lr)
    v_curve = []
    for _ in range(cfg.pretrain_epochs):
        perm = rng.permutation(len(base))
        tot = 0.0
        for j in range(0, len(perm), cfg.batch_size):
            b = base.tensors(perm[j: j + cfg.batch_size])
            loss = ((agent.value(agent.state(b["seq"], b["ctx"])) - b["ret"]) ** 2).mean()
            opt_v.zero_grad()
            loss.backward()
            opt_v.step()
            tot += float(loss.detach()) * len(b["r"])
        v_curve.append(tot / len(base))
    say(f"V pre-trained on {cfg.pretrain_episodes} baseline episodes: MSE {v_curve[0]:.3f} -> {v_curve[-1]:.3f}")
    # 2) DDPG with parallel policies sharing the state network and V
    critic_params = [*agent.state.parameters(), *agent.v.parameters(), *agent.adv.parameters(),
                     *agent.adv2.parameters()]
    opt_c = torch.optim.Adam(critic_params, lr=cfg.lr)
    opt_a = [torch.optim.Adam(a.parameters(), lr=cfg.actor_lr) for a in agent.actors]
    buf = Transitions()
    for field_name in ("seq", "ctx", "u", "r", "seq2", "ctx2", "done", "ret", "adv"):  # baseline traffic trains V
        getattr(buf, field_name).extend(getattr(base, field_name))
    paired = env.paired_rollouts(gamma=cfg.gamma, horizon=cfg.paired_horizon) if cfg.paired_rollouts else None
    buf.policy.extend([-1] * len(base))
    curve: dict[str, list] = {"episode": [], "reward": [[] for _ in range(cfg.n_policies)], "q_loss": [],
                              "actor_a": [[] for _ in range(cfg.n_policies)]}
    window_r: list[list[float]] = [[] for _ in range(cfg.n_policies)]
    q_losses: list[float] = []
    report_every = max(cfg.episodes // 30, 1)
    start_seed = cfg.pretrain_episodes
    for ep in range(cfg.episodes):
        k = ep % cfg.n_policies
        stats = run_episode(env, explorer(agent, k, rng), seed=start_seed + ep, buf=buf, k=k, gamma=cfg.gamma,
                            paired=paired)
        window_r[k].append(stats["reward"])
        pol = np.asarray(buf.policy)
        for _ in range(cfg.updates_per_episode):
            # critic: each policy's advantage on its own traffic, V and the state network on everything
            kk = int(rng.integers(cfg.n_policies))
            mine = np.flatnonzero(pol == kk)
            if len(mine) < 8:
                continue
            idx = mine[rng.integers(0, len(mine), cfg.batch_size)]
            b = buf.tensors(idx)
            s = agent.state(b["seq"], b["ctx"])
            y = critic_target(agent, kk, b, gen) if paired is None else b["adv"]
            ib = rng.integers(0, len(base), cfg.batch_size // 4)  # baseline rows keep V anchored at a = 1
            bb = base.tensors(ib)
            v_target = critic_target(agent, kk, bb, gen) if cfg.v_anchor == "td" else bb["ret"]
            v_loss = ((agent.value(agent.state(bb["seq"], bb["ctx"])) - v_target) ** 2).mean()
            if paired is not None:  # A^base on its paired target G_i − G_ii; V (above) on the baseline's return
                q_loss = ((agent.advantage(kk, s, b["u"]) - y) ** 2).mean()
            else:
                q_loss = ((agent.q(kk, s, b["u"]) - y) ** 2).mean()
            if cfg.twin_critic:
                q_loss = q_loss + ((agent.value(s) + agent.advantage(kk, s, b["u"], twin=True) - y) ** 2).mean()
            opt_c.zero_grad()
            (q_loss + 0.5 * v_loss).backward()
            opt_c.step()
            q_losses.append(float(q_loss.detach()))
            # actor k: maximise its advantage (V does not depend on the action); the state is not moved by it
            s = s.detach()
            a_loss = actor_loss(agent, kk, s)
            opt_a[kk].zero_grad()
            a_loss.backward()
            opt_a[kk].step()
        if (ep + 1) % report_every == 0:
            curve["episode"].append(ep + 1)
            for j in range(cfg.n_policies):
                curve["reward"][j].append(float(np.mean(window_r[j])) if window_r[j] else float("nan"))
                window_r[j] = []
                with torch.no_grad():
                    b = buf.tensors(rng.integers(0, len(base), 256))
                    a = 1.0 + env.fusion_cfg.clip * agent.act(j, agent.state(b["seq"], b["ctx"]))
                curve["actor_a"][j].append([float(a.mean()), float(a.std())])
            curve["q_loss"].append(float(np.mean(q_losses)) if q_losses else float("nan"))
            q_losses = []
            say(f"episode {ep + 1}: reward/episode {[round(r[-1], 3) for r in curve['reward']]}, "
                f"Q loss {curve['q_loss'][-1]:.3f}")
    # 3) choose the policy: greedy, paired with the baseline on held-out sessions
    evals = []
    seeds = [eval_seed_offset + i for i in range(cfg.eval_episodes)]
    base_eval = np.array([run_episode(env, lambda _o: 0.0, seed=s)["reward"] for s in seeds])
    for k in range(cfg.n_policies):
        pi = _greedy(agent, k)
        r = np.array([run_episode(env, pi, seed=s)["reward"] for s in seeds])
        d = r - base_eval
        evals.append({"policy": k, "reward": float(r.mean()), "delta_vs_baseline": float(d.mean()),
                      "delta_se": float(d.std(ddof=1) / np.sqrt(len(d)))})
    best = int(max(range(cfg.n_policies), key=lambda k: evals[k]["delta_vs_baseline"]))
    with torch.no_grad():
        b = base.tensors(np.arange(min(len(base), 2048)))
        s = agent.state(b["seq"], b["ctx"])
        v, adv = agent.value(s), agent.advantage(best, s, agent.act(best, s))
        # the critic's predicted gain of a whole episode (A at each episode's first page) vs the realised one
        done = np.asarray(base.done)
        first = np.concatenate([[0], np.flatnonzero(done[:-1]) + 1])[:2048]
        b0 = base.tensors(first)
        s0 = agent.state(b0["seq"], b0["ctx"])
        adv0 = agent.advantage(best, s0, agent.act(best, s0))
    summary = {"config": cfg.to_dict(), "baseline_reward_per_episode": float(np.mean(base_rewards)),
               "v_pretrain_mse": v_curve, "curves": curve, "eval": evals, "chosen_policy": best,
               "baseline_eval_reward": float(base_eval.mean()),
               "mean_v": float(v.mean()), "mean_advantage": float(adv.mean()),
               "predicted_episode_gain": float(adv0.mean()),  # critic's A at first pages (realised: eval delta)
               "train_s": time.perf_counter() - t0}
    if paired is not None:
        targets = np.asarray(buf.adv, dtype=np.float64)
        targets = targets[np.asarray(buf.policy) >= 0]
        summary["paired"] = {"sessions_replayed": paired.sessions_played, "targets": int(targets.size),
                             "target_sd": float(targets.std()), "target_share_zero": float(np.mean(targets == 0))}
        paired.close()
    say(f"policies vs baseline on {cfg.eval_episodes} held-out sessions: "
        f"{[round(e['delta_vs_baseline'], 4) for e in evals]} -> policy {best}")
    return agent, summary


def export_actor_onnx(agent: FusionAgent, k: int, clip: float, path: str | Path, seq_len: int, event_dim: int,
                      ctx_dim: int) -> Path:
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = ActorExport(agent, k, clip).eval()
    # the TorchScript exporter: a fixed-shape graph of a few layers, ~6x faster to export than dynamo here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.zeros(1, seq_len, event_dim), torch.zeros(1, ctx_dim)), str(path),
                          input_names=["seq", "ctx"], output_names=["a"], dynamo=False, opset_version=18)
    onnx.checker.check_model(str(path))
    return path


def plot_curves(summary: dict, path: str | Path, title: str = "RL fusion training") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = summary["curves"]
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    for k, r in enumerate(c["reward"]):
        ax[0].plot(c["episode"], r, label=f"policy {k}")
    ax[0].axhline(summary["baseline_reward_per_episode"], color="grey", ls="--", label="baseline (a = 1)")
    ax[0].set(title="reward / episode (exploring)", xlabel="episode")
    ax[0].legend(fontsize=7)
    ax[1].plot(c["episode"], c["q_loss"])
    paired = summary.get("config", {}).get("paired_rollouts", False)
    ax[1].set(title="A loss (paired target G_i − G_ii)" if paired else "Q loss (TD)", xlabel="episode", yscale="log")
    for k, a in enumerate(c["actor_a"]):
        m = np.array(a)
        ax[2].plot(c["episode"], m[:, 0], label=f"policy {k} mean a")
        ax[2].fill_between(c["episode"], m[:, 0] - m[:, 1], m[:, 0] + m[:, 1], alpha=0.2)
    ax[2].set(title="actor output a (mean ± sd over states)", xlabel="episode")
    ax[2].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
