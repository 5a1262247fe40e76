"""Embedding-row quantization for the network payload: each item's sparse ID embedding row travels with the
page as fp16 (the default) or as int8 with a per-row scale (``device_sdk.contracts.PackedEmbedding``). This
module measures what int8 rows cost in ranking quality and save in page bytes, through the real codecs: the
rows are packed and unpacked exactly as the wire does (``PackedEmbedding.pack/unpack``), and the page sizes
come from the cloud's own page encoder (``cloud.page_codec.encode_items``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from edge_rerank.cloud.page_codec import encode_items
from edge_rerank.cloud.training.ranking_metrics import ndcg_at_k
from edge_rerank.converters.validate import fidelity
from edge_rerank.device_sdk.contracts import DEFAULT_PAGE_SIZE, EmbeddingEncoding, PackedEmbedding

EMB_INPUTS = ("cand_emb", "seq_emb")


def roundtrip_rows(emb: np.ndarray, encoding: EmbeddingEncoding) -> np.ndarray:
    """Every row of `emb` [..., dim] packed and unpacked as on the wire (all-zero padding rows stay zero)."""
    flat = np.asarray(emb, np.float32).reshape(-1, emb.shape[-1])
    out = np.stack([PackedEmbedding.pack(r, encoding).unpack(flat.shape[1]) for r in flat]) if len(flat) else flat
    return out.reshape(emb.shape)


def with_wire_rows(inputs: dict[str, np.ndarray], encoding: EmbeddingEncoding) -> dict[str, np.ndarray]:
    """The model inputs with every ID embedding row (candidates and feedback events) as the device would
    decode it after the wire's `encoding`."""
    return {k: (roundtrip_rows(v, encoding) if k in EMB_INPUTS else v) for k, v in inputs.items()}


@dataclass
class PageBytes:
    encoding: str
    page_bytes: int  # one page's serialized items (protobuf)
    embedding_bytes_per_item: int  # row payload + scale


def page_bytes(inputs: dict[str, np.ndarray], n_items: int = DEFAULT_PAGE_SIZE) -> list[PageBytes]:
    """Serialized size of one page of `n_items` real candidates (rows taken from `inputs`) in each encoding."""
    real = inputs["cand_mask"] > 0
    emb = inputs["cand_emb"][real][:n_items].astype(np.float32)
    dense = inputs["cand_dense"][real][:n_items].astype(np.float32)
    n = len(emb)
    rng = np.random.default_rng(0)
    common = dict(item_id=np.arange(100_000, 100_000 + n), start=0, scores=rng.standard_normal(n), dense=dense,
                  found=np.ones(n, bool), category=inputs["cand_cat"][real][:n],
                  brand=inputs["cand_brand"][real][:n], price_level=inputs["cand_price"][real][:n],
                  lat=rng.uniform(30, 31, n), lon=rng.uniform(120, 121, n))
    out = []
    for enc in (EmbeddingEncoding.FP16, EmbeddingEncoding.INT8):
        body = encode_items(emb=emb, encoding=enc, **common)
        row = PackedEmbedding.pack(emb[0], enc)
        scale = 4 if enc == EmbeddingEncoding.INT8 else 0  # proto `float scale`, unused by fp16
        out.append(PageBytes(enc.name.lower(), len(body), len(row.data) + scale))
    return out


@dataclass
class RowQuantReport:
    max_abs_row_error: float  # int8 vs fp16 rows, over real rows
    max_abs_score_diff: float
    mean_kendall_tau: float
    min_kendall_tau: float
    ndcg10_fp16: float
    ndcg10_int8: float
    pages: list[PageBytes]

    def to_dict(self) -> dict:
        return asdict(self)


def row_quant_report(score, sub) -> RowQuantReport:
    """`score(inputs) -> [B, N]` (the fp32 model in any runtime); `sub`: held-out Samples. The logged rows
    already crossed the wire as fp16 (the default), so fp16 is the baseline and int8 is applied to them."""
    base = score(sub.inputs)
    q_inputs = with_wire_rows(sub.inputs, EmbeddingEncoding.INT8)
    q = score(q_inputs)
    max_diff, min_tau, mean_tau = fidelity(q, base, sub.mask)
    row_err = max(float(np.abs(q_inputs[k] - sub.inputs[k]).max()) for k in EMB_INPUTS)
    return RowQuantReport(
        max_abs_row_error=row_err, max_abs_score_diff=max_diff, mean_kendall_tau=mean_tau,
        min_kendall_tau=min_tau,
        ndcg10_fp16=float(np.nanmean(ndcg_at_k(base, sub.labels, sub.mask, 10))),
        ndcg10_int8=float(np.nanmean(ndcg_at_k(q, sub.labels, sub.mask, 10))), pages=page_bytes(sub.inputs))
