"""Apply a weight-only plan (w4a16, w8a16) in the form chosen: the portable QDQ form, here, or onnxruntime's
MatMulNBits / GatherBlockQuantized (nbits.py).

The QDQ form: MatMul reads `DequantizeLinear(int4|uint4|int8|uint8 [K, N], axis=0, block_size)`, which
onnxruntime fuses into MatMulNBits (K need not be a multiple of the block). Gemm becomes MatMul (+ Add for
the bias) with alpha folded into the weight. A Gather table is stored one code per byte (standard Gather takes
no 4-bit type) and dequantized after the Gather: Gather(codes) and Gather(scales) -> DequantizeLinear(axis=-1),
so only the rows read are dequantized.

With `tables=WeightFormat.ORT` (what --format auto writes) the MatMuls keep the portable form and the Gather
tables become onnxruntime's GatherBlockQuantized: 4-bit codes, half the bytes of one code per byte, and the
same rows dequantized the same way.
"""

from __future__ import annotations

import numpy as np
from onnx import ModelProto

from qcli.core.config import WeightFormat
from qcli.core.errors import InternalError
from qcli.core.plan import QuantPlan
from qcli.passes import nbits
from qcli.passes.weight_only import Key, Rewriter, rewrite
from qcli.weights import BlockWeight


class QdqForm:
    def __init__(self) -> None:
        self.tables: dict[Key, list[str]] = {}

    def matmul(self, rw: Rewriter, a: str, w: BlockWeight, key: Key, out: str, name: str) -> None:
        # One set of initializers per reader, even for a weight read twice: onnxruntime fuses DequantizeLinear ->
        # MatMul into MatMulNBits only where the DequantizeLinear is its initializers' sole reader.
        ins = [rw.init("w", w.codes.T), rw.init("ws", w.params.scale.T)]
        if not w.symmetric:
            ins.append(rw.init("wz", w.params.zero_point.T))
        deq = rw.name("wd")
        rw.add("DequantizeLinear", ins, [deq], axis=0, block_size=w.block_size)
        rw.add("MatMul", [a, deq], [out], name=name)

    def gather(self, rw: Rewriter, ids: str, w: BlockWeight, key: Key, out: str, name: str) -> None:
        if key not in self.tables:
            byte = np.int8 if w.qtype.signed else np.uint8
            self.tables[key] = [rw.init("e", w.codes.astype(byte)), rw.init("es", w.params.scale)]
            if not w.symmetric:
                self.tables[key].append(rw.init("ez", w.params.zero_point.astype(byte)))
        rows = [rw.name("g") for _ in self.tables[key]]
        for i, (table, row) in enumerate(zip(self.tables[key], rows)):
            rw.add("Gather", [table, ids], [row], name=name if i == 0 else None, axis=0)
        rw.add("DequantizeLinear", rows, [out], axis=-1, block_size=w.block_size)

    def finish(self, model: ModelProto) -> None:
        return None


class QdqWithOrtTables(QdqForm):
    """MatMuls as DequantizeLinear -> MatMul (onnxruntime fuses them at session start); Gather tables as
    GatherBlockQuantized."""

    def __init__(self) -> None:
        super().__init__()
        self.ort = nbits.OrtForm(nbits.FP32)

    def gather(self, rw: Rewriter, ids: str, w: BlockWeight, key: Key, out: str, name: str) -> None:
        self.ort.gather(rw, ids, w, key, out, name)

    def finish(self, model: ModelProto) -> None:
        if self.ort.tables:
            self.ort.finish(model)


def apply_weight_only(
    model: ModelProto,
    plan: QuantPlan,
    inplace: bool = False,
    weight_format: WeightFormat | str | None = None,
    accuracy_level: int | None = None,
    quantized: dict[Key, BlockWeight] | None = None,
    tables: WeightFormat | str | None = None,
) -> ModelProto:
    """Write the plan's weights in `weight_format` (default: the plan's decision, else qdq). accuracy_level
    (ort form only; default: the plan's decision, else 0: fp32 compute) is MatMulNBits' attribute. `tables`
    (default: the plan's "table_format" decision, else the weight format) is the Gather tables' form under qdq.
    `quantized` (weight_only.quantize_plan) saves quantizing again when several forms are written."""
    decided = plan.decisions.get("weight_format", {}).get("value", WeightFormat.QDQ.value)
    fmt = WeightFormat(weight_format or decided)
    if fmt == WeightFormat.AUTO:
        raise InternalError("internal error: --format auto must be decided (formats.choose) before writing")
    if fmt == WeightFormat.QDQ:
        table_fmt = WeightFormat(tables or plan.decisions.get("table_format", {}).get("value", fmt.value))
        form = QdqWithOrtTables() if table_fmt == WeightFormat.ORT else QdqForm()
        return rewrite(model, plan, form, quantized, inplace)
    if accuracy_level is None:
        accuracy_level = plan.decisions.get("accuracy_level", {}).get("value", nbits.FP32)
    return rewrite(model, plan, nbits.OrtForm(accuracy_level), quantized, inplace)
