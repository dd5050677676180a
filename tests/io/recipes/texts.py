"""A tokenizer built with the `tokenizers` library and a tiny token encoder, for the text recipe tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WORDS = "the a cat dog sat on mat ran fast slow red blue big small and with under over sun moon".split()
SENTENCES = [
    " ".join(np.random.default_rng(i).choice(WORDS, size=3 + i % 9)) + (" zebra" if i % 5 == 0 else "")
    for i in range(30)
]


def write_tokenizer(path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3} | {w: i + 4 for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.enable_padding(length=64)  # a fixed padding length written in the file: ignored for dynamic axes
    tok.save(str(path))
    return path


def encoder(folder: Path, seq=("N", "S"), types: bool = False) -> Path:
    """input_ids, attention_mask (and token_type_ids) -> Gather -> x mask -> MatMul -> [N, S, 16]."""
    rng = np.random.default_rng(0)
    inits = {
        "emb": rng.standard_normal((len(WORDS) + 4, 16)).astype(np.float32),
        "w": (rng.standard_normal((16, 16)) * 0.3).astype(np.float32),
        "axes": np.array([-1], np.int64),
    }
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["h"]),
        helper.make_node("Unsqueeze", ["attention_mask", "axes"], ["m3"]),
        helper.make_node("Cast", ["m3"], ["mf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["h", "mf"], ["hm"]),
        helper.make_node("MatMul", ["hm", "w"], ["y"]),
    ]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, list(seq)) for n in ("input_ids", "attention_mask")]
    if types:
        inits["temb"] = rng.standard_normal((2, 16)).astype(np.float32)
        nodes[0:1] = [
            helper.make_node("Gather", ["emb", "input_ids"], ["h0"]),
            helper.make_node("Gather", ["temb", "token_type_ids"], ["t"]),
            helper.make_node("Add", ["h0", "t"], ["h"]),
        ]
        inputs.append(helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, list(seq)))
    out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [*seq, 16])]
    g = helper.make_graph(nodes, "enc", inputs, out, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(m, folder / "model.onnx")
    return folder / "model.onnx"
