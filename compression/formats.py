"""Per-format compression methods (LiteRT, Core ML, MNN) behind one registry the benchmark can consume.

Each ``FormatMethod`` builds its file from a ``FormatContext`` (the torch model, the fp32 ONNX / ``.tflite`` /
``.mlpackage`` exports, calibration inputs) and scores inputs in the runtime that would ship it. Every
compressed method names its fp32 reference in the same format (``reference``), so a benchmark compares like
with like. A method whose toolchain is missing or whose fp32 export failed is reported by
``unavailable_reason`` (never raised); ``measure`` runs the available ones and records the others with that
reason.

Core ML numbers come from the Core ML runtime on macOS and from the converted MIL program evaluated in numpy
elsewhere (``evaluated_by``), because Core ML prediction exists only on macOS.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_rerank.compression.coreml_compress import CORE_ML, MIL_NUMPY
from edge_rerank.converters.validate import fidelity
from edge_rerank.device_sdk import backends

FORMAT_RUNTIME = {f: backends.DEFAULT_BACKEND[f] for f in ("tflite", "coreml", "mnn")}


@dataclass
class FormatContext:
    """What a method builds from. Paths are None when that fp32 export is unavailable (``missing`` says why)."""

    model: Any
    onnx_fp32: Path | None = None
    tflite_fp32: Path | None = None
    mlpackage_fp32: Path | None = None
    calibration: dict[str, np.ndarray] | None = None
    missing: dict[str, str] = field(default_factory=dict)  # format -> why its fp32 file is absent

    @classmethod
    def export(cls, model, example: dict[str, np.ndarray], out_dir: str | Path, *,
               calibration: dict[str, np.ndarray] | None = None,
               formats: tuple[str, ...] = ("tflite", "coreml", "mnn")) -> FormatContext:
        """Export the fp32 files the methods start from (ONNX always, it is MNN's source) under `out_dir`,
        with the converters' own exporters; `example` is one real batch-1 input. A failed export is recorded
        in ``missing``, not raised."""
        ctx = cls(model=model, calibration=calibration)
        steps = [("onnx", "onnx_fp32")] + [(f, a) for f, a in (("tflite", "tflite_fp32"), ("coreml", "mlpackage_fp32"))
                                           if f in formats]
        for fmt, attr in steps:
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    setattr(ctx, attr, export_fp32(fmt, model, example, out_dir))
            except Exception as exc:  # ToolchainMissing or a converter failure: that format's methods are out
                ctx.missing[fmt] = f"fp32 {fmt} export failed: {type(exc).__name__}: {str(exc)[:500]}"
        if "mnn" in formats and ctx.onnx_fp32 is None:
            ctx.missing["mnn"] = "MNN converts from the fp32 ONNX export, which failed"
        return ctx


def export_fp32(fmt: str, model, example: dict[str, np.ndarray], out: str | Path) -> Path:
    """The fp32 file of `fmt` (onnx | tflite | coreml) the compressed methods start from, under ``out/fp32/``,
    through the converters' own exporters."""
    from edge_rerank.converters.specs import get_spec

    fp32 = Path(out) / "fp32"
    if fmt == "onnx":
        from edge_rerank.converters.onnx.convert import export_onnx

        return export_onnx(model, example, fp32 / "reranker.onnx")
    spec = get_spec("device-reranker", model.fcfg)
    if fmt == "tflite":
        from edge_rerank.converters.tflite.convert import export_tflite

        return export_tflite(model, example, fp32 / "reranker.tflite", spec)
    if fmt == "coreml":
        from edge_rerank.converters.coreml.convert import export_coreml

        export_coreml(model, example, fp32 / "reranker.mlpackage", spec)
        return fp32 / "reranker.mlpackage"
    raise ValueError(f"no fp32 export for format {fmt!r}")


@dataclass(frozen=True)
class FormatMethod:
    name: str
    format: str  # "tflite" | "coreml" | "mnn"
    runtime: str  # the device backend that ships it
    build: Callable[[FormatContext, Path], Path]  # writes the model file under the given directory
    scores: Callable[[Path, dict[str, np.ndarray]], np.ndarray]  # [B, N] for inputs with a batch dimension
    evaluated_by: str  # what computes `scores` here: the runtime, or "MIL program in numpy"
    reference: str | None = None  # the fp32 method of the same format (None: this is the reference)
    modules: tuple[str, ...] = ()  # importable modules the method needs (its toolchain)
    extra: str = ""  # the pyproject extra that provides them
    shrinks: bool = True  # expected smaller than its reference

    def size_bytes(self, path: Path) -> int:
        """Shipped size: the file, or for Core ML the zipped package (as in a bundle)."""
        if self.format == "coreml":
            from edge_rerank.compression.coreml_compress import package_size

            return package_size(path)
        return Path(path).stat().st_size


def _litert_scores(path: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    from edge_rerank.device_sdk import backends

    return backends.create("litert", path, threads=1).run(inputs)


def _mnn_scores(path: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    from edge_rerank.device_sdk import backends

    return backends.create("mnn", path, threads=1).run(inputs)


def _coreml_scores(path: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    from edge_rerank.compression.coreml_compress import coreml_scores

    return coreml_scores(path, inputs)


def _need(ctx: FormatContext, attr: str, fmt: str) -> Path:
    p = getattr(ctx, attr)
    if p is None:
        raise RuntimeError(ctx.missing.get(fmt, f"no fp32 {fmt} file in the context"))
    return Path(p)


def _copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst)
    else:
        shutil.copyfile(src, dst)
    return dst


def _tflite_fp32(ctx: FormatContext, out: Path) -> Path:
    return _copy(_need(ctx, "tflite_fp32", "tflite"), out / "tflite-fp32.tflite")


def _tflite_quant(mode: str) -> Callable[[FormatContext, Path], Path]:
    def build(ctx: FormatContext, out: Path) -> Path:
        from edge_rerank.compression.litert_quant import quantize_tflite

        cal = ctx.calibration if mode == "full-int8" else None
        if mode == "full-int8" and not cal:
            raise RuntimeError("tflite full-int8 needs calibration inputs in the context")
        return quantize_tflite(_need(ctx, "tflite_fp32", "tflite"), out / f"tflite-{mode}.tflite", mode=mode,
                               calibration=cal)

    return build


def _coreml_fp32(ctx: FormatContext, out: Path) -> Path:
    return _copy(_need(ctx, "mlpackage_fp32", "coreml"), out / "coreml-fp32.mlpackage")


def _coreml_compress(method: str) -> Callable[[FormatContext, Path], Path]:
    def build(ctx: FormatContext, out: Path) -> Path:
        from edge_rerank.compression.coreml_compress import compress_coreml

        return compress_coreml(_need(ctx, "mlpackage_fp32", "coreml"), out / f"coreml-{method}.mlpackage",
                               method=method)

    return build


def _mnn_fp32(ctx: FormatContext, out: Path) -> Path:
    from edge_rerank.converters.mnn.convert import export_mnn

    return export_mnn(_need(ctx, "onnx_fp32", "mnn"), out / "mnn-fp32.mnn")


def _mnn_weights(bits: int) -> Callable[[FormatContext, Path], Path]:
    def build(ctx: FormatContext, out: Path) -> Path:
        from edge_rerank.compression.mnn_quant import quantize_mnn_weights

        name = "mnn-fp16" if bits == 16 else f"mnn-int{bits}-weight"
        return quantize_mnn_weights(_need(ctx, "onnx_fp32", "mnn"), out / f"{name}.mnn", bits=bits)

    return build


_COREML_BY = CORE_ML if sys.platform == "darwin" else MIL_NUMPY
_LITERT = ("ai_edge_litert",)
_AEQ = ("ai_edge_quantizer", "ai_edge_litert")
_CT = ("coremltools",)
_MNN = ("MNN", "_tools")

METHODS: tuple[FormatMethod, ...] = (
    FormatMethod("tflite-fp32", "tflite", "litert", _tflite_fp32, _litert_scores, "litert", None, _LITERT,
                 "tflite", shrinks=False),
    FormatMethod("tflite-fp16", "tflite", "litert", _tflite_quant("weight-only-fp16"), _litert_scores,
                 "litert", "tflite-fp32", _AEQ, "tflite"),
    FormatMethod("tflite-int8-weight-only", "tflite", "litert", _tflite_quant("weight-only-int8"), _litert_scores,
                 "litert", "tflite-fp32", _AEQ, "tflite"),
    FormatMethod("tflite-int8-dynamic", "tflite", "litert", _tflite_quant("dynamic-int8"), _litert_scores,
                 "litert", "tflite-fp32", _AEQ, "tflite"),
    FormatMethod("tflite-int8-full", "tflite", "litert", _tflite_quant("full-int8"), _litert_scores,
                 "litert", "tflite-fp32", _AEQ, "tflite"),
    FormatMethod("coreml-fp32", "coreml", "coreml", _coreml_fp32, _coreml_scores, _COREML_BY, None, _CT,
                 "coreml", shrinks=False),
    FormatMethod("coreml-int8-linear", "coreml", "coreml", _coreml_compress("linear-int8"), _coreml_scores,
                 _COREML_BY, "coreml-fp32", _CT, "coreml"),
    FormatMethod("coreml-palettize-6bit", "coreml", "coreml", _coreml_compress("palettize-6bit"), _coreml_scores,
                 _COREML_BY, "coreml-fp32", (*_CT, "sklearn"), "coreml"),
    FormatMethod("coreml-palettize-4bit", "coreml", "coreml", _coreml_compress("palettize-4bit"), _coreml_scores,
                 _COREML_BY, "coreml-fp32", (*_CT, "sklearn"), "coreml"),
    FormatMethod("mnn-fp32", "mnn", "mnn", _mnn_fp32, _mnn_scores, "mnn", None, _MNN, "mnn", shrinks=False),
    FormatMethod("mnn-fp16", "mnn", "mnn", _mnn_weights(16), _mnn_scores, "mnn", "mnn-fp32", _MNN, "mnn"),
    FormatMethod("mnn-int8-weight", "mnn", "mnn", _mnn_weights(8), _mnn_scores, "mnn", "mnn-fp32", _MNN, "mnn"),
)


def get_method(name: str) -> FormatMethod:
    for m in METHODS:
        if m.name == name:
            return m
    raise KeyError(f"unknown format method {name!r}; known: {[m.name for m in METHODS]}")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def unavailable_reason(method: FormatMethod, ctx: FormatContext | None = None) -> str | None:
    """Why `method` cannot run here (a missing toolchain module, or its fp32 export missing from `ctx`);
    None when it can."""
    missing = [m for m in method.modules if not _importable(m)]
    if missing:
        return f"{method.name}: missing {', '.join(missing)}: pip install 'edge-rerank[{method.extra}]'"
    if ctx is not None and method.format in ctx.missing:
        return f"{method.name}: {ctx.missing[method.format]}"
    return None


@dataclass
class FormatMeasurement:
    method: str
    format: str
    evaluated_by: str
    status: str  # "ok" | "unavailable" | "failed"
    reference: str | None = None
    file: str | None = None
    size_kb: float | None = None
    reference_size_kb: float | None = None
    max_abs_diff: float | None = None  # vs the fp32 file of the same format, real candidates only
    mean_kendall_tau: float | None = None
    min_kendall_tau: float | None = None
    reason: str = ""
    scores: np.ndarray | None = field(default=None, repr=False)  # [B, N] on the measured inputs

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("scores")
        return d


def compare(reference: np.ndarray, scores: np.ndarray, cand_mask: np.ndarray) -> tuple[float, float, float]:
    """(max abs diff, mean Kendall τ, min Kendall τ) over lists, on the real candidates of each list."""
    diff, tau_min, tau_mean = fidelity(scores, reference, cand_mask)
    return diff, tau_mean, tau_min


def measure(ctx: FormatContext, out_dir: str | Path, inputs: dict[str, np.ndarray],
            methods: tuple[FormatMethod, ...] | list[FormatMethod] = METHODS) -> list[FormatMeasurement]:
    """Build and score every method on `inputs` (real lists, leading batch dimension); compare each compressed
    method with its fp32 reference of the same format. Nothing raises: an unavailable or failing method
    becomes a row with its reason."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    built: dict[str, tuple[Path, np.ndarray, int]] = {}
    rows = []
    # references first, so each compressed method finds its fp32 scores
    for m in sorted(methods, key=lambda m: m.reference is not None):
        row = FormatMeasurement(m.name, m.format, m.evaluated_by, "unavailable", reference=m.reference)
        reason = unavailable_reason(m, ctx)
        if reason is not None:
            row.reason = reason
            rows.append(row)
            continue
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                path = m.build(ctx, out)
                size = m.size_bytes(path)
                s = np.asarray(m.scores(path, inputs), dtype=np.float32)
        except Exception as exc:
            row.status, row.reason = "failed", f"{type(exc).__name__}: {str(exc)[:1000]}"
            rows.append(row)
            continue
        built[m.name] = (path, s, size)
        row.status, row.file, row.size_kb, row.scores = "ok", str(path), size / 1024, s
        ref = built.get(m.reference or m.name)
        if ref is None:
            row.status, row.reason = "failed", f"its reference {m.reference} did not build"
        else:
            row.reference_size_kb = ref[2] / 1024
            row.max_abs_diff, row.mean_kendall_tau, row.min_kendall_tau = compare(ref[1], s, inputs["cand_mask"])
        rows.append(row)
    order = {m.name: i for i, m in enumerate(methods)}
    return sorted(rows, key=lambda r: order[r.method])


def to_markdown(rows: list[FormatMeasurement]) -> str:
    def f(v, fmt):
        return "—" if v is None else format(v, fmt)

    lines = ["| method | evaluated by | size KB | fp32 KB | max abs diff vs fp32 | mean / min Kendall τ | status |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        status = r.status if not r.reason else f"{r.status}: {r.reason[:120]}"
        lines.append(f"| {r.method} | {r.evaluated_by} | {f(r.size_kb, '.1f')} | {f(r.reference_size_kb, '.1f')} | "
                     f"{f(r.max_abs_diff, '.2e')} | {f(r.mean_kendall_tau, '.3f')} / {f(r.min_kendall_tau, '.3f')} | "
                     f"{status} |")
    return "\n".join(lines) + "\n"
