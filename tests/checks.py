"""Independent oracles the tests share: op counts, onnxruntime's fused graph, float and exact-QDQ outputs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper
from onnx.reference import ReferenceEvaluator

# Substitute /proc/cpuinfo texts (trimmed) for the two kinds of x86 CPU the suite must pass on.
_FLAGS = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c bmi1 bmi2"
CPUINFO = {
    "vnni": f"processor\t: 0\nmodel name\t: Test Xeon VNNI\nflags\t\t: {_FLAGS} avx512f avx512bw avx512_vnni\n",
    "avx2": f"processor\t: 0\nmodel name\t: Test EPYC AVX2\nflags\t\t: {_FLAGS}\n",
}


def ops(path) -> dict[str, int]:
    """Op-type counts of a model file's main graph."""
    return dict(Counter(n.op_type for n in onnx.load(str(path)).graph.node))


def fused_ops(path, tmp_path: Path) -> dict[str, int]:
    """Op counts after onnxruntime's own graph optimizations: shows which integer kernels run."""
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / f"ort_optimized_{Path(path).stem}.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return ops(so.optimized_model_filepath)


def run(path_or_model, feed: dict, exact_qdq: bool = False) -> list[np.ndarray]:
    """onnxruntime outputs. exact_qdq=True turns graph optimizations off, so Q/DQ run as written (the exact
    quantized math, no fused integer kernels: independent of the CPU's kernels)."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if exact_qdq:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = path_or_model.SerializeToString() if isinstance(path_or_model, onnx.ModelProto) else str(path_or_model)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"]).run(None, feed)


def sqnr(ref: np.ndarray, approx: np.ndarray) -> float:
    """SQNR in dB computed here, independently of qcli."""
    ref = np.asarray(ref, np.float64)
    noise = np.sum((ref - np.asarray(approx, np.float64)) ** 2)
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(ref**2) / noise))


def sqnr_on(ref_path, cand_path, feeds: list[dict], exact_qdq: bool = False) -> float:
    """Worst-output SQNR of cand against ref over all feeds, from onnxruntime outputs."""
    refs = [run(ref_path, f) for f in feeds]
    cands = [run(cand_path, f, exact_qdq) for f in feeds]
    worst = float("inf")
    for k in range(len(refs[0])):
        r = np.concatenate([o[k].ravel() for o in refs])
        c = np.concatenate([o[k].ravel() for o in cands])
        worst = min(worst, sqnr(r, c))
    return worst


def batches_of(folder: Path, name: str = "x") -> list[dict]:
    """The feeds of a folder of single-input .npy batches."""
    return [{name: np.load(p)} for p in sorted(Path(folder).glob("*.npy"))]


def attr(node, name, default=None):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def written_dequantized(q: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every DequantizeLinear output of q's main graph, evaluated by onnx.reference on its initializers."""
    inits = {t.name: t for t in q.graph.initializer}
    out = {}
    for n in q.graph.node:
        if n.op_type != "DequantizeLinear":
            continue
        g = helper.make_graph(
            [n], "dq", [], [helper.make_value_info(n.output[0], helper.TypeProto())], [inits[i] for i in n.input if i]
        )
        out[n.output[0]] = ReferenceEvaluator(helper.make_model(g, opset_imports=q.opset_import)).run(None, {})[0]
    return out
