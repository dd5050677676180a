"""Export the all-MiniLM-L6-v2 BERT encoder to ONNX with PyTorch (no transformers needed).

    python bench/export_minilm.py

Reads bench/.cache/minilm/hf/{config.json,model.safetensors} (see fetch_models.py), builds a
plain-torch BERT encoder, loads the weights strictly and writes bench/.cache/minilm/model.onnx:
inputs input_ids, attention_mask (int64 [batch, sequence]), output last_hidden_state, opset 17.
"""

from __future__ import annotations

import json
import math
import struct
import warnings

import numpy as np
import torch
from common import CACHE
from torch import nn
from wordpiece import SENTENCES, WordPiece

HF = CACHE / "minilm" / "hf"
OUT = CACHE / "minilm" / "model.onnx"
SAFETENSORS_DTYPES = {"F32": np.float32, "I64": np.int64}


def load_safetensors(path) -> dict[str, torch.Tensor]:
    """Read a safetensors file: u64 header length, JSON header, then raw little-endian tensors."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        arr = np.frombuffer(raw[8 + n + begin : 8 + n + end], dtype=SAFETENSORS_DTYPES[info["dtype"]])
        tensors[name] = torch.from_numpy(arr.reshape(info["shape"]).copy())
    return tensors


class Embeddings(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        h = cfg["hidden_size"]
        self.word_embeddings = nn.Embedding(cfg["vocab_size"], h)
        self.position_embeddings = nn.Embedding(cfg["max_position_embeddings"], h)
        self.token_type_embeddings = nn.Embedding(cfg["type_vocab_size"], h)
        self.LayerNorm = nn.LayerNorm(h, eps=cfg["layer_norm_eps"])
        self.register_buffer("position_ids", torch.arange(cfg["max_position_embeddings"])[None])

    def forward(self, input_ids):
        positions = self.position_ids[:, : input_ids.shape[1]]
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        x = x + self.token_type_embeddings.weight[0]  # token_type_ids are all 0
        return self.LayerNorm(x)


class Layer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        h, inter = cfg["hidden_size"], cfg["intermediate_size"]
        self.heads = cfg["num_attention_heads"]
        self.scale = 1.0 / math.sqrt(h // self.heads)
        eps = cfg["layer_norm_eps"]
        self.attention = nn.Module()
        self.attention.self = nn.Module()
        for name in ("query", "key", "value"):
            setattr(self.attention.self, name, nn.Linear(h, h))
        self.attention.output = nn.Module()
        self.attention.output.dense = nn.Linear(h, h)
        self.attention.output.LayerNorm = nn.LayerNorm(h, eps=eps)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(h, inter)
        self.output = nn.Module()
        self.output.dense = nn.Linear(inter, h)
        self.output.LayerNorm = nn.LayerNorm(h, eps=eps)

    def _split(self, x):
        b, s, h = x.shape
        return x.view(b, s, self.heads, h // self.heads).transpose(1, 2)

    def forward(self, x, mask_bias):
        att = self.attention
        q, k, v = (self._split(getattr(att.self, n)(x)) for n in ("query", "key", "value"))
        scores = q @ k.transpose(-1, -2) * self.scale + mask_bias
        ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape)
        x = att.output.LayerNorm(x + att.output.dense(ctx))
        ff = self.output.dense(nn.functional.gelu(self.intermediate.dense(x)))
        return self.output.LayerNorm(x + ff)


class BertEncoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg["num_hidden_layers"]))

    def forward(self, input_ids, attention_mask):
        mask_bias = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        x = self.embeddings(input_ids)
        for layer in self.encoder.layer:
            x = layer(x, mask_bias)
        return x


def sentence_embeddings(model, batch) -> torch.Tensor:
    """Mean pooling + L2 normalisation, as sentence-transformers does for all-MiniLM-L6-v2."""
    ids, mask = (torch.from_numpy(batch[k]) for k in ("input_ids", "attention_mask"))
    hidden = model(ids, mask)
    m = mask[..., None].float()
    return nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)


def main() -> None:
    cfg = json.loads((HF / "config.json").read_text())
    model = BertEncoder(cfg).eval()
    weights = load_safetensors(HF / "model.safetensors")
    # The pooler head is not part of last_hidden_state; every other tensor must match exactly.
    weights = {k: v for k, v in weights.items() if not k.startswith("pooler.")}
    model.load_state_dict(weights, strict=True)

    # Sanity check: a paraphrase must score higher than an unrelated sentence.
    tok = WordPiece(HF / "vocab.txt")
    pair = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell sharply."]
    with torch.no_grad():
        emb = sentence_embeddings(model, tok.batch(pair))
    close, far = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    print(f"cosine(paraphrase)={close:.3f} cosine(unrelated)={far:.3f}")
    if close <= far + 0.2:
        raise SystemExit("exported encoder looks wrong: paraphrase is not closer than unrelated text")

    sample = tok.batch(SENTENCES[:2])
    args = (torch.from_numpy(sample["input_ids"]), torch.from_numpy(sample["attention_mask"]))
    dynamic = {0: "batch", 1: "sequence"}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is deprecated but fine here
    torch.onnx.export(
        model,
        args,
        str(OUT),
        input_names=["input_ids", "attention_mask"],
        output_names=["last_hidden_state"],
        dynamic_axes={"input_ids": dynamic, "attention_mask": dynamic, "last_hidden_state": dynamic},
        opset_version=17,
        dynamo=False,
    )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
