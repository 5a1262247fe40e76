"""Every compression method, in one registry (``METHODS``), built from one :class:`Context`.

A :class:`Method` builds one model file from the shared context (the trained fp32 model, its training,
validation and test lists, and lazily built intermediate files: the fp32 ONNX / TFLite / Core ML exports and the
pruned or distilled torch models, each made once per run) and scores input lists in its runtime. Every method
names its fp32 reference in the same format (``reference``; None for the references themselves), so a
per-format comparison compares like with like. A method whose toolchain is not installed, or whose fp32 export
failed, says why in :meth:`Method.unavailable_reason` instead of failing the run.

Torch (training: pruning's fine-tuning, distillation, parameter counts) is the one optional toolchain loaded here
lazily, through :func:`_training`; the other toolchains are loaded by the modules that call them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from edge_rerank.cloud.training.data import split_by_session
from edge_rerank.compression import formats
from edge_rerank.compression.coreml_compress import coreml_scores, package_size
from edge_rerank.compression.quantize import dynamic_int8, fp16, static_int8
from edge_rerank.converters.onnx.convert import export_onnx
from edge_rerank.device_sdk import backends
from edge_rerank.device_sdk.extras import importable, install_hint

FAMILIES = ("reference", "quantization", "pruning", "distillation")
REFERENCE = "onnx-fp32"  # what every method's table numbers are measured against


def _training() -> SimpleNamespace:
    """The torch side (the [train] extra), imported on first use: ``compress --list`` and the format methods
    run without it."""
    from edge_rerank.cloud.training.model import n_params
    from edge_rerank.cloud.training.train import TrainConfig
    from edge_rerank.compression.distill import STUDENT_PRESETS, distill
    from edge_rerank.compression.prune import magnitude_prune

    return SimpleNamespace(n_params=n_params, TrainConfig=TrainConfig, STUDENT_PRESETS=STUDENT_PRESETS,
                           distill=distill, magnitude_prune=magnitude_prune)


@dataclass
class Context:
    """What every method builds from; intermediate artifacts are built on first use and cached."""

    model: object  # the trained fp32 DeviceReranker (the teacher, the reference)
    train: object  # Samples: calibration, fine-tuning and distillation data (None: methods that need it fail)
    test: object  # Samples: the model's recorded test lists, for every reported number (never used to build)
    out: Path
    # Samples: the model's recorded validation lists — pruning's fine-tuning and distillation pick their best epoch
    # on them, as training did (None: a share of the training sessions is split off for that instead)
    tune: object = None
    calibration_lists: int = 200
    finetune_epochs: int = 3
    distill_epochs: int = 12
    progress: bool = False
    onnx_fp32_file: Path | None = None  # an fp32 ONNX export of `model` already on disk (else exported here)
    _cache: dict = field(default_factory=dict)
    reports: dict[str, dict] = field(default_factory=dict)  # method name -> what building it measured
    missing: dict[str, str] = field(default_factory=dict)  # format -> why its fp32 export is absent

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.out.mkdir(parents=True, exist_ok=True)

    def once(self, key: str, make: Callable[[], object]):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def example(self) -> dict[str, np.ndarray]:
        return {k: v[:1] for k, v in self.test.inputs.items()}

    @property
    def calibration(self) -> dict[str, np.ndarray]:
        if self.train is None:
            raise ValueError("this method needs training lists (calibration / fine-tuning), none were given")
        n = min(self.calibration_lists, len(self.train))
        return {k: v[:n] for k, v in self.train.inputs.items()}

    def params_of(self, method: str) -> int:
        """Parameters of the model behind `method`'s file: a student's own, else the reference's (pruning and
        quantization keep the dense shape: zeros and int8 still cost their multiply-adds here)."""
        student = self.reports.get(method, {}).get("student_params")
        return int(student) if student else _training().n_params(self.model)

    def onnx_of(self, key: str, model) -> Path:
        return self.once(f"onnx:{key}", lambda: export_onnx(model, self.example, self.out / "fp32" / f"{key}.onnx"))

    def _fp32(self, fmt: str, make: Callable[[], Path]) -> Path:
        """The fp32 export of `fmt`, made once; a failed export is recorded in ``missing`` (the format's other
        methods then report it as their reason) and raised."""
        if fmt in self.missing:
            raise RuntimeError(self.missing[fmt])
        try:
            return self.once(f"fp32:{fmt}", make)
        except Exception as exc:  # ToolchainMissing or a converter failure: that format's methods are out
            self.missing[fmt] = f"fp32 {fmt} export failed: {type(exc).__name__}: {str(exc)[:500]}"
            raise RuntimeError(self.missing[fmt]) from exc

    @property
    def onnx_fp32(self) -> Path:
        if self.onnx_fp32_file:
            return Path(self.onnx_fp32_file)
        return self._fp32("onnx", lambda: self.onnx_of("model", self.model))

    @property
    def tflite_fp32(self) -> Path:
        return self._fp32("tflite", lambda: formats.export_fp32("tflite", self.model, self.example, self.out))

    @property
    def mlpackage_fp32(self) -> Path:
        return self._fp32("coreml", lambda: formats.export_fp32("coreml", self.model, self.example, self.out))

    @property
    def fit_and_tune(self) -> tuple[object, object]:
        """(fit, tune): pruning's fine-tuning and distillation train on `fit` and pick their best epoch on `tune`
        — the model's own training and validation lists when `tune` was given (the rule training followed), else
        the training lists split by session — so the test lists every method is measured on stay unseen."""
        if self.train is None:
            raise ValueError("this method needs training lists (fine-tuning / distillation), none were given")
        if self.tune is not None:
            return self.train, self.tune
        return self.once("fit_and_tune", lambda: split_by_session(self.train, valid_share=0.15, seed=1))

    def pruned(self, sparsity: float):
        t = _training()
        fit, tune = self.fit_and_tune
        return self.once(f"pruned:{sparsity}", lambda: t.magnitude_prune(
            self.model, fit, tune, sparsity=sparsity, finetune_epochs=self.finetune_epochs,
            tcfg=t.TrainConfig(epochs=self.finetune_epochs), progress=self.progress))

    def student(self, preset: str):
        t = _training()
        fit, tune = self.fit_and_tune
        return self.once(f"student:{preset}", lambda: t.distill(
            self.model, fit, tune, student_cfg=t.STUDENT_PRESETS[preset],
            tcfg=t.TrainConfig(epochs=self.distill_epochs), compare_label_only=False, progress=self.progress))


FORMAT_FP32 = {"onnx": "onnx", "tflite": "tflite", "coreml": "coreml", "mnn": "onnx"}  # format -> fp32 it needs


@dataclass(frozen=True)
class Method:
    name: str
    format: str  # onnx | tflite | coreml | mnn
    family: str  # one of FAMILIES
    runtime: str  # device_sdk backend that runs the file (the simulator arm uses it too)
    build: Callable[[Context, Path], Path]  # (context, output directory) -> model file
    description: str = ""
    requires: tuple[str, ...] = ()  # importable modules the method needs (its toolchain)
    extra: str = "onnx"  # the extra to suggest for a required module edge_rerank.extras does not know
    reference: str | None = REFERENCE  # the fp32 method of the same format (None: this is that reference)
    # how scores are produced when not by `runtime` (Core ML off macOS: the MIL program in numpy)
    scorer: Callable[[Path], Callable[[dict[str, np.ndarray]], np.ndarray]] | None = None
    evaluated_by: str = ""
    simulate: bool = True  # run it as a simulator arm (needs a runtime that runs here at simulator speed)
    size: Callable[[Path], int] | None = None  # shipped bytes when not the plain file size (zipped packages)
    shrinks: bool = True  # expected smaller than its reference

    def unavailable_reason(self, ctx: Context | None = None) -> str | None:
        """None when it can run here, else why not: a toolchain module that is not installed, or (with `ctx`)
        the fp32 export it starts from having failed."""
        if self.format not in FORMAT_FP32:
            return f"unknown format {self.format!r}"
        missing = [m for m in self.requires if not importable(m)]
        if missing:
            return f"{self.name}: missing {', '.join(missing)}: {install_hint(missing, fallback=self.extra)}"
        fp32 = FORMAT_FP32[self.format]
        if ctx is not None and fp32 in ctx.missing:
            return f"{self.name}: {ctx.missing[fp32]}"
        return None

    def runner(self, path: Path) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        if self.scorer is not None:
            return self.scorer(path)
        return backends.create(self.runtime, path).run


def _onnx(name: str, family: str, build: Callable[[Context, Path], Path], description: str,
          requires: tuple[str, ...] = ("onnxruntime", "onnx"), extra: str = "onnx") -> Method:
    return Method(name, "onnx", family, "onnxruntime", build, description, requires, extra,
                  reference=None if name == REFERENCE else REFERENCE, shrinks=family == "quantization")


def _dynamic(weight_type: str, reduce_range: bool = False) -> Callable[[Context, Path], Path]:
    def build(ctx: Context, out: Path) -> Path:
        return dynamic_int8(ctx.onnx_fp32, out / "model.onnx", weight_type=weight_type, reduce_range=reduce_range)

    return build


def _static(ctx: Context, out: Path) -> Path:
    return static_int8(ctx.onnx_fp32, out / "model.onnx", ctx.calibration, n_lists=ctx.calibration_lists)


def _fp16(ctx: Context, out: Path) -> Path:
    return fp16(ctx.onnx_fp32, out / "model.onnx")


def _derived(kind: str, arg, then_int8: bool = False) -> Callable[[Context, Path], Path]:
    """A model trained from the reference (``pruned`` at sparsity `arg`, or a ``student`` of preset `arg`),
    exported to ONNX, optionally then dynamic int8; what training measured goes to ``ctx.reports``."""

    def build(ctx: Context, out: Path) -> Path:
        model, ctx.reports[out.name] = getattr(ctx, kind)(arg)
        path = ctx.onnx_of(f"{kind}-{arg}", model)
        return dynamic_int8(path, out / "model.onnx") if then_int8 else path

    return build


def _copy_fp32(ctx: Context, out: Path) -> Path:
    return ctx.onnx_fp32


def _format(name: str, fmt: str, runtime: str, build: Callable[[Context, Path], Path], requires: tuple[str, ...],
            reference: str | None, **kw) -> Method:
    """A LiteRT / Core ML / MNN method (``compression.formats`` builds it)."""
    return Method(name, fmt, "reference" if reference is None else "quantization", runtime, build,
                  f"{fmt}: {name.split('-', 1)[1]}", requires, extra=fmt, reference=reference,
                  evaluated_by=runtime, shrinks=reference is not None, **kw)


def _coreml(name: str, build: Callable[[Context, Path], Path], requires: tuple[str, ...],
            reference: str | None) -> Method:
    """Core ML runs in the Core ML runtime on macOS only; elsewhere the MIL program in numpy scores it (too slow
    for a simulator arm, and without a latency of its own)."""
    off_runtime = sys.platform != "darwin"
    return replace(_format(name, "coreml", "coreml", build, requires, reference),
                   evaluated_by=formats.COREML_EVALUATED_BY, size=package_size, simulate=not off_runtime,
                   scorer=(lambda path: lambda x: coreml_scores(path, x)) if off_runtime else None)


TRAIN = ("onnxruntime", "onnx", "torch")
_LITERT = ("ai_edge_litert",)
_AEQ = ("ai_edge_quantizer", "ai_edge_litert")
_CT = ("coremltools",)
_MNN = ("MNN", "_tools")

METHODS: tuple[Method, ...] = (
    _onnx("onnx-fp32", "reference", _copy_fp32, "the exported fp32 model (the reference)"),
    _onnx("onnx-fp16", "quantization", _fp16, "float16 weights and compute, float32 inputs/outputs"),
    _onnx("onnx-int8-dynamic-quint8", "quantization", _dynamic("QUInt8"), "dynamic int8, QUInt8 weights"),
    _onnx("onnx-int8-dynamic-qint8", "quantization", _dynamic("QInt8"), "dynamic int8, QInt8 weights"),
    _onnx("onnx-int8-dynamic-qint8-rr", "quantization", _dynamic("QInt8", True),
          "dynamic int8, QInt8 weights, reduce_range (7-bit)"),
    _onnx("onnx-int8-static", "quantization", _static,
          "static int8 (QDQ, per-channel weights), MatMul/Gemm activations calibrated on logged training lists"),
    _onnx("onnx-pruned50", "pruning", _derived("pruned", 0.5), "50 % magnitude pruning + fine-tuning", TRAIN,
          "train"),
    _onnx("onnx-pruned80", "pruning", _derived("pruned", 0.8), "80 % magnitude pruning + fine-tuning", TRAIN,
          "train"),
    _onnx("onnx-pruned80-int8", "pruning", _derived("pruned", 0.8, True), "80 % pruned, then dynamic int8", TRAIN,
          "train"),
    _onnx("onnx-student-small", "distillation", _derived("student", "small"), "distilled student, small preset",
          TRAIN, "train"),
    _onnx("onnx-student-tiny", "distillation", _derived("student", "tiny"), "distilled student, tiny preset", TRAIN,
          "train"),
    _onnx("onnx-student-small-int8", "distillation", _derived("student", "small", True),
          "distilled small student, then dynamic int8", TRAIN, "train"),
    _format("tflite-fp32", "tflite", "litert", formats.tflite_fp32, _LITERT, None),
    _format("tflite-fp16", "tflite", "litert", formats.tflite_quant("weight-only-fp16"), _AEQ, "tflite-fp32"),
    _format("tflite-int8-weight-only", "tflite", "litert", formats.tflite_quant("weight-only-int8"), _AEQ,
            "tflite-fp32"),
    _format("tflite-int8-dynamic", "tflite", "litert", formats.tflite_quant("dynamic-int8"), _AEQ, "tflite-fp32"),
    _format("tflite-int8-full", "tflite", "litert", formats.tflite_quant("full-int8"), _AEQ, "tflite-fp32"),
    _coreml("coreml-fp32", formats.coreml_fp32, _CT, None),
    _coreml("coreml-int8-linear", formats.coreml_compressed("linear-int8"), _CT, "coreml-fp32"),
    _coreml("coreml-palettize-6bit", formats.coreml_compressed("palettize-6bit"), (*_CT, "sklearn"), "coreml-fp32"),
    _coreml("coreml-palettize-4bit", formats.coreml_compressed("palettize-4bit"), (*_CT, "sklearn"), "coreml-fp32"),
    _format("mnn-fp32", "mnn", "mnn", formats.mnn_fp32, _MNN, None),
    _format("mnn-fp16", "mnn", "mnn", formats.mnn_weights(16), _MNN, "mnn-fp32"),
    _format("mnn-int8-weight", "mnn", "mnn", formats.mnn_weights(8), _MNN, "mnn-fp32"),
)


def all_methods() -> list[Method]:
    return list(METHODS)


def get_method(name: str) -> Method:
    for m in METHODS:
        if m.name == name:
            return m
    raise KeyError(f"unknown compression method {name!r}; known: {[m.name for m in METHODS]}")
