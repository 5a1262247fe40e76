"""Compression: dense/sparse split, quantization, pruning, distillation, and the compression-accuracy
benchmark. Not built yet: issue #8 fills this package; nothing here is used by the demo today."""
