"""Dense/sparse split: what keeping the item-ID embedding table out of the device model saves.

The device reranker never holds an item-ID table: the cloud sends each candidate's ID embedding row with the
page (``PageItem.id_embedding``, fp16 or int8 + scale on the wire), and the model only holds a projection
(``id_proj``: emb_dim -> d_model). This module makes that split measurable: the parameter share that moved to
the cloud and the model size with and without it, for the catalog at hand and for a production-sized one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class SplitReport:
    n_items: int  # catalog rows the in-model table would need
    emb_dim: int
    device_params: int  # the shipped model (dense part only)
    table_params: int  # the item-ID table that stays in the cloud
    share_moved: float  # table / (table + device), the parameter share moved out of the model
    device_kb_fp32: float
    monolithic_kb_fp32: float  # one model holding the table as well (what would have shipped)
    part_params: dict[str, int]  # device parameters by top-level module

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        return [f"catalog {self.n_items:,} items x {self.emb_dim}: item-ID table {self.table_params:,} parameters "
                f"({self.monolithic_kb_fp32 - self.device_kb_fp32:,.0f} KB fp32) served by the cloud with the page; "
                f"device model {self.device_params:,} parameters ({self.device_kb_fp32:,.0f} KB fp32); "
                f"{100 * self.share_moved:.2f} % of the parameters moved out of the model"]


def split_report(model, n_items: int) -> SplitReport:
    """`model`: a DeviceReranker (torch); `n_items`: the catalog size an in-model ID table would need."""
    parts: dict[str, int] = {}
    for name, p in model.named_parameters():
        top = name.split(".")[0]
        parts[top] = parts.get(top, 0) + p.numel()
    device = sum(parts.values())
    emb_dim = model.fcfg.emb_dim
    table = int(n_items) * emb_dim
    return SplitReport(n_items=int(n_items), emb_dim=emb_dim, device_params=device, table_params=table,
                       share_moved=table / (table + device), device_kb_fp32=device * 4 / 1024,
                       monolithic_kb_fp32=(device + table) * 4 / 1024, part_params=parts)
