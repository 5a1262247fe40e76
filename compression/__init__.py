"""Compression: dense/sparse split, quantization, pruning, distillation, and the compression-accuracy benchmark.

- ``split``: the item-ID table stays in the cloud (rows travel with the page); the report of what that saves.
- ``quantize``: onnxruntime dynamic int8, static int8 calibrated on logged lists, fp16.
- ``formats``: the LiteRT (ai-edge-quantizer), Core ML (``ct.optimize.coreml``) and MNN builders.
- ``prune`` / ``distill``: magnitude pruning with fine-tuning; a smaller student distilled from the reranker.
- ``embedding_rows``: int8 + per-row scale rows on the wire: accuracy and page bytes.
- ``methods``: one registry of every method (name, format, family, build, runtime, same-format fp32 reference)
  and the one ``Context`` they build from; ``benchmark`` measures them all offline (``edge-rerank compress
  --benchmark`` adds the simulator's QV_CTR column one floor up, in ``edge_rerank.compression_ab``);
  ``presets`` pick one with an accuracy budget each (``edge-rerank compress --preset NAME``).
- Nothing here imports the simulator or the CLI (tests/test_imports.py).
"""
