"""Small models built in code for the tests (no files, no downloads)."""

from __future__ import annotations

import numpy as np
import onnx
from checks import run
from onnx import TensorProto, helper, numpy_helper

from qcli.passes.channel_scale import ChannelsFirstAbsMax

_rng = np.random.default_rng(0)


def _w(*shape, scale=0.2):
    return (_rng.standard_normal(shape) * scale).astype(np.float32)


def _reseed(seed: int) -> None:
    """Each builder draws from its own seeded stream, so a model does not depend on test order."""
    global _rng
    _rng = np.random.default_rng(seed)


def _init(name, arr):
    return numpy_helper.from_array(arr, name)


def cnn(opset: int = 17, constants_as_nodes: bool = False, channels: int = 32):
    """Conv-BN-Relu x2, MaxPool, Conv-Relu, GlobalAveragePool, Flatten, Gemm: [N,3,16,16] -> [N,10]."""
    _reseed(0)
    c = channels
    inits = {
        "w1": _w(c, 3, 3, 3),
        "b1": _w(c),
        "w2": _w(c, c, 3, 3, scale=0.05),
        "w3": _w(c, c, 3, 3, scale=0.05),
        "b3": _w(c),
        "fc_w": _w(10, c),
        "fc_b": _w(10),
        "g": (1 + _w(c)).astype(np.float32),
        "be": _w(c),
        "mu": _w(c),
        "var": (np.abs(_w(c)) + 0.5),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "g", "be", "mu", "var"], ["bn1"], name="bn1"),
        helper.make_node("Relu", ["bn1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p2"], name="pool2", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p2", "w3", "b3"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("GlobalAveragePool", ["r3"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    initializers = []
    if constants_as_nodes:
        consts = [helper.make_node("Constant", [], [k], value=_init(k, v)) for k, v in inits.items()]
        nodes = consts + nodes
    else:
        initializers = [_init(k, v) for k, v in inits.items()]
    g = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializers,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 7 if opset < 15 else 8
    return m


def mlp(opset: int = 17, k: int = 64, hidden: int = 128):
    """MatMul-Add-Relu-MatMul-Add on [N, T, k] token inputs (dynamic N and T) -> [N, T, 10]."""
    _reseed(1)
    inits = [
        _init("w1", _w(k, hidden, scale=0.1)),
        _init("b1", _w(hidden)),
        _init("w2", _w(hidden, 10, scale=0.1)),
        _init("b2", _w(10)),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"], name="mm1"),
        helper.make_node("Add", ["m1", "b1"], ["a1"], name="add1"),
        helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "w2"], ["m2"], name="mm2"),
        helper.make_node("Add", ["m2", "b2"], ["y"], name="add2"),
    ]
    g = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T", 10])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def write_batches(folder, shapes, seed=1):
    """One .npy per batch for single-input models."""
    folder.mkdir(parents=True, exist_ok=True)
    r = np.random.default_rng(seed)
    for i, s in enumerate(shapes):
        np.save(folder / f"b{i:02d}.npy", r.standard_normal(s).astype(np.float32))
    return folder


def vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def model_of(nodes, inputs, outputs, inits: dict, opset: int = 17):
    """A model from nodes, value infos and a {name: array} of initializers."""
    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def save_with_data(tmp_path, model, shape, n_calib=4, n_eval=3):
    """The model saved as m.onnx, calibration batches in c/, separate evaluation batches in e/."""
    import onnx

    onnx.save(model, tmp_path / "m.onnx")
    write_batches(tmp_path / "c", [shape] * n_calib, seed=1)
    write_batches(tmp_path / "e", [shape] * n_eval, seed=7)
    return tmp_path / "m.onnx"


def quantize_files(tmp_path, config, out="q.onnx"):
    """quantize() on the files save_with_data wrote."""
    from qcli import quantize

    return quantize(tmp_path / "m.onnx", config, calib=tmp_path / "c", out=tmp_path / out, latency_runs=2)


def outlier_chain():
    """x -> 4 MatMul(+Relu) layers; mm2 writes one channel 1000x the others (and mm3 reads it 1000x
    smaller, so the float output is ordinary). One 8-bit range for h2 then crushes its other 63 channels:
    mm3's output is ruined, while h2 itself still measures ~35 dB per tensor (the outlier dominates)."""
    rng = np.random.default_rng(5)
    w = {
        f"w{i}": (rng.standard_normal((64, n)) / 8).astype(np.float32) for i, n in ((1, 64), (2, 64), (3, 64), (4, 10))
    }
    w["w2"][:, 5] *= 1000
    w["w3"][5, :] /= 1000
    nodes, x = [], "x"
    for i in range(1, 5):
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"mm{i}"))
        if i < 4:
            nodes.append(helper.make_node("Relu", [f"m{i}"], [f"h{i}"], name=f"relu{i}"))
            x = f"h{i}"
    return model_of(nodes, [vi("x", ["N", 64])], [vi("m4", ["N", 10])], w)


def bn_dwsep(seed: int = 4, size: int = 16) -> onnx.ModelProto:
    """conv3x3 -> dw -> pw -> dw -> pw, each followed by BatchNormalization and Relu, then global average pool
    and Gemm. BatchNorm statistics are measured on data (as training leaves them), then some channels get a
    running variance 10^-2..10^-3.5 of the measured one and gamma is log-normal: folded, a few channels of
    each tensor reach tens of times the median channel's range."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((16, 3, size, size)).astype(np.float32)
    nodes, inits, name, cin = [], {}, "x", 3
    for i, (kind, cout) in enumerate([("conv", 16), ("dw", 16), ("pw", 32), ("dw", 32), ("pw", 32)]):
        k, group = (1, 1) if kind == "pw" else (3, cout if kind == "dw" else 1)
        w = rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2 / (cin // group * k * k))
        conv = helper.make_node("Conv", ["in", "w"], ["y"], group=group, pads=[k // 2] * 4)
        one = helper.make_graph(
            [conv],
            "c",
            [vi("in", list(x.shape))],
            [vi("y", None)],
            [numpy_helper.from_array(w.astype(np.float32), "w")],
        )
        y = run(helper.make_model(one, opset_imports=[helper.make_opsetid("", 17)]), {"in": x})[0]
        factor = np.exp(rng.normal(0, 1.0, cout))
        tiny = rng.random(cout) < 0.1
        factor[tiny] = 10 ** -rng.uniform(2, 3.5, tiny.sum())
        mean, var = y.mean(axis=(0, 2, 3)), y.var(axis=(0, 2, 3)) * factor
        gamma, beta = np.exp(rng.normal(0, 0.5, cout)), rng.normal(0.2, 0.5, cout)
        x = np.maximum(
            (y - mean[:, None, None]) * (gamma / np.sqrt(var + 1e-5))[:, None, None] + beta[:, None, None], 0
        )
        x = x.astype(np.float32)
        inits.update({f"w{i}": w, f"g{i}": gamma, f"be{i}": beta, f"mu{i}": mean, f"var{i}": var})
        nodes += [
            helper.make_node("Conv", [name, f"w{i}"], [f"c{i}"], name=f"{kind}{i}", group=group, pads=[k // 2] * 4),
            helper.make_node("BatchNormalization", [f"c{i}", f"g{i}", f"be{i}", f"mu{i}", f"var{i}"], [f"bn{i}"]),
            helper.make_node("Relu", [f"bn{i}"], [f"r{i}"]),
        ]
        name, cin = f"r{i}", cout
    inits["fc_w"], inits["fc_b"] = rng.standard_normal((10, cin)) * np.sqrt(2 / cin), np.zeros(10)
    nodes += [
        helper.make_node("GlobalAveragePool", [name], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["y"], name="fc", transB=1),
    ]
    inits = {k: np.asarray(v, np.float32) for k, v in inits.items()}
    g = helper.make_graph(
        nodes,
        "dwsep",
        [vi("x", ["N", 3, size, size])],
        [vi("y", ["N", 10])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def crnn(hidden: int = 96, cell: str = "LSTM", steps: int = 20, seed: int = 0):
    """A CNN+LSTM sequence reader in miniature (a captcha or OCR line reader's shape): conv 3x3 (1 -> 64) ->
    Relu -> mean over the height -> [T, N, 64] -> LSTM (or GRU) -> per-step MatMul to 11 classes."""
    r = np.random.default_rng(seed)
    gates = {"LSTM": 4, "GRU": 3}[cell]
    inits = {
        "w1": (r.standard_normal((64, 1, 3, 3)) * 0.3).astype(np.float32),
        "W": (r.standard_normal((1, gates * hidden, 64)) * 0.1).astype(np.float32),
        "R": (r.standard_normal((1, gates * hidden, hidden)) * 0.1).astype(np.float32),
        "B": (r.standard_normal((1, 2 * gates * hidden)) * 0.1).astype(np.float32),
        "wo": (r.standard_normal((hidden, 11)) * 0.2).astype(np.float32),
        "ax1": np.array([1], np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("ReduceMean", ["r1"], ["m1"], name="pool", axes=[2], keepdims=0),
        helper.make_node("Transpose", ["m1"], ["seq"], name="tr", perm=[2, 0, 1]),
        helper.make_node(cell, ["seq", "W", "R", "B"], ["Y", "Yh"], name="rnn", hidden_size=hidden),
        helper.make_node("Squeeze", ["Y", "ax1"], ["y2"], name="sq"),
        helper.make_node("MatMul", ["y2", "wo"], ["logits"], name="head"),
    ]
    return model_of(nodes, [vi("x", ["N", 1, 16, steps])], [vi("logits", [steps, "N", 11])], inits)


def branchy(const_weights: bool = True, seed: int = 0):
    """An If on the sign of the input's mean, a small convnet in each branch (as Silero VAD keeps its whole
    network in 8k/16k branches): then: conv 3x3 (3 -> 16) -> Relu -> conv 3x3 (16 -> 8) with its weights in
    Constant nodes inside the branch (const_weights) or in outer initializers; else: another pair of convs whose
    weights are outer initializers, read through Unsqueeze of a 3-D copy (as Silero's op15 export feeds its
    LSTM), so constant folding must run inside the branch."""
    r = np.random.default_rng(seed)
    w = {
        k: (r.standard_normal(s) * 0.3).astype(np.float32)
        for k, s in {"wa": (16, 3, 3, 3), "wb": (8, 16, 3, 3), "wc": (16, 3, 3, 3), "wd": (8, 16, 3, 3)}.items()
    }
    then_nodes = []
    outer = {"wc3": w["wc"].reshape(16, 3, 9), "wd": w["wd"], "ax": np.array([3], np.int64)}
    if const_weights:
        then_nodes += [
            helper.make_node("Constant", [], [k], name=f"const_{k}", value=numpy_helper.from_array(w[k], k))
            for k in ("wa", "wb")
        ]
    else:
        outer |= {"wa": w["wa"], "wb": w["wb"]}
    then_nodes += [
        helper.make_node("Conv", ["x", "wa"], ["ta"], name="then_conv1", pads=[1] * 4),
        helper.make_node("Relu", ["ta"], ["tr"], name="then_relu"),
        helper.make_node("Conv", ["tr", "wb"], ["ty"], name="then_conv2", pads=[1] * 4),
    ]
    else_nodes = [
        helper.make_node("Reshape", ["wc3", "wc_shape"], ["wc"], name="else_wc"),
        helper.make_node("Conv", ["x", "wc"], ["ea"], name="else_conv1", pads=[1] * 4),
        helper.make_node("Relu", ["ea"], ["er"], name="else_relu"),
        helper.make_node("Conv", ["er", "wd"], ["ey"], name="else_conv2", pads=[1] * 4),
    ]
    outer["wc_shape"] = np.array([16, 3, 3, 3], np.int64)
    then_g = helper.make_graph(then_nodes, "then", [], [vi("ty", None)])
    else_g = helper.make_graph(else_nodes, "else", [], [vi("ey", None)])
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["mean"], name="mean", keepdims=0),
        helper.make_node("Greater", ["mean", "zero"], ["cond"], name="positive"),
        helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_g, else_branch=else_g),
    ]
    outer["zero"] = np.array(0.0, np.float32)
    del outer["ax"]
    return model_of(nodes, [vi("x", ["N", 3, 8, 8])], [vi("y", ["N", 8, 8, 8])], outer)


def looped(trips: int = 4, growing: bool = False, seed: int = 0):
    """A stem conv, then a Loop refining its output `trips` times: x = Relu(Conv(x, W)) + x, W an outer
    initializer (an iterative refinement head). growing: the loop also carries a value that doubles in length
    every iteration (a scan output cannot collect it)."""
    r = np.random.default_rng(seed)
    body_nodes = [
        helper.make_node("Identity", ["cond_in"], ["cond_out"], name="b_cond"),
        helper.make_node("Conv", ["x_in", "W"], ["c"], name="b_conv", pads=[1] * 4),
        helper.make_node("Relu", ["c"], ["rc"], name="b_relu"),
        helper.make_node("Add", ["rc", "x_in"], ["x_out"], name="b_add"),
    ]
    ins = [vi("i", [], TensorProto.INT64), vi("cond_in", [], TensorProto.BOOL), vi("x_in", ["N", 16, 12, 12])]
    outs = [vi("cond_out", [], TensorProto.BOOL), vi("x_out", ["N", 16, 12, 12])]
    loop_in, loop_out = ["trips", "true", "x0"], ["y"]
    if growing:
        body_nodes.append(helper.make_node("Concat", ["g_in", "g_in"], ["g_out"], name="b_grow", axis=0))
        ins.append(vi("g_in", ["L"]))
        outs.append(vi("g_out", ["L2"]))
        loop_in.append("g0")
        loop_out.append("g")
    body = helper.make_graph(body_nodes, "body", ins, outs)
    inits = {
        "w0": (r.standard_normal((16, 3, 3, 3)) * 0.3).astype(np.float32),
        "W": (r.standard_normal((16, 16, 3, 3)) * 0.03).astype(np.float32),  # the refinement stays bounded
        "trips": np.array(trips, np.int64),
        "true": np.array(True),
        "g0": np.ones(2, np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["img", "w0"], ["x0"], name="stem", pads=[1] * 4),
        helper.make_node("Loop", loop_in, loop_out, name="refine", body=body),
    ]
    outputs = [vi("y", ["N", 16, 12, 12])] + ([vi("g", ["L"])] if growing else [])
    if not growing:
        del inits["g0"]
    return model_of(nodes, [vi("img", ["N", 3, 12, 12])], outputs, inits)


def scanned(hidden: int = 64, steps: int = 20, seed: int = 0):
    """A Scan over [steps, 8, hidden]: s = Tanh(x_t W + s U), every step's s a scan output (a plain RNN)."""
    r = np.random.default_rng(seed)
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["x_t", "W"], ["a"], name="b_mx"),
            helper.make_node("MatMul", ["s_in", "U"], ["b"], name="b_ms"),
            helper.make_node("Add", ["a", "b"], ["c"], name="b_add"),
            helper.make_node("Tanh", ["c"], ["s_out"], name="b_tanh"),
            helper.make_node("Identity", ["s_out"], ["y_t"], name="b_y"),
        ],
        "body",
        [vi("s_in", [8, hidden]), vi("x_t", [8, hidden])],
        [vi("s_out", [8, hidden]), vi("y_t", [8, hidden])],
    )
    inits = {
        "W": (r.standard_normal((hidden, hidden)) * 0.15).astype(np.float32),
        "U": (r.standard_normal((hidden, hidden)) * 0.1).astype(np.float32),
    }
    nodes = [helper.make_node("Scan", ["s0", "seq"], ["s_final", "ys"], name="rnn", body=body, num_scan_inputs=1)]
    ins = [vi("s0", [8, hidden]), vi("seq", [steps, 8, hidden])]
    return model_of(nodes, ins, [vi("s_final", [8, hidden]), vi("ys", [steps, 8, hidden])], inits)


def hswish_net(seed: int = 0) -> onnx.ModelProto:
    """conv 3x3 (3 -> 16) -> HardSwish -> depthwise 3x3 -> HardSwish -> pointwise (16 -> 8): the first conv's
    channel 5 carries a 40x gain (a folded BatchNorm), so HardSwish's output has one channel far wider than
    the others, read by a depthwise conv, and the depthwise's output by a dense one."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((16, 3, 3, 3)) * 0.3).astype(np.float32)
    w1[5] *= 40
    w2 = (rng.standard_normal((16, 1, 3, 3)) * 0.5).astype(np.float32)
    w2[7] *= 30
    w3 = (rng.standard_normal((8, 16, 1, 1)) * 0.3).astype(np.float32)
    b1 = (rng.standard_normal(16) * 0.5).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4),
        helper.make_node("HardSwish", ["c1"], ["h1"], name="hs1"),
        helper.make_node("Conv", ["h1", "w2"], ["c2"], name="dw", pads=[1] * 4, group=16),
        helper.make_node("HardSwish", ["c2"], ["h2"], name="hs2"),
        helper.make_node("Conv", ["h2", "w3"], ["y"], name="pw"),
    ]
    return model_of(
        nodes, [vi("x", ["N", 3, 12, 12])], [vi("y", ["N", 8, 12, 12])], {"w1": w1, "b1": b1, "w2": w2, "w3": w3}
    )


def channel_absmax(m: onnx.ModelProto, x: np.ndarray, names) -> dict[str, np.ndarray]:
    """Per-channel max|t| of each tensor named, on x."""
    out = {}
    for t in names:
        probe = onnx.ModelProto()
        probe.CopyFrom(m)
        probe.graph.output.append(vi(t, None))
        obs = ChannelsFirstAbsMax()
        obs.update(run(probe, {"x": x})[-1])
        out[t] = obs.value()
    return out
