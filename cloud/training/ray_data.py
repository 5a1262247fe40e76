"""Sample building on Ray Data (issue 21): the single-process :func:`~edge_rerank.cloud.training.data.build_samples`
over a cluster, producing the same samples in the same order.

The pipeline: the live Parquet parts of a log directory (``cloud.logs.log_files``) become a dataset of paths; one
map task per part reads it into contracts exactly as ``read_logs`` does (v1 and v2 files, the same row checks) and
builds every usable rerank point of every row with the device's own feature operators (``samples_from_row``), so
only the stacked feature arrays leave the task (shipping the parsed rows between two stages cost more than the
features: pickling their per-candidate arrays). A row's samples depend on that row only (its events and
context), so rows of one session may be built on different workers; the driver then orders them as the
single-process path does (by session, page, request, and the part / row read order for ties) and stacks them.
Unreadable parts go to ``quarantine/`` (on the driver) and skipped rows are counted in a
:class:`~edge_rerank.cloud.logs.LogReadReport`, as in ``read_logs``.

The log directory must be readable at the same path from every Ray node (a shared filesystem, or one machine).
Ray (with its ``data`` extra) is imported only when a function here runs; without it the error names the extra."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_rerank.cloud.training.data import Samples, samples_from_row, warn_unknown_buckets
from edge_rerank.device_sdk.features import FeatureBuilder, FeatureConfig

RAY_EXTRA_HINT = "install the ray extra: pip install 'edge-rerank[ray]' (Ray core, Ray Data and Ray Train)"


def require_ray() -> Any:
    """The ``ray`` module with Ray Data and Ray Train importable, or a ModuleNotFoundError naming the extra (the
    CLI turns it into its one-line "install the extra" message)."""
    try:
        import ray
        import ray.data  # noqa: F401
        import ray.train.torch  # noqa: F401
    except ImportError as exc:
        raise ModuleNotFoundError(f"Ray Data / Ray Train are not installed ({exc}); {RAY_EXTRA_HINT}",
                                  name=getattr(exc, "name", None) or "ray") from exc
    return ray


def connect(address: str | None = None, **init_kwargs: Any) -> Any:
    """Join the Ray cluster at `address` (``ray start --head`` prints it; ``auto`` finds a local one), or start
    a local one when None; reuse a connection already made (e.g. by a test)."""
    ray = require_ray()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, **init_kwargs)
    ray.data.DataContext.get_current().enable_progress_bars = False  # no per-stage progress in the CLI's output
    return ray


@dataclass
class RaySampleReport:
    """What the Ray pipeline read: rows, parts, skipped parts and rows (as ``LogReadReport``)."""

    log_report: Any  # cloud.logs.LogReadReport
    rows: int
    parts: int
    feature_config: FeatureConfig | None = None  # the config the samples were built with


def _read_rows(path: str) -> tuple[list, dict[str, Any]]:
    """One Parquet part -> its impression rows and what ``read_logs`` would record of it (``n`` rows, ``error``
    if it cannot be read, ``skipped`` row counts and examples): the same conversions and checks."""
    from edge_rerank.cloud.logs import (
        LogReadReport,
        LogRowError,
        _read_file,
        _valid_v1_rows,
        parse_row_v2,
        table_to_rows,
    )

    f = Path(path)
    try:
        table, decl = _read_file(f)
    except Exception as exc:  # anything a damaged file makes pyarrow raise (read_logs quarantines it)
        return [], {"n": 0, "error": f"{type(exc).__name__}: {str(exc)[:200]}", "skipped": None}
    report = LogReadReport()
    if decl is None:
        rows = _valid_v1_rows(table_to_rows(table), f.name, report)
    else:
        rows = []
        for i, rec in enumerate(table.to_pylist()):
            try:
                rows.append(parse_row_v2(rec, decl))
            except LogRowError as exc:
                report.skip_row(f"{f.name} row {i}", str(exc))
    skipped = [report.skipped_rows, report.examples] if report.skipped_rows else None
    return rows, {"n": len(rows), "error": None, "skipped": skipped}


def _check_part(item: dict[str, Any]) -> dict[str, Any]:
    """A part's readability alone (before a feature config is fitted to the logs): its error or ''."""
    from edge_rerank.cloud.logs import _read_file

    try:
        _read_file(Path(item["path"]))
    except Exception as exc:
        return {"part": item["part"], "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    return {"part": item["part"], "error": ""}


def _parts_to_samples(batch: dict[str, np.ndarray], cfg_dict: dict) -> dict[str, np.ndarray]:
    """The map stage: a batch of parts -> the stacked samples of every usable rerank point of their rows, with
    the keys the driver orders them by. The batch's unknown-bucket counts and the parts' read records ride on
    its first record (a batch without samples returns that record alone)."""
    builder = FeatureBuilder(FeatureConfig.from_dict(cfg_dict))
    feats, labels, ids, keys, sids, users, ctxs, metas = [], [], [], [], [], [], [], []
    for part, path in zip(batch["part"], batch["path"], strict=True):
        rows, meta = _read_rows(str(path))
        metas.append({"part": int(part), **meta})
        for rowno, row in enumerate(rows):
            for rs in samples_from_row(row, builder):
                feats.append(rs.features)
                labels.append(rs.labels)
                ids.append(rs.item_ids)
                keys.append((row.session_id, int(row.page_index), row.request_id, int(part), rowno, rs.point))
                sids.append(row.session_id)
                users.append(row.user_id)
                ctxs.append(row.context)
    first = {"parts": metas, "unknown": {k: list(v) for k, v in builder.unknown_counts.items()}}
    if not feats:
        return {"key": _objects([None]), "info": _objects([first])}
    out = {"key": _objects(keys), "info": _objects([first] + [None] * (len(feats) - 1)),
           "session_id": _objects(sids), "user_id": _objects(users), "context": _objects(ctxs)}
    out |= {f"f_{k}": np.stack([f[k] for f in feats]) for k in feats[0]}
    return out | {"labels": np.stack(labels), "item_ids": np.stack(ids)}


def _objects(values: list) -> np.ndarray:
    a = np.empty(len(values), dtype=object)
    a[:] = values
    return a


def log_part_paths(logs: str | Path) -> list[Path]:
    """The live Parquet parts ``read_logs`` would read, in its order."""
    from edge_rerank.cloud.logs import log_files

    return log_files(logs)


def _items(parts: list[Path]) -> list[dict[str, Any]]:
    return [{"path": str(p.resolve()), "part": i} for i, p in enumerate(parts)]


def _quarantine(path: Path, part: Path, reason: str, report: Any) -> None:
    from edge_rerank.cloud.logs import LogFormatError, quarantine

    if not path.is_dir():
        raise LogFormatError(f"{part.name}: {reason}")
    quarantine(path, part, reason)
    report.skipped_files[part.name] = reason


def quarantine_unreadable(logs: str | Path) -> dict[str, str]:
    """Check every part's readability in parallel and quarantine the unreadable ones (as ``read_logs`` would),
    before a feature config is fitted to the logs. Returns part name -> reason."""
    from edge_rerank.cloud.logs import LogReadReport

    ray = require_ray()
    path = Path(logs)
    parts = log_part_paths(path)
    report = LogReadReport()
    ds = ray.data.from_items(_items(parts), override_num_blocks=len(parts)).map(_check_part)
    for r in sorted(ds.take_all(), key=lambda r: r["part"]):
        if r["error"]:
            _quarantine(path, parts[r["part"]], r["error"], report)
    return report.skipped_files


def samples_dataset(logs: str | Path, cfg: FeatureConfig, *, parts_per_task: int = 1) -> tuple[Any, list[Path]]:
    """The lazy pipeline: the live parts of `logs` as a dataset of paths, mapped (`parts_per_task` parts per map
    task) to their samples. Stream it (``iter_batches``) or :func:`collect_samples` it."""
    ray = require_ray()
    parts = log_part_paths(logs)
    ds = ray.data.from_items(_items(parts), override_num_blocks=len(parts))
    return ds.map_batches(_parts_to_samples, fn_kwargs={"cfg_dict": cfg.to_dict()}, batch_size=parts_per_task,
                          batch_format="numpy"), parts


def collect_samples(samples_ds: Any, logs: str | Path, parts: list[Path]) -> tuple[Samples, RaySampleReport]:
    """The driver's side: unreadable parts quarantined and skipped rows counted (``LogReadReport``), the samples
    in the single-process order, stacked into one :class:`Samples`."""
    from edge_rerank.cloud.logs import LogReadReport

    batches: list[dict[str, np.ndarray]] = list(samples_ds.iter_batches(batch_size=None, batch_format="numpy"))
    report = LogReadReport()
    infos = [info for b in batches for info in b["info"] if info is not None]
    record_parts([m for i in infos for m in i["parts"]], logs, parts, report)
    ray_report = RaySampleReport(report, report.rows_read, len(parts))
    warn_merged(merge_unknown(i["unknown"] for i in infos))
    samples, _ = _ordered_samples(batches)
    if samples is None:
        raise ValueError("the logs hold no usable rerank samples (need rerank points followed by clicks)")
    return samples, ray_report


def record_parts(metas: list[dict[str, Any]], logs: str | Path, parts: list[Path], report: Any) -> None:
    """The parts' read records (from the map stage) into a ``LogReadReport`` as ``read_logs`` fills it, in part
    order: unreadable parts quarantined (here, on the driver), skipped rows counted with their first examples."""
    for m in sorted(metas, key=lambda m: m["part"]):
        if m["error"]:
            _quarantine(Path(logs), parts[m["part"]], m["error"], report)
        elif m["skipped"]:
            counts, examples = m["skipped"]
            for k, v in counts.items():
                report.skipped_rows[k] = report.skipped_rows.get(k, 0) + v
            report.examples.extend(examples[: max(0, 10 - len(report.examples))])
        report.rows_read += int(m["n"])
    report.files_read = len(parts) - len(report.skipped_files)


def _ordered_samples(batches: list[dict[str, np.ndarray]]) -> tuple[Samples | None, list[tuple]]:
    """The map stage's batches stacked into one :class:`Samples` in the single-process order, and its keys (None
    when they hold no sample)."""
    batches = [b for b in batches if "labels" in b and len(b["labels"])]
    if not batches:
        return None, []
    cat = {k: np.concatenate([b[k] for b in batches]) for k in batches[0] if k != "info"}
    keys = list(cat["key"])
    idx = np.asarray(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)
    inputs = {k[2:]: np.ascontiguousarray(v[idx]) for k, v in cat.items() if k.startswith("f_")}
    samples = Samples(inputs, np.ascontiguousarray(cat["labels"][idx]), [str(s) for s in cat["session_id"][idx]],
                      np.ascontiguousarray(cat["item_ids"][idx]), [str(u) for u in cat["user_id"][idx]],
                      list(cat["context"][idx]))
    return samples, [keys[i] for i in idx]


def shard_samples(parts: list[tuple[int, str]], cfg: FeatureConfig
                  ) -> tuple[Samples | None, list[tuple], list[dict], dict[str, list[int]]]:
    """In this process (a training worker): the samples of the log parts `parts` ((part number, path) pairs, the
    part number being its place in :func:`log_part_paths`), in the single-process order, with their keys, the
    parts' read records (``n`` rows, ``error``, ``skipped``) and the unknown-bucket counts (field -> [unknown,
    total]) — the map stage without Ray Data, so a worker builds its own shard and no sample passes through the
    driver."""
    batches = [_parts_to_samples({"part": np.asarray([k]), "path": _objects([path])}, cfg.to_dict())
               for k, path in parts]
    infos = [info for b in batches for info in b["info"] if info is not None]
    samples, keys = _ordered_samples(batches)
    return samples, keys, [m for i in infos for m in i["parts"]], merge_unknown(i["unknown"] for i in infos)


def merge_unknown(counts: Any) -> dict[str, list[int]]:
    """Unknown-bucket counts (field -> [unknown, total]) of several map batches, summed."""
    out: dict[str, list[int]] = {}
    for c in counts:
        for k, (u, t) in c.items():
            m = out.setdefault(k, [0, 0])
            m[0] += u
            m[1] += t
    return out


def warn_merged(counts: dict[str, list[int]]) -> None:
    """``warn_unknown_buckets`` on unknown-bucket counts merged from several builders (map tasks, workers)."""

    class _Merged:  # what warn_unknown_buckets reads of a FeatureBuilder
        unknown_counts = counts

        def unknown_rates(self) -> dict[str, float]:
            return {f: u / t for f, (u, t) in counts.items() if t}

    warn_unknown_buckets(_Merged())  # type: ignore[arg-type]


def build_samples_ray(logs: str | Path, cfg: FeatureConfig | None = None, *, address: str | None = None,
                      parts_per_task: int = 1, v1_config: FeatureConfig | None = None
                      ) -> tuple[Samples, RaySampleReport]:
    """Read `logs` and build their samples on Ray: equal (arrays and order) to
    ``build_samples(read_logs(logs), cfg)``. `cfg` None: the config ``edge-rerank train`` would pick (for v2 logs
    one fitted to them, after unreadable parts are quarantined; for v1 logs, which declare no fields, `v1_config`
    — ``edge_rerank.api`` passes the simulator world's); ``report.feature_config`` says which."""
    connect(address)
    quarantined: dict[str, str] = {}
    if cfg is None:
        from edge_rerank.cloud.log_tools import infer_config, logs_are_v2

        if logs_are_v2(logs):
            quarantined = quarantine_unreadable(logs)
            cfg = infer_config(logs)[0]
        elif v1_config is not None:
            cfg = v1_config
        else:
            raise ValueError("v1 logs declare no fields: pass their feature config (cfg or v1_config)")
    ds, parts = samples_dataset(logs, cfg, parts_per_task=parts_per_task)
    samples, report = collect_samples(ds, logs, parts)
    report.log_report.skipped_files = quarantined | report.log_report.skipped_files
    report.parts += len(quarantined)
    report.feature_config = cfg
    return samples, report
