"""How simulated users behave: utility, examination, clicks, detail pages, orders, dwell, leaving.

Split as in RecSim: the *sampler* is ``World.session`` (who searches what, with which hidden intent), the
*user state* is :class:`UserState` (what this user has seen and done in this session: brand exposures,
clicks, frustration, scroll speed), and the *response model* is :class:`UserModel` (how an examined item is
answered given the state). Every parameter is a field of :class:`UserModelConfig`; docs/simulator.md explains
each one and what it was calibrated to.

Every random draw that decides a user's response to an *item* is keyed by (session, item) and every draw
about a *screen* by (session, screen): the same user meets the same luck in every A/B arm (common random
numbers), so arm differences come from the order shown, not from noise.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from edge_rerank.device_sdk.contracts import PageItem
from edge_rerank.simulator.randomness import (
    CLICK,
    DETAIL,
    DWELL,
    EXAMINE,
    ITEM,
    LEAVE,
    LEAVE_AFTER_ORDER,
    ORDER,
    SCREEN,
    SKIM,
    SPEED,
    crn_uniform,
    crn_uniform_array,
)
from edge_rerank.simulator.world import SessionSpec, World

_STD_NORMAL = NormalDist()


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-9)
_SCREEN_PURPOSES = np.array([SKIM, DWELL, LEAVE, EXAMINE], dtype=np.int64)
_ITEM_PURPOSES = np.array([CLICK, ORDER, DETAIL, LEAVE_AFTER_ORDER], dtype=np.int64)


@dataclass(frozen=True)
class UserModelConfig:
    """Parameters of the click model (all documented here, all configurable)."""

    w_quality: float = 0.8  # utility weights
    w_longterm: float = 0.8  # <u, v>: long-term taste (the cloud sees a noisy copy)
    w_intent: float = 2.2  # <z, v>: in-session intent (hidden from the cloud)
    w_price: float = 0.35  # per price level away from the intended price
    click_threshold: float = 1.8  # utility at which an examined item is clicked with probability 1/2 (first click)
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
    # --- realism added with issue 3 (see docs/simulator.md) ---
    brand_saturation: float = 0.06  # utility lost per earlier *examined* item of the same brand this session
    brand_saturation_cap: int = 5  # ... counted up to this many
    satiation_per_click: float = 0.04  # click threshold rises per click already made (the user has options)
    scroll_speed_sigma: float = 0.30  # per-session scroll speed: lognormal(0, sigma); 1 = median user
    scroll_ms: float = 300.0  # time to scroll one screen at speed 1 (the next items are revealed after it)
    skim_speed_exponent: float = 1.0  # skim probability scales with speed ** this


@dataclass
class UserState:
    """What the user has seen and done in this session (the response model reads and updates it)."""

    speed: float = 1.0
    patience: float = 1.0  # the user's (World.user_patience): divides the leaving probability
    clicks: int = 0
    orders: int = 0
    frustrated: int = 0  # consecutive screens without a click
    brand_seen: Counter[int] = field(default_factory=Counter)  # examined exposures per saturation key (brand)
    item_seen: Counter[int] = field(default_factory=Counter)  # examinations per item id (re-shown items)
    clicked_items: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class IntentHypotheses:
    """A finite (or discretised) set of hidden intents a session may have, what the informed oracle reasons over:
    the prior (log, normalised), the utility [H, n] of catalog rows under each hypothesis, and (for tests and
    reports only) the index of the hypothesis nearest the true intent."""

    log_prior: np.ndarray
    utility: Callable[[np.ndarray], np.ndarray]
    truth: int = -1


# domain -> UserModel subclass, filled by each domain's module on import (as world.WORLD_DOMAINS)
USER_MODELS: dict[str, type] = {}


class UserModel:
    """The shop user; ``UserModel(world)`` on another domain's world builds that domain's user model
    (:class:`simulator.feed.FeedUserModel`)."""

    def __new__(cls, world: World | None = None, cfg: UserModelConfig | None = None, *_args, **_kwargs):
        if cls is UserModel and world is not None and world.cfg.domain != "shop":
            return super().__new__(USER_MODELS[world.cfg.domain])
        return super().__new__(cls)

    def __init__(self, world: World, cfg: UserModelConfig | None = None):
        self.world = world
        self.cfg = cfg or UserModelConfig()
        self._screen_keys: dict[int, np.ndarray] = {}

    def utility(self, spec: SessionSpec, rows: np.ndarray) -> np.ndarray:
        w, c = self.world, self.cfg
        v = w.latent[rows]
        dist = np.hypot(w.loc[rows, 0] - spec.intent_area[0], w.loc[rows, 1] - spec.intent_area[1])
        return (c.w_quality * w.quality[rows] + c.w_longterm * v @ w.user_latent[spec.user]
                + c.w_intent * v @ spec.intent_z - w.user_dist_sens[spec.user] * dist
                - c.w_price * np.abs(w.price_level[rows] - spec.intent_price))

    def p_click(self, utility: float, state: UserState | None = None) -> float:
        c = self.cfg
        thr = c.click_threshold + (c.satiation_per_click * state.clicks if state is not None else 0.0)
        x = -c.click_slope * (utility - thr)
        return 1.0 / (1.0 + math.exp(min(x, 700.0)))

    def effective_utility(self, utility: float, brand: int, state: UserState, item_id: int = -1) -> float:
        """Utility after brand saturation: each earlier examined item of this brand makes it less attractive."""
        c = self.cfg
        return utility - c.brand_saturation * min(state.brand_seen[brand], c.brand_saturation_cap)

    def saturation_key(self, item: PageItem) -> int:
        """What saturates (the brand here; the feed's topic)."""
        return item.brand

    def saturation_keys(self, items: list[PageItem]) -> list[int]:
        """:meth:`saturation_key` of each item (a page's at once)."""
        if type(self).saturation_key is UserModel.saturation_key:  # the brand, read directly
            return [it.brand for it in items]
        return [self.saturation_key(it) for it in items]

    def saturation(self, n_seen: float) -> float:
        """Utility lost after `n_seen` earlier examined items with the same saturation key."""
        c = self.cfg
        return c.brand_saturation * min(n_seen, c.brand_saturation_cap)

    def reshow_penalty(self, n_examined: float, clicked: bool) -> float:
        """Utility lost by an item shown again (shops never re-show an item)."""
        return 0.0

    def intent_hypotheses(self, spec: SessionSpec) -> IntentHypotheses:
        """A discretised intent space for the informed oracle: the target brand (any of the query's), the intended
        price on a half-level grid (prior: the user's price preference + N(0, 0.8), clipped to 0..4) and the area
        (the user's home with the pre-decided share, else where the search is made: both known to the device). The
        style noise of the true direction is left out (the hypotheses use the brand's mean direction)."""
        w, c = self.world, self.cfg
        bpc = w.cfg.brands_per_category
        brands = np.array(w._query_brands[spec.query])
        z = _unit_rows(w.centroids[brands // bpc] + 1.2 * w.brand_offsets[brands])  # [B, K]
        grid = np.arange(0.0, 4.01, 0.5)
        edges = np.concatenate([[-np.inf], (grid[:-1] + grid[1:]) / 2, [np.inf]])
        cdf = np.array([_STD_NORMAL.cdf(float(np.clip((e - w.user_price[spec.user]) / 0.8, -50, 50)))
                        for e in edges])
        p_price = np.maximum(np.diff(cdf), 1e-12)
        areas = np.array([w.user_home[spec.user], [spec.context.lat, spec.context.lon]])
        p_area = np.array([w.cfg.predecided_share, 1 - w.cfg.predecided_share])
        B, G, A = len(brands), len(grid), 2
        log_prior = (np.log(np.full(B, 1 / B))[:, None, None] + np.log(p_price / p_price.sum())[None, :, None]
                     + np.log(p_area)[None, None, :]).ravel()
        user = spec.user

        def utility(rows: np.ndarray) -> np.ndarray:
            v = w.latent[rows]
            base = c.w_quality * w.quality[rows] + c.w_longterm * v @ w.user_latent[user]  # [n]
            dist = np.hypot(w.loc[rows, 0][None, :] - areas[:, 0:1], w.loc[rows, 1][None, :] - areas[:, 1:2])
            price = np.abs(w.price_level[rows][None, :] - grid[:, None])  # [G, n]
            u = (base[None, None, None, :] + c.w_intent * (z @ v.T)[:, None, None, :]
                 - c.w_price * price[None, :, None, :] - w.user_dist_sens[user] * dist[None, None, :, :])
            return u.reshape(B * G * A, len(rows))

        tb = int(np.argmax(z @ spec.intent_z))
        tg = int(np.argmin(np.abs(grid - spec.intent_price)))
        truth = (tb * G + tg) * A + int(not spec.predecided)
        return IntentHypotheses(log_prior=log_prior, utility=utility, truth=truth)

    def new_state(self, spec: SessionSpec) -> UserState:
        u = min(max(crn_uniform(spec.seed, SPEED), 1e-12), 1 - 1e-12)
        return UserState(speed=math.exp(self.cfg.scroll_speed_sigma * _STD_NORMAL.inv_cdf(u)),
                         patience=float(self.world.user_patience[spec.user]))

    def screen_draws(self, spec: SessionSpec, n_screens: int) -> dict[str, np.ndarray]:
        """All per-screen draws of a session in one vectorised call: skim, dwell jitter and leave per screen,
        examine per (screen, slot). Key: (session seed, SCREEN, purpose << 32 | screen << 8 | slot)."""
        V = self.cfg.viewport_items
        keys = self._screen_keys.get(n_screens)
        if keys is None:
            scr = np.arange(n_screens, dtype=np.int64)
            slot_keys = (scr[:, None] << 8 | np.arange(V, dtype=np.int64)[None, :]).ravel()
            purposes = np.repeat(_SCREEN_PURPOSES, [n_screens, n_screens, n_screens, n_screens * V])
            keys = self._screen_keys[n_screens] = purposes << 32 | np.concatenate([scr << 8] * 3 + [slot_keys])
        u = crn_uniform_array(spec.seed, SCREEN, keys)
        n = n_screens
        return {"skim": u[:n], "dwell": u[n: 2 * n], "leave": u[2 * n: 3 * n], "examine": u[3 * n:].reshape(n, V)}

    def item_draws(self, spec: SessionSpec, item_ids: np.ndarray, showing: int = 0) -> dict[str, np.ndarray]:
        """All per-item draws for a page's items at once (click, order, detail dwell, leave after order).
        Key: (session seed, ITEM, purpose << 48 | showing << 40 | item id): the same item meets the same luck in
        every arm; an item shown again (the feed's re-shows) draws new luck for each later showing."""
        ids = np.asarray(item_ids, dtype=np.int64)
        d = crn_uniform_array(spec.seed, ITEM, (_ITEM_PURPOSES[:, None] << 48 | (showing << 40) | ids[None, :]))
        return {"click": d[0], "order": d[1], "detail": d[2], "leave_after_order": d[3]}

    def p_skim(self, screen: int, speed: float = 1.0) -> float:
        c = self.cfg
        return min(0.6, (c.skim_base + c.skim_growth * screen) * speed ** c.skim_speed_exponent)

    def p_examine(self, screen: int, skim: bool) -> float:
        c = self.cfg
        return c.skim_examine if skim else c.examine_base * c.examine_decay ** screen

    def p_leave(self, screen: int, frustrated_screens: int, patience: float = 1.0) -> float:
        c = self.cfg
        p = c.leave_base + c.leave_per_screen * screen + c.leave_per_frustrated_screen * frustrated_screens
        return min(p / patience, 0.9)

    def detail_ms(self, utility: float, u: float) -> float:
        return 4000.0 + 20000.0 / (1.0 + math.exp(-(utility - 1.0))) * (0.5 + u)

    def dwell_ms(self, n_examined: int, skim: bool, u: float, speed: float = 1.0) -> float:
        """How long the screen stays (its items' exposure dwell): short when flicked past (noise), long when read."""
        c = self.cfg
        jitter = math.exp(0.4 * (u - 0.5) * 2)
        base = c.skim_ms if skim else c.screen_base_ms + c.read_ms_per_item * n_examined
        return base * jitter / speed

    def p_order(self, utility: float) -> float:
        c = self.cfg
        return float(c.order_max / (1.0 + np.exp(-3.0 * (utility - c.order_threshold))))

    def p_order_item(self, utility: float, item_id: int, state: UserState) -> float:
        """Order probability after a click on `item_id` (the default user: a function of the utility only;
        ``simulator.order_world.OrderAwareUserModel`` makes it depend on the item and the session's purpose)."""
        return self.p_order(utility)

    def p_leave_state(self, screen: int, state: UserState) -> float:
        """Leaving probability after `screen` given the session's state (what the phone asks; the default user:
        ``p_leave(screen, frustrated, patience)``; the order-aware world's searching buyers differ)."""
        return self.p_leave(screen, state.frustrated, state.patience)

    def p_leave_after_order(self, state: UserState) -> float:
        """Probability to leave right after an order (the default user: ``cfg.leave_after_order``; the order-aware
        world's buyers may differ)."""
        return self.cfg.leave_after_order
