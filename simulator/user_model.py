"""How simulated users behave: utility, examination, clicks, detail pages, orders, dwell, leaving.

Every random draw that decides a user's response to an *item* is keyed by (session, item) and every draw
about a *screen* by (session, screen): the same user meets the same luck in every A/B arm (common random
numbers), so arm differences come from the order shown, not from noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.world import SessionSpec, World

_MASK = (1 << 64) - 1


def crn_uniform(seed: int, *keys: int) -> float:
    """A uniform [0, 1) draw determined by (seed, keys): splitmix64 over the keys."""
    x = seed & _MASK
    for k in keys:
        x = (x ^ (k & _MASK)) & _MASK
        x = (x + 0x9E3779B97F4A7C15) & _MASK
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        x = z ^ (z >> 31)
    return (x >> 11) / float(1 << 53)


# purposes of draws
CLICK, ORDER, DETAIL, EXAMINE, SKIM, DWELL, LEAVE, LEAVE_AFTER_ORDER = range(1, 9)


@dataclass(frozen=True)
class UserModelConfig:
    """Parameters of the click model (all documented here, all configurable)."""

    w_quality: float = 0.8  # utility weights
    w_longterm: float = 0.8  # <u, v>: long-term taste (the cloud sees a noisy copy)
    w_intent: float = 2.2  # <z, v>: in-session intent (hidden from the cloud)
    w_price: float = 0.35  # per price level away from the intended price
    click_threshold: float = 1.9  # utility at which an examined item is clicked with probability 1/2
    click_slope: float = 3.0
    order_threshold: float = 1.6
    order_max: float = 0.35
    viewport_items: int = 4  # items per screen
    examine_base: float = 0.92  # probability to examine an item on a normally read screen
    examine_decay: float = 0.97  # per screen scrolled (fatigue)
    skim_base: float = 0.25  # probability to flick past a screen (short exposures, little examination)
    skim_growth: float = 0.03
    skim_examine: float = 0.25
    read_ms_per_item: float = 650.0  # screen dwell = base + per examined item, times a lognormal
    screen_base_ms: float = 600.0
    skim_ms: float = 450.0
    leave_base: float = 0.02  # per screen
    leave_per_screen: float = 0.012
    leave_per_frustrated_screen: float = 0.035  # consecutive screens without a click raise leaving
    leave_after_order: float = 0.6
    max_pages: int = 3


class UserModel:
    def __init__(self, world: World, cfg: UserModelConfig | None = None):
        self.world = world
        self.cfg = cfg or UserModelConfig()

    def utility(self, spec: SessionSpec, rows: np.ndarray) -> np.ndarray:
        w, c = self.world, self.cfg
        v = w.latent[rows]
        dist = np.hypot(w.loc[rows, 0] - spec.intent_area[0], w.loc[rows, 1] - spec.intent_area[1])
        return (c.w_quality * w.quality[rows] + c.w_longterm * v @ w.user_latent[spec.user]
                + c.w_intent * v @ spec.intent_z - w.user_dist_sens[spec.user] * dist
                - c.w_price * np.abs(w.price_level[rows] - spec.intent_price))

    def p_click(self, utility: float) -> float:
        return float(1.0 / (1.0 + np.exp(-self.cfg.click_slope * (utility - self.cfg.click_threshold))))

    def p_order(self, utility: float) -> float:
        c = self.cfg
        return float(c.order_max / (1.0 + np.exp(-3.0 * (utility - c.order_threshold))))

    def skims(self, spec: SessionSpec, screen: int) -> bool:
        c = self.cfg
        return crn_uniform(spec.seed, SKIM, screen) < min(0.6, c.skim_base + c.skim_growth * screen)

    def examines(self, spec: SessionSpec, screen: int, slot: int, skim: bool) -> bool:
        c = self.cfg
        p = c.skim_examine if skim else c.examine_base * c.examine_decay ** screen
        return crn_uniform(spec.seed, EXAMINE, screen, slot) < p

    def clicks(self, spec: SessionSpec, item_id: int, utility: float) -> bool:
        return crn_uniform(spec.seed, CLICK, item_id) < self.p_click(utility)

    def orders(self, spec: SessionSpec, item_id: int, utility: float) -> bool:
        return crn_uniform(spec.seed, ORDER, item_id) < self.p_order(utility)

    def detail_dwell_ms(self, spec: SessionSpec, item_id: int, utility: float) -> float:
        u = crn_uniform(spec.seed, DETAIL, item_id)
        return float(4000.0 + 20000.0 / (1.0 + np.exp(-(utility - 1.0))) * (0.5 + u))

    def screen_dwell_ms(self, spec: SessionSpec, screen: int, n_examined: int, skim: bool) -> float:
        c = self.cfg
        u = crn_uniform(spec.seed, DWELL, screen)
        jitter = float(np.exp(0.4 * (u - 0.5) * 2))
        if skim:
            return c.skim_ms * jitter
        return (c.screen_base_ms + c.read_ms_per_item * n_examined) * jitter

    def leaves(self, spec: SessionSpec, screen: int, frustrated_screens: int) -> bool:
        c = self.cfg
        p = c.leave_base + c.leave_per_screen * screen + c.leave_per_frustrated_screen * frustrated_screens
        return crn_uniform(spec.seed, LEAVE, screen) < min(p, 0.9)

    def leaves_after_order(self, spec: SessionSpec, item_id: int) -> bool:
        return crn_uniform(spec.seed, LEAVE_AFTER_ORDER, item_id) < self.cfg.leave_after_order
