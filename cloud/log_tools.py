"""Checking and fitting to impression logs (v1 and v2): ``edge-rerank logs validate`` and ``logs infer-config``.

:func:`validate_logs` reads every row of every live file and reports, with file and row: malformed rows (types,
ranges, undeclared fields: errors), lists without a positive, declared fields that are null everywhere, event kinds
the feature config does not name, and per field the share of values that fall in the config's unknown bucket.
:func:`infer_config` fits a feature config to the logs: per declared categorical field an id range, a vocabulary
(by frequency) or hash buckets; per numeric field quantile edges; widths and list sizes from the data."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from edge_rerank.cloud.logs import (
    V1_DECLARATION,
    LogDeclaration,
    LogFormatError,
    LogRowError,
    declaration_of,
    log_files,
    parse_row_v2,
    row_to_record_v2,
    table_to_rows,
)
from edge_rerank.device_sdk.contracts import ImpressionRow
from edge_rerank.device_sdk.features.config import (
    DEFAULT_EVENT_KINDS,
    IDENTITY_OPS,
    ROLES,
    FeatureConfig,
    FieldSpec,
)
from edge_rerank.device_sdk.features.operators import check_operators, encode_value, field_value, numeric_value

UNKNOWN_WARN_RATE = 0.05
MAX_EXAMPLES = 20


@dataclass
class LogReport:
    files: list[str] = field(default_factory=list)
    rows: int = 0
    sessions: int = 0
    candidates: int = 0
    events: int = 0
    errors: list[str] = field(default_factory=list)  # "file row N: field: reason" (first MAX_EXAMPLES)
    n_errors: int = 0
    no_positive: list[str] = field(default_factory=list)  # examples "file row N"
    n_no_positive: int = 0
    all_null_fields: list[str] = field(default_factory=list)
    field_nulls: dict[str, float] = field(default_factory=dict)  # share of candidates with the field null
    unknown_kinds: dict[str, int] = field(default_factory=dict)  # kind -> events (not named by the config)
    unknown_rates: dict[str, float] = field(default_factory=dict)  # field -> share in the unknown bucket
    unknown_examples: dict[str, list[str]] = field(default_factory=dict)  # field -> "file row N: value"
    grades: dict[int, int] = field(default_factory=dict)
    unordered_lists: int = 0
    declarations: dict[str, str] = field(default_factory=dict)  # file -> "v1" or the v2 declaration JSON
    config: str = ""  # what the unknown-bucket rates were measured against

    @property
    def ok(self) -> bool:
        return self.n_errors == 0 and bool(self.files) and self.rows > 0

    def warnings(self) -> list[str]:
        out = []
        if self.n_no_positive:
            out.append(f"{self.n_no_positive} of {self.rows} lists have no positive (they train nothing), e.g. "
                       + ", ".join(self.no_positive[:3]))
        for f in self.all_null_fields:
            out.append(f"field {f!r} is null in every candidate")
        for k, n in sorted(self.unknown_kinds.items()):
            out.append(f"event kind {k!r} ({n} events) has no role in the feature config: treated as neutral")
        for f, r in sorted(self.unknown_rates.items()):
            if r > UNKNOWN_WARN_RATE:
                ex = "; ".join(self.unknown_examples.get(f, [])[:3])
                out.append(f"field {f!r}: {r:.1%} of values fall in the unknown bucket (> {UNKNOWN_WARN_RATE:.0%}), "
                           f"e.g. {ex}")
        return out

    def text(self) -> str:
        lines = [f"{'OK' if self.ok else 'MALFORMED'}: {len(self.files)} file(s), {self.rows} lists, "
                 f"{self.sessions} sessions, {self.candidates} candidates, {self.events} events"]
        if self.unordered_lists:
            lines.append(f"{self.unordered_lists} lists without display positions (trained as unordered)")
        if self.grades:
            lines.append("grades: " + ", ".join(f"{g}: {n}" for g, n in sorted(self.grades.items())))
        if self.n_errors:
            lines.append(f"{self.n_errors} malformed row(s)" + (f" (first {len(self.errors)})"
                                                               if self.n_errors > len(self.errors) else "") + ":")
            lines += [f"  {e}" for e in self.errors]
        if self.field_nulls:
            lines.append("declared fields (null share | unknown-bucket share" + (f" vs {self.config}" if self.config
                                                                                 else "") + "):")
            for f, z in self.field_nulls.items():
                u = self.unknown_rates.get(f)
                lines.append(f"  {f:<24} {z:7.1%} | {'n/a' if u is None else f'{u:.1%}'}")
        w = self.warnings()
        if w:
            lines.append("warnings:")
            lines += [f"  {x}" for x in w]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return {**asdict(self), "ok": self.ok, "warnings": self.warnings()}


def _parse_file(path: Path, report: LogReport | None = None
                ) -> tuple[LogDeclaration, list[tuple[int, ImpressionRow]], list[str]]:
    """(declaration, [(row index, row)], errors) of one file: v1 rows go through the v1 -> v2 mapping so the
    same range checks apply."""
    errors: list[str] = []
    try:
        table = pq.read_table(path)
        decl = declaration_of(table.schema, path.name)
    except (OSError, LogFormatError, ValueError) as exc:
        return V1_DECLARATION, [], [f"{path.name}: {exc}"]
    rows: list[tuple[int, ImpressionRow]] = []
    if decl is None:
        try:
            v1 = table_to_rows(table)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return V1_DECLARATION, [], [f"{path.name}: not a readable v1 impression log: {exc}"]
        decl = V1_DECLARATION
        records = [row_to_record_v2(r, decl) for r in v1]
    else:
        records = table.to_pylist()
    for i, rec in enumerate(records):
        try:
            rows.append((i, parse_row_v2(rec, decl)))
        except (LogRowError, ValueError) as exc:
            errors.append(f"{path.name} row {i}: {exc}")
    return decl, rows, errors


def _declared(decls: list[LogDeclaration]) -> tuple[list[str], list[str]]:
    cats: list[str] = []
    nums: list[str] = []
    for d in decls:
        cats += [c for c in d.categorical if c not in cats]
        nums += [n for n in d.numeric if n not in nums]
    return cats, nums


def validate_logs(path: str | Path, cfg: FeatureConfig | None = None) -> LogReport:
    """Check every row of every live log file under `path`. `cfg`: the feature config whose unknown buckets and
    event kinds to check against (None: the kinds of the default config, no unknown-bucket rates)."""
    rep = LogReport()
    try:
        files = log_files(path)
    except FileNotFoundError as exc:
        rep.errors.append(str(exc))
        rep.n_errors = 1
        return rep
    kinds = dict(cfg.event_kinds if cfg else DEFAULT_EVENT_KINDS)
    specs = {f.name: f for f in cfg.declared_fields} if cfg else {}
    rep.config = "the given feature config" if cfg else ""
    decls, sessions = [], set()
    nulls: Counter = Counter()
    unknown: Counter = Counter()
    unknown_kinds: Counter = Counter()
    grades: Counter = Counter()
    for f in files:
        rep.files.append(f.name)
        decl, rows, errors = _parse_file(f)
        rep.declarations[f.name] = decl.to_json() if decl is not V1_DECLARATION else "v1"
        decls.append(decl)
        rep.n_errors += len(errors)
        rep.errors += errors[: max(0, MAX_EXAMPLES - len(rep.errors))]
        names = [*decl.categorical, *decl.numeric]
        for i, row in rows:
            rep.rows += 1
            sessions.add(row.session_id)
            rep.candidates += len(row.candidates)
            rep.events += len(row.events)
            if all(c.label_grade == 0 for c in row.candidates):
                rep.n_no_positive += 1
                if len(rep.no_positive) < MAX_EXAMPLES:
                    rep.no_positive.append(f"{f.name} row {i}")
            if all(c.shown_position < 0 for c in row.candidates):
                rep.unordered_lists += 1
            for e in row.events:
                if e.name not in kinds:
                    unknown_kinds[e.name] += 1
            for c in row.candidates:
                grades[c.label_grade] += 1
                for n in names:
                    v = field_value(c.item, n)
                    if v is None:
                        nulls[n] += 1
                    spec = specs.get(n)
                    if spec is None:
                        continue
                    bad = (numeric_value(v) is None) if spec.kind == "numeric" else encode_value(spec, v) == spec.n
                    if bad:
                        unknown[n] += 1
                        ex = rep.unknown_examples.setdefault(n, [])
                        if len(ex) < 5:
                            ex.append(f"{f.name} row {i}: {v!r:.30}")
    rep.sessions = len(sessions)
    cats, nums = _declared(decls)
    for n in [*cats, *nums]:
        rep.field_nulls[n] = nulls[n] / max(1, rep.candidates)
        if rep.candidates and nulls[n] == rep.candidates:
            rep.all_null_fields.append(n)
        if n in specs:
            rep.unknown_rates[n] = unknown[n] / max(1, rep.candidates)
    if cfg:
        missing = [s for s in specs if s not in rep.field_nulls]
        for n in missing:
            rep.errors.append(f"the feature config declares field {n!r}, which no log file declares")
            rep.n_errors += 1
    rep.unknown_kinds = dict(unknown_kinds)
    rep.grades = dict(grades)
    return rep


def _quantile_edges(values: list[float], n: int = 9) -> tuple[float, ...]:
    if not values:
        return ()
    qs = np.quantile(np.asarray(values, dtype=np.float64), np.linspace(0, 1, n + 2)[1:-1])
    return tuple(sorted({float(q) for q in qs}))


def _categorical_spec(name: str, values: Counter, max_vocab: int) -> FieldSpec:
    ints = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    if values and len(ints) == len(values) and min(ints) >= 0 and max(ints) < min(1 << 20, 2 * len(ints) + 16):
        return FieldSpec(name, mode="ids", size=max(ints) + 1)
    if 0 < len(values) <= max_vocab:
        vocab = sorted(values, key=lambda v: (-values[v], str(v)))
        return FieldSpec(name, mode="vocab", vocab=tuple(vocab))
    size = 1 << max(4, min(16, math.ceil(math.log2(max(2, len(values))))))
    return FieldSpec(name, mode="hash", size=size)


def infer_config(path: str | Path, *, base: FeatureConfig | None = None, max_vocab: int = 1000,
                 event_kinds: dict[str, str] | None = None) -> tuple[FeatureConfig, dict]:
    """A feature config fitted to the logs under `path`, and a summary of what was fitted. Raises
    LogFormatError if a file is malformed (run :func:`validate_logs` for the full report). `event_kinds`
    names roles for kinds (merged over the default roles); kinds seen but named nowhere become neutral."""
    base = base or FeatureConfig()
    if event_kinds:
        bad = {k: r for k, r in event_kinds.items() if r not in ROLES}
        if bad:
            raise ValueError(f"event kind roles must be one of {ROLES}, got {bad}")
    decls, rows = [], []
    for f in log_files(path):
        decl, parsed, errors = _parse_file(f)
        if errors:
            raise LogFormatError(f"{errors[0]} ({len(errors)} malformed row(s); run `edge-rerank logs validate`)")
        decls.append(decl)
        rows += [r for _, r in parsed]
    if not rows:
        raise LogFormatError(f"no rows in the logs under {path}")
    cats, nums = _declared(decls)
    cat_values: dict[str, Counter] = {n: Counter() for n in cats}
    num_values: dict[str, list[float]] = {n: [] for n in nums}
    kinds_seen: Counter = Counter()
    emb_dim = dense_dim = 0
    n_max, max_grade, geo, has_vec = 2, 0, any(d.geo for d in decls), False
    for row in rows:
        n_max = max(n_max, len(row.candidates))
        for c in row.candidates:
            max_grade = max(max_grade, c.label_grade)
            if c.item.id_embedding.size:
                emb_dim, has_vec = emb_dim or int(c.item.id_embedding.size), True
            if c.item.cloud_dense.size:
                dense_dim = dense_dim or int(c.item.cloud_dense.size)
            for n in cats:
                v = field_value(c.item, n)
                if v is not None:
                    cat_values[n][v] += 1
            for n in nums:
                v = numeric_value(field_value(c.item, n))
                if v is not None:
                    num_values[n].append(v)
        for e in row.events:
            kinds_seen[e.name] += 1
            for n in cats:
                v = field_value(e, n)
                if v is not None:
                    cat_values[n][v] += 1
    fields = tuple(_categorical_spec(n, cat_values[n], max_vocab) for n in cats) + tuple(
        FieldSpec(n, kind="numeric", edges=_quantile_edges(num_values[n])) for n in nums)
    roles = dict(DEFAULT_EVENT_KINDS) | (event_kinds or {})
    roles |= {k: "neutral" for k in kinds_seen if k not in roles}
    ops: list[str] = ["cloud_score", "cloud_position"]
    if geo:
        ops += ["dist:context", "dist_last:click", "dist_min:click"]
    for n in cats[:8]:
        ops += [f"hit:{n}:click", f"freq:{n}:click", f"step:{n}:click", f"hit:{n}:skip", f"freq:{n}:skip"]
    ops += list(IDENTITY_OPS)
    ops += [f"num:{n}" for n in nums]
    if has_vec:
        ops += ["sim_max:click", "sim_mean:click", "sim_max:skip", "sim_mean:skip", "sim_max:seen"]
    gain = base.label_gain if max_grade < len(base.label_gain) else tuple(float(g) for g in range(max_grade + 1))
    cfg = replace(base, version="features-v2-inferred", n_max=min(4096, n_max), emb_dim=emb_dim or base.emb_dim,
                  dense_dim=dense_dim or base.dense_dim, fields=fields, embedding_fields=(),
                  event_kinds=tuple(roles.items()), label_gain=gain, candidate_ops=tuple(ops))
    check_operators(cfg)
    summary = {"rows": len(rows), "fields": {f.name: f.to_dict() | {"distinct": len(cat_values.get(f.name, ()))}
                                             if f.kind == "categorical" else f.to_dict() for f in fields},
               "event_kinds": {k: {"events": kinds_seen[k], "role": roles[k]} for k in sorted(kinds_seen)},
               "n_max": cfg.n_max, "emb_dim": cfg.emb_dim, "dense_dim": cfg.dense_dim, "geo": geo,
               "label_gain": list(gain), "embedding_slots": [s for s in cfg.slot_fields if s]}
    for s in summary["fields"].values():
        if "vocab" in s:
            s["vocab"] = s["vocab"][:10] + (["..."] if len(s["vocab"]) > 10 else [])
    return cfg, summary


def logs_are_v2(path: str | Path) -> bool:
    return any(declaration_of(pq.read_schema(f), f.name) is not None for f in log_files(path))
