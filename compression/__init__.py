"""Compression: dense/sparse split, quantization, pruning, distillation, and the compression-accuracy benchmark.

Started (issue #8): ``quantize.dynamic_int8`` (onnxruntime dynamic int8) and ``benchmark.run_benchmark``
(``edge-rerank compress --benchmark``). Not built yet: static int8, fp16, pruning, distillation, LiteRT / Core ML /
MNN quantization, presets with accuracy budgets, the Pareto plot. The dense/sparse split already holds by design:
item-ID embedding rows come from the cloud with the page and are not in the device model.
"""
