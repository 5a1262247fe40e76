"""The compression methods the benchmark and the presets run, one registry for all of them.

A :class:`Method` builds one model file from the shared :class:`Context` (the trained fp32 model, its
training and held-out lists, and lazily built intermediate files: the fp32 ONNX / TFLite / Core ML exports and
the pruned or distilled torch models, each made once per run) and scores input lists with it in its runtime.
Methods whose toolchain is not installed report themselves unavailable (``Method.available``) instead of
failing the run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FAMILIES = ("reference", "quantization", "pruning", "distillation")


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
    missing: dict[str, str] = field(default_factory=dict)  # compression.formats' interface: format -> why absent

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
        from edge_rerank.cloud.training.model import n_params

        student = self.reports.get(method, {}).get("student_params")
        return int(student) if student else n_params(self.model)

    def onnx_of(self, key: str, model) -> Path:
        from edge_rerank.converters.onnx.convert import export_onnx

        return self.once(f"onnx:{key}", lambda: export_onnx(model, self.example, self.out / "fp32" / f"{key}.onnx"))

    @property
    def onnx_fp32(self) -> Path:
        return Path(self.onnx_fp32_file) if self.onnx_fp32_file else self.onnx_of("model", self.model)

    @property
    def tflite_fp32(self) -> Path:
        from edge_rerank.compression.formats import export_fp32

        return self.once("tflite", lambda: export_fp32("tflite", self.model, self.example, self.out))

    @property
    def mlpackage_fp32(self) -> Path:
        from edge_rerank.compression.formats import export_fp32

        return self.once("coreml", lambda: export_fp32("coreml", self.model, self.example, self.out))

    @property
    def fit_and_tune(self) -> tuple[object, object]:
        """(fit, tune): pruning's fine-tuning and distillation train on `fit` and pick their best epoch on `tune`
        — the model's own training and validation lists when `tune` was given (the rule training followed), else
        the training lists split by session — so the test lists every method is measured on stay unseen."""
        from edge_rerank.cloud.training.data import split_by_session

        if self.train is None:
            raise ValueError("this method needs training lists (fine-tuning / distillation), none were given")
        if self.tune is not None:
            return self.train, self.tune
        return self.once("fit_and_tune", lambda: split_by_session(self.train, valid_share=0.15, seed=1))

    def pruned(self, sparsity: float):
        from edge_rerank.cloud.training.train import TrainConfig
        from edge_rerank.compression.prune import magnitude_prune

        fit, tune = self.fit_and_tune
        return self.once(f"pruned:{sparsity}", lambda: magnitude_prune(
            self.model, fit, tune, sparsity=sparsity, finetune_epochs=self.finetune_epochs,
            tcfg=TrainConfig(epochs=self.finetune_epochs), progress=self.progress))

    def student(self, preset: str):
        from edge_rerank.cloud.training.train import TrainConfig
        from edge_rerank.compression.distill import STUDENT_PRESETS, distill

        fit, tune = self.fit_and_tune
        return self.once(f"student:{preset}", lambda: distill(
            self.model, fit, tune, student_cfg=STUDENT_PRESETS[preset],
            tcfg=TrainConfig(epochs=self.distill_epochs), compare_label_only=False, progress=self.progress))


@dataclass(frozen=True)
class Method:
    name: str
    format: str  # onnx | tflite | coreml | mnn
    family: str  # one of FAMILIES
    runtime: str  # device_sdk backend that runs the file (the simulator arm uses it too)
    build: Callable[[Context, Path], Path]  # (context, output directory) -> model file
    description: str = ""
    requires: tuple[str, ...] = ()  # importable modules the method needs
    # how scores are produced when not by `runtime` (Core ML off macOS: the MIL program in numpy)
    scorer: Callable[[Path], Callable[[dict[str, np.ndarray]], np.ndarray]] | None = None
    evaluated_by: str = ""
    simulate: bool = True  # run it as a simulator arm (needs a runtime that runs here at simulator speed)
    size: Callable[[Path], int] | None = None  # shipped bytes when not the plain file size (zipped packages)

    def available(self) -> str | None:
        """None when it can run here, else why not."""
        import importlib.util

        if self.format not in ("onnx", "tflite", "coreml", "mnn"):
            return f"unknown format {self.format!r}"
        for mod in self.requires:
            if importlib.util.find_spec(mod) is None:
                return f"needs the Python module {mod!r} (see the extras in pyproject.toml)"
        return None

    def runner(self, path: Path) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        if self.scorer is not None:
            return self.scorer(path)
        from edge_rerank.device_sdk import backends

        return backends.create(self.runtime, path).run


def _onnx(name: str, family: str, build: Callable[[Context, Path], Path], description: str,
          requires: tuple[str, ...] = ("onnxruntime", "onnx")) -> Method:
    return Method(name, "onnx", family, "onnxruntime", build, description, requires)


def _dynamic(weight_type: str, reduce_range: bool = False) -> Callable[[Context, Path], Path]:
    def build(ctx: Context, out: Path) -> Path:
        from edge_rerank.compression.quantize import dynamic_int8

        return dynamic_int8(ctx.onnx_fp32, out / "model.onnx", weight_type=weight_type, reduce_range=reduce_range)

    return build


def _static(ctx: Context, out: Path) -> Path:
    from edge_rerank.compression.quantize import static_int8

    return static_int8(ctx.onnx_fp32, out / "model.onnx", ctx.calibration, n_lists=ctx.calibration_lists)


def _fp16(ctx: Context, out: Path) -> Path:
    from edge_rerank.compression.quantize import fp16

    return fp16(ctx.onnx_fp32, out / "model.onnx")


def _derived(kind: str, arg, then_int8: bool = False) -> Callable[[Context, Path], Path]:
    """A model trained from the reference (``pruned`` at sparsity `arg`, or a ``student`` of preset `arg`),
    exported to ONNX, optionally then dynamic int8; what training measured goes to ``ctx.reports``."""

    def build(ctx: Context, out: Path) -> Path:
        model, ctx.reports[out.name] = getattr(ctx, kind)(arg)
        path = ctx.onnx_of(f"{kind}-{arg}", model)
        if not then_int8:
            return path
        from edge_rerank.compression.quantize import dynamic_int8

        return dynamic_int8(path, out / "model.onnx")

    return build


def _copy_fp32(ctx: Context, out: Path) -> Path:
    return ctx.onnx_fp32


TRAIN = ("onnxruntime", "onnx", "torch")
ONNX_METHODS = [
    _onnx("onnx-fp32", "reference", _copy_fp32, "the exported fp32 model (the reference)"),
    _onnx("onnx-fp16", "quantization", _fp16, "float16 weights and compute, float32 inputs/outputs"),
    _onnx("onnx-int8-dynamic-quint8", "quantization", _dynamic("QUInt8"), "dynamic int8, QUInt8 weights"),
    _onnx("onnx-int8-dynamic-qint8", "quantization", _dynamic("QInt8"), "dynamic int8, QInt8 weights"),
    _onnx("onnx-int8-dynamic-qint8-rr", "quantization", _dynamic("QInt8", True),
          "dynamic int8, QInt8 weights, reduce_range (7-bit)"),
    _onnx("onnx-int8-static", "quantization", _static,
          "static int8 (QDQ, per-channel weights), MatMul/Gemm activations calibrated on logged training lists"),
    _onnx("onnx-pruned50", "pruning", _derived("pruned", 0.5), "50 % magnitude pruning + fine-tuning", TRAIN),
    _onnx("onnx-pruned80", "pruning", _derived("pruned", 0.8), "80 % magnitude pruning + fine-tuning", TRAIN),
    _onnx("onnx-pruned80-int8", "pruning", _derived("pruned", 0.8, True), "80 % pruned, then dynamic int8", TRAIN),
    _onnx("onnx-student-small", "distillation", _derived("student", "small"), "distilled student, small preset", TRAIN),
    _onnx("onnx-student-tiny", "distillation", _derived("student", "tiny"), "distilled student, tiny preset", TRAIN),
    _onnx("onnx-student-small-int8", "distillation", _derived("student", "small", True),
          "distilled small student, then dynamic int8", TRAIN),
]


def _from_format(fm) -> Method:
    """A ``compression.formats.FormatMethod`` (LiteRT / Core ML / MNN) as a benchmark method; the Context here
    offers the FormatContext interface (fp32 files, calibration, ``missing``)."""
    import sys

    def scorer(path: Path, fm=fm) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        return lambda x: fm.scores(path, x)

    off_runtime = fm.format == "coreml" and sys.platform != "darwin"  # the MIL program in numpy, not Core ML
    return Method(fm.name, fm.format, "reference" if fm.reference is None else "quantization", fm.runtime,
                  fm.build, f"{fm.format}: {fm.name.split('-', 1)[1]}", fm.modules,
                  scorer=scorer if off_runtime else None, evaluated_by=fm.evaluated_by, simulate=not off_runtime,
                  size=fm.size_bytes)


def all_methods() -> list[Method]:
    """The ONNX methods, then LiteRT / Core ML / MNN (``compression.formats``)."""
    from edge_rerank.compression.formats import METHODS

    return list(ONNX_METHODS) + [_from_format(fm) for fm in METHODS]


def get_method(name: str) -> Method:
    for m in all_methods():
        if m.name == name:
            return m
    raise KeyError(f"unknown compression method {name!r}; known: {[m.name for m in all_methods()]}")
