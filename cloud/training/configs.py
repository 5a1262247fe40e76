"""Training and model configurations, torch-free: the CLI and config files validate them (``--help`` shows their
defaults) without importing torch. ``cloud.training.model`` and ``cloud.training.train`` re-export them."""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

VIEWS = ("id", "attr", "context")
LOSS_NAMES = ("lambda", "listnet", "pairwise")  # cloud.training.losses.LOSSES (a test keeps them equal)
MAX_CONFIG_BYTES = 1 << 20


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 12
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    loss: str = "lambda"  # "lambda" | "listnet" | "pairwise" (cloud.training.losses.LOSSES)
    seed: int = 0
    # one intra-op thread: these models are small, and on a busy 2-core machine two threads were ~20x slower
    threads: int = 1
    patience: int = 4  # epochs without a better validation NDCG@10 before stopping
    bucket_by_length: bool = True  # batches of similar list lengths (padding trimmed per batch either way)
    # weight of a list-KL term to a LightGBM lambdarank teacher fitted on the same training lists (early-stopped
    # on the validation lists; training time only, the bundle ships the network alone); 0: labels only.
    # README "Quality": it is what lifted the default above LightGBM itself in the shop world
    gbdt_teacher: float = 2.0
    # with a teacher: also train on the labels alone and keep whichever scores higher on the validation lists
    # (the teacher helped the shop world and not the feed world; README "Quality"); doubles training time
    gbdt_teacher_choice: bool = True

    def __post_init__(self) -> None:
        _check_types(self)
        _check_ranges(self, {"epochs": 100_000, "batch_size": 1 << 20, "threads": 1024, "patience": 100_000})
        if not self.lr > 0 or not self.weight_decay >= 0:
            raise ValueError(f"lr must be > 0 and weight_decay >= 0, got {self.lr} and {self.weight_decay}")
        if not 0 <= self.gbdt_teacher <= 1000:
            raise ValueError(f"gbdt_teacher must be in [0, 1000] (0: off), got {self.gbdt_teacher}")
        if self.loss not in LOSS_NAMES:
            raise ValueError(f"loss must be one of {LOSS_NAMES}, got {self.loss!r}")


@dataclass(frozen=True)
class ModelConfig:
    d_model: int = 32
    n_heads: int = 2
    n_layers: int = 1
    ffn: int = 64
    # The default is Match&Aggregate + PRM + the residual on the cloud score; MVFAN (use_feedback) is opt-in: on
    # every seed and after an Optuna search it scored below M&A-only on held-out sessions (README, "Quality").
    use_feedback: bool = False  # True: MVFAN attention over the feedback sequence; False: a PRM over the candidates
    cross: bool = True  # negatives <-> positives cross attention inside the feedback sequence
    views: tuple[str, ...] = ("id", "attr", "context")  # queries over the feedback sequences
    wide: bool = False  # add a linear read-out of the (standardised) candidate features to the score
    dropout: float = 0.2  # after fusing the candidate parts (training only; export runs in eval mode)
    residual: bool = True  # score = w * cloud_score + has_feedback * model (needs the `cloud_score` operator)

    def __post_init__(self) -> None:
        if isinstance(self.views, list | tuple):
            object.__setattr__(self, "views", tuple(self.views))
        _check_types(self)
        _check_ranges(self, {"d_model": 4096, "n_heads": 256, "n_layers": 64, "ffn": 65_536})
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        bad = set(self.views) - set(VIEWS)
        if bad or not self.views:
            raise ValueError(f"views must be a non-empty subset of {VIEWS}, got {self.views}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["views"] = list(self.views)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return cls(**d)


def _check_ranges(cfg: Any, highest: dict[str, int]) -> None:
    """Each named int field in 1..its highest (a huge value is a typo, not a plan: it would stall or exhaust
    memory far from the file that set it)."""
    for name, hi in highest.items():
        v = getattr(cfg, name)
        if v < 1:
            raise ValueError(f"{name} must be at least 1, got {v}")
        if v > hi:
            raise ValueError(f"{name} must be at most {hi:,}, got {v:,}")


def _check_types(cfg: Any) -> None:
    """Each field holds a value of its default's type (an int is also a float; a bool is not an int; a tuple holds
    strings), and numbers are finite: what a config file or a caller passes is refused here with the field's name,
    not deep inside training."""
    for f in fields(cfg):
        v, want = getattr(cfg, f.name), type(f.default)
        ok = (isinstance(v, bool) if want is bool
              else isinstance(v, int) and not isinstance(v, bool) if want is int
              else isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) if want is float
              else isinstance(v, tuple) and all(isinstance(x, str) for x in v) if want is tuple
              else isinstance(v, want))
        if not ok:
            what = {bool: "a bool", int: "an int", float: "a finite number", tuple: "a list of strings"}.get(
                want, f"a {want.__name__}")
            raise ValueError(f"{type(cfg).__name__}.{f.name} must be {what}, got {v!r}")


CONFIG_SECTIONS = ("train", "model", "split")


def read_config_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """A training config file (TOML): sections ``[train]`` (:class:`TrainConfig` fields), ``[model]``
    (:class:`ModelConfig`) and ``[split]`` (``valid_share``, ``test_share``, ``seed``), each optional. Unknown
    sections or keys, values of the wrong type and files over 1 MiB are refused with a ValueError that names them;
    the values are checked again when the configs are built."""
    from edge_rerank.cloud.training.data import SplitConfig  # numpy only

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"config file {p}: no such file")
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise ValueError(f"config file {p}: {p.stat().st_size} bytes, more than {MAX_CONFIG_BYTES}")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"config file {p}: not valid TOML: {exc}") from None
    allowed = {"train": TrainConfig, "model": ModelConfig, "split": SplitConfig}
    out: dict[str, dict[str, Any]] = {}
    for section, body in data.items():
        if section not in allowed:
            raise ValueError(f"config file {p}: unknown section [{section}] (sections: {list(CONFIG_SECTIONS)})")
        if not isinstance(body, dict):
            raise ValueError(f"config file {p}: {section} must be a table ([{section}])")
        names = [f.name for f in fields(allowed[section])]
        unknown = sorted(set(body) - set(names))
        if unknown:
            raise ValueError(f"config file {p}: unknown key(s) {unknown} in [{section}] (keys: {names})")
        out[section] = dict(body)
        try:  # types and ranges now, with the file's name
            allowed[section](**out[section])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"config file {p}: [{section}]: {exc}") from None
    return out
