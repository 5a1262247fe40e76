"""Export one trained model to every requested format, validate each file on real inputs, pack bundles.

For each format: convert (toolchain imported lazily), load the file in its device runtime (the backend the
model manager would pick), compare its scores with the torch model *and* with onnxruntime on the same real
lists, time it, and write a bundle only when it met the spec's tolerance. Nothing raises half-way: every
problem lands in the typed ``ExportReport`` (``status`` per format + its reasons).

Core ML off macOS: the converted program's interface and op set are checked, and the converted MIL program
is evaluated op by op in numpy (``converters.coreml.mil_eval``) against torch and onnxruntime with the same
tolerance. The Core ML runtime itself needs macOS, so such a bundle says ``numeric_parity_checked: 0`` and
``program_parity_checked: 1`` in its manifest and its status is ``program-verified`` (not ``passed``).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edge_rerank.converters.bundle import write_bundle
from edge_rerank.converters.specs import FORMATS, MODEL_FILES, ExportSpec, ToolchainMissing, get_spec
from edge_rerank.converters.validate import ValidationReport, validate, validation_inputs
from edge_rerank.device_sdk.backends import DEFAULT_BACKEND

# status of one format
PASSED, FAILED, UNAVAILABLE = "passed", "failed", "unavailable"
PROGRAM_VERIFIED = "program-verified"  # Core ML off macOS: structure + MIL program numerics, runtime not run
RUNTIME = {f: DEFAULT_BACKEND[f] for f in ("onnx", "tflite", "coreml", "mnn")}  # the device SDK's table
# runtimes checked besides the default one (recorded, never blocking the bundle)
EXTRA_RUNTIMES = {"tflite": ["tflite-runtime"]}


@dataclass
class RuntimeCheck:
    """A secondary runtime for the same file (e.g. legacy tflite-runtime): ran or not, and whether it agrees."""

    runtime: str
    ran: bool
    agrees: bool | None = None
    max_abs_diff: float | None = None
    reason: str = ""


@dataclass
class FormatResult:
    format: str
    runtime: str
    status: str = FAILED
    model_file: str | None = None
    size_bytes: int | None = None
    convert_s: float | None = None
    vs_torch: ValidationReport | None = None  # in the format's runtime (or its MIL program, see `evaluated_by`)
    vs_onnxruntime: ValidationReport | None = None
    latency_ms: float | None = None  # median, batch 1, one thread, a full list
    bundle: str | None = None
    structure: dict | None = None
    other_runtimes: list[RuntimeCheck] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # not failures: what was not checked here and why
    evaluated_by: str = ""  # what produced the compared scores: the runtime, or "MIL program in numpy"

    @property
    def ok(self) -> bool:
        return self.status in (PASSED, PROGRAM_VERIFIED)

    def manifest_validation(self) -> dict[str, float]:
        """Flat numbers for the bundle manifest: what was checked and what it measured."""
        runtime_ran = self.vs_torch is not None and self.status != PROGRAM_VERIFIED
        out: dict[str, float] = {"numeric_parity_checked": float(runtime_ran)}
        if self.status == PROGRAM_VERIFIED:
            out["program_parity_checked"] = 1.0
        for tag, rep in (("torch", self.vs_torch), ("onnxruntime", self.vs_onnxruntime)):
            if rep is None:
                continue
            out["n_lists"] = float(rep.n_lists)
            for k in ("max_abs_diff", "mean_kendall_tau", "min_kendall_tau", "mean_top5_overlap", "min_top5_overlap"):
                out[f"{tag}.{k}"] = float(getattr(rep, k))
            out[f"{tag}.passed"] = float(rep.passed)
        if self.structure is not None:
            out["structure_checked"] = 1.0
            out["structure.passed"] = float(not self.structure.get("problems"))
        if self.latency_ms is not None:
            out["latency_ms_p50"] = float(self.latency_ms)
        for rc in self.other_runtimes:
            if rc.ran and rc.max_abs_diff is not None:
                out[f"{rc.runtime}.max_abs_diff"] = float(rc.max_abs_diff)
                out[f"{rc.runtime}.passed"] = float(bool(rc.agrees))
        return out


@dataclass
class ExportReport:
    family: str
    version: str
    n_lists: int
    results: list[FormatResult]

    def by_format(self, fmt: str) -> FormatResult:
        for r in self.results:
            if r.format == fmt:
                return r
        raise KeyError(fmt)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failures(self) -> list[str]:
        return [f"{r.format}: {e}" for r in self.results for e in r.errors]

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        """Markdown parity summary: one row per format."""
        def f(v: float | None, fmt: str) -> str:
            return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, fmt)

        lines = ["| format | runtime | size (KB) | max abs diff vs torch | min Kendall τ | mean top-5 overlap | "
                 "max abs diff vs onnxruntime | latency p50 (ms) | status |", "|---|---|---|---|---|---|---|---|---|"]
        for r in self.results:
            t, o = r.vs_torch, r.vs_onnxruntime
            kb = r.size_bytes / 1024 if r.size_bytes else None
            runtime = r.runtime if r.status != PROGRAM_VERIFIED else f"{r.runtime}: MIL program in numpy"
            lines.append(f"| {r.format} | {runtime} | {f(kb, '.1f')} | {f(t.max_abs_diff if t else None, '.2e')} | "
                         f"{f(t.min_kendall_tau if t else None, '.4f')} | "
                         f"{f(t.mean_top5_overlap if t else None, '.3f')} | "
                         f"{f(o.max_abs_diff if o else None, '.2e')} | {f(r.latency_ms, '.3f')} | {r.status} |")
        return "\n".join(lines)


def median_latency_ms(run: Callable[[dict[str, np.ndarray]], np.ndarray], x: dict[str, np.ndarray],
                       runs: int) -> float:
    for _ in range(10):
        run(x)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def torch_reference(model) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    import torch

    model.eval()
    names = model.input_names
    cache: dict[int, tuple[dict, np.ndarray]] = {}  # by identity of the input dict (kept alive by the cache)

    def ref(x: dict[str, np.ndarray]) -> np.ndarray:
        hit = cache.get(id(x))
        if hit is not None and hit[0] is x:
            return hit[1]
        with torch.no_grad():
            y = model(*[torch.from_numpy(np.ascontiguousarray(x[n])) for n in names]).numpy()
        cache[id(x)] = (x, y)
        return y

    return ref


def convert(fmt: str, model, example: dict[str, np.ndarray], build: Path, spec: ExportSpec,
            onnx_path: Path | None = None) -> tuple[Path, dict | None, Callable | None]:
    """Write the `fmt` model file under `build`; returns (path, structure report or None, a numpy evaluation
    of the converted program or None)."""
    build.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        from edge_rerank.converters.onnx.convert import export_onnx

        return export_onnx(model, example, build / MODEL_FILES["onnx"]), None, None
    if fmt == "tflite":
        from edge_rerank.converters.tflite.convert import export_tflite

        return export_tflite(model, example, build / MODEL_FILES["tflite"], spec), None, None
    if fmt == "mnn":
        from edge_rerank.converters.mnn.convert import export_mnn

        if onnx_path is None:
            raise RuntimeError("MNN converts from the ONNX export, which failed")
        return export_mnn(onnx_path, build / MODEL_FILES["mnn"]), None, None
    if fmt == "coreml":
        from edge_rerank.converters.coreml.convert import check_structure, export_coreml, zip_package
        from edge_rerank.converters.coreml.mil_eval import MILEvaluator, UnsupportedOp

        package = build / "reranker.mlpackage"
        mlmodel = export_coreml(model, example, package, spec)
        structure = check_structure(mlmodel, spec)
        zipped = zip_package(package, build / MODEL_FILES["coreml"])
        try:
            program = MILEvaluator(mlmodel).run
        except UnsupportedOp as exc:
            structure.problems.append(f"cannot evaluate the MIL program: {exc}")
            program = None
        return zipped, {"inputs": structure.inputs, "outputs": structure.outputs, "op_counts": structure.op_counts,
                        "problems": structure.problems}, program
    raise ValueError(f"unknown format {fmt!r}; known: {FORMATS}")


def export_formats(model, test_inputs: dict[str, np.ndarray], out: str | Path, *, formats: list[str] | tuple[str, ...],
                   version: str, metrics: dict | None = None, n_validate: int = 300,
                   family: str = "device-reranker", name: str = "device-reranker", latency_runs: int = 200,
                   progress: bool = True, lean: bool = True) -> ExportReport:
    """Export `model` to each of `formats` under `out/<format>/` (bundle) with build files in `out/build/`.
    `test_inputs` are real model inputs (``Samples.inputs``) never seen in training or epoch selection: the
    model's recorded test split (``edge_rerank.api.export`` loads it from the checkpoint and refuses other logs).
    With `lean` (the default) the converters see the folded graph of the same function (``converters.lean``)
    where it applies; every file is still validated against `model` itself."""
    from edge_rerank.device_sdk import backends
    from edge_rerank.device_sdk.backends import BackendError

    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"unknown formats {bad}; known: {FORMATS}")
    spec = get_spec(family, model.fcfg)
    if list(model.input_names) != spec.input_names:
        raise ValueError(f"the model's inputs {model.input_names} differ from the {family} spec {spec.input_names}")
    inputs = validation_inputs(test_inputs, n_validate)
    if not inputs:
        raise ValueError("no validation inputs: the logs gave no lists")
    for x in inputs:
        spec.check_inputs(x)
    out = Path(out)
    ref = torch_reference(model)
    from edge_rerank.converters.lean import export_graph

    graph = export_graph(model, lean)
    full = max(inputs, key=lambda x: float(x["cand_mask"].sum()))
    # ONNX comes first: it is the cross-check for every other format and MNN's source
    order = ["onnx"] + [f for f in FORMATS if f != "onnx" and f in formats]
    ort_run: Callable | None = None
    onnx_path: Path | None = None
    results: list[FormatResult] = []
    try:
        from tqdm import tqdm

        steps = tqdm(order, desc="export", unit="format", disable=not progress)
    except ImportError:  # pragma: no cover - tqdm comes with [train]
        steps = order
    for fmt in steps:
        if hasattr(steps, "set_postfix_str"):
            steps.set_postfix_str(fmt)
        tol = spec.tolerance(fmt)
        res = FormatResult(format=fmt, runtime=RUNTIME[fmt])
        build = out / "build" / fmt
        t0 = time.perf_counter()
        try:
            # litert-torch prints its own stage log to stdout: keep it only when progress is shown
            quiet = contextlib.redirect_stdout(io.StringIO()) if not progress else contextlib.nullcontext()
            with quiet:
                path, structure, program = convert(fmt, graph, inputs[0], build, spec, onnx_path)
        except ToolchainMissing as exc:
            res.status, res.errors = UNAVAILABLE, [str(exc)]
            results.append(res)
            continue
        except Exception as exc:  # a converter failure is reported for this format; the others go on
            res.errors = [f"conversion failed: {type(exc).__name__}: {str(exc)[:1000]}"]
            results.append(res)
            continue
        res.convert_s = time.perf_counter() - t0
        res.model_file, res.size_bytes, res.structure = str(path), path.stat().st_size, structure
        if structure is not None and structure["problems"]:
            res.errors += [f"structure: {p}" for p in structure["problems"]]
        if fmt == "onnx":
            onnx_path = path
        kw = dict(tolerance=tol.max_abs_diff, min_tau=tol.min_kendall_tau, min_top5=tol.min_top5_overlap,
                  candidate_name=f"{fmt}/{res.runtime}")
        try:
            be = backends.create(res.runtime, path, threads=1)
            run, res.evaluated_by = be.run, res.runtime
        except BackendError as exc:
            if program is None:
                res.errors.append(f"runtime {res.runtime}: {exc}")
                results.append(res)
                continue
            # Core ML off macOS: the converted program itself, evaluated in numpy
            res.notes.append(f"runtime parity not run: {exc}")
            run, res.evaluated_by = program, "MIL program in numpy"
            kw["candidate_name"] = f"{fmt}/MIL program in numpy"
        res.vs_torch = validate(ref, run, inputs, reference_name="torch", **kw)
        if fmt == "onnx":
            ort_run = run
        elif ort_run is not None:
            res.vs_onnxruntime = validate(ort_run, run, inputs, reference_name="onnxruntime", **kw)
        for tag, rep in (("torch", res.vs_torch), ("onnxruntime", res.vs_onnxruntime)):
            if rep is not None and not rep.passed:
                res.errors += [f"vs {tag}: {e}" for e in rep.failures]
        if res.evaluated_by == res.runtime:  # time real runtimes only
            try:
                res.latency_ms = median_latency_ms(run, full, latency_runs)
            except Exception as exc:  # latency is informative; a crash here already failed validation
                res.errors.append(f"latency run failed: {exc}")
        for extra in EXTRA_RUNTIMES.get(fmt, []):
            res.other_runtimes.append(_secondary(extra, path, ref, inputs, tol))
        if not res.errors:
            res.status = PASSED if res.evaluated_by == res.runtime else PROGRAM_VERIFIED
            if fmt in formats:
                res.bundle = str(_bundle(res, out, model, spec, name, version, metrics, tol))
        results.append(res)
    # ONNX ran as the cross-check; report it only if asked for or if its failure explains missing checks
    results = [r for r in results if r.format in formats or not r.ok]
    return ExportReport(family=family, version=version, n_lists=len(inputs), results=results)


def _secondary(runtime: str, path: Path, ref, inputs, tol) -> RuntimeCheck:
    from edge_rerank.device_sdk import backends
    from edge_rerank.device_sdk.backends import BackendError

    try:
        be = backends.create(runtime, path, threads=1)
    except BackendError as exc:
        return RuntimeCheck(runtime=runtime, ran=False, reason=str(exc))
    rep = validate(ref, be.run, inputs, tolerance=tol.max_abs_diff, min_tau=tol.min_kendall_tau,
                   min_top5=tol.min_top5_overlap, reference_name="torch", candidate_name=runtime)
    return RuntimeCheck(runtime=runtime, ran=True, agrees=rep.passed, max_abs_diff=rep.max_abs_diff,
                        reason="; ".join(rep.failures))


def bundle_name(name: str, fmt: str) -> str:
    """Registry name of a format's bundle: the model registry keys bundles by name/version, so each format
    gets its own name (ONNX keeps the plain name the demo and ``serve --model-name`` use)."""
    return name if fmt == "onnx" else f"{name}-{fmt}"


def _bundle(res: FormatResult, out: Path, model, spec: ExportSpec, name: str, version: str, metrics: dict | None,
            tol) -> Path:
    target = out / res.format
    if target.exists():
        shutil.rmtree(target)
    return write_bundle(target, model_file=res.model_file, fmt=res.format, name=bundle_name(name, res.format),
                        version=version,
                        feature_config=model.fcfg, tolerance=tol.to_dict(), validation=res.manifest_validation(),
                        metrics=(metrics or {}) | {"params": float(sum(p.numel() for p in model.parameters()))},
                        spec=spec)
