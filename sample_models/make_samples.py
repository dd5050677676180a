"""Train two small digit classifiers and export them to ONNX as quantizer samples.

Produces, for each of ``cnn/`` and ``attention/`` next to this script:
    model.onnx        opset 17, input ``input`` [batch,1,32,32] f32, output ``logits`` [batch,10]
    calib/batch_XXX.npy   8 x float32 [16,1,32,32]  (first 128 train samples)
    eval/batch_XXX.npy    8 x float32 [32,1,32,32]  (first 256 test samples)
    eval/labels.npy       int64 [256]
and rewrites ``README.md``. Data: sklearn's bundled digits (offline).

Regenerate with:  .venv-train/bin/python sample_models/make_samples.py
"""

from __future__ import annotations

import collections
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

OUT_DIR = Path(__file__).resolve().parent
SEED = 0
N_TRAIN, N_TEST = 1297, 500
PIP_LINE = (
    "python3 -m venv .venv-train && .venv-train/bin/pip install torch==2.13.0 scikit-learn numpy onnx onnxruntime"
)


# ----------------------------------------------------------------------------- data
def load_data():
    """Return standardized (x_train, y_train, x_test, y_test, mean, std) tensors."""
    digits = load_digits()
    order = np.random.RandomState(SEED).permutation(len(digits.target))
    images = torch.from_numpy(digits.images[order].astype(np.float32))[:, None]  # [N,1,8,8]
    images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    images = images / 16.0
    labels = torch.from_numpy(digits.target[order].astype(np.int64))
    x_train, x_test = images[:N_TRAIN], images[N_TRAIN : N_TRAIN + N_TEST]
    mean, std = x_train.mean().item(), x_train.std().item()
    norm = lambda x: ((x - mean) / std).contiguous()  # noqa: E731
    return (norm(x_train), labels[:N_TRAIN], norm(x_test), labels[N_TRAIN : N_TRAIN + N_TEST], mean, std)


def random_shift(x: torch.Tensor, max_shift: int, fill: float, gen: torch.Generator):
    """Shift each image by up to +-max_shift pixels (per sample), filling with background."""
    padded = F.pad(x, [max_shift] * 4, value=fill)
    offsets = torch.randint(0, 2 * max_shift + 1, (x.shape[0], 2), generator=gen)
    h, w = x.shape[-2:]
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])


# ----------------------------------------------------------------------------- models
def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(1, 32),
            conv_bn_relu(32, 32),
            nn.MaxPool2d(2),
            conv_bn_relu(32, 64),
            conv_bn_relu(64, 64),
            nn.MaxPool2d(2),
            conv_bn_relu(64, 64),
            nn.AdaptiveAvgPool2d(1),
        )  # -> GlobalAveragePool
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


class SelfAttention(nn.Module):
    """Multi-head self-attention with explicit projections (exports as MatMul/Softmax)."""

    def __init__(self, tokens: int, dim: int, heads: int):
        super().__init__()
        self.tokens, self.dim, self.heads, self.head_dim = tokens, dim, heads, dim // heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):  # x: [B, T, D]; static T/D keep Shape/Gather ops out of the graph
        t, d = self.tokens, self.dim
        split = lambda y: y.reshape(-1, t, self.heads, self.head_dim).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        attn = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * self.head_dim**-0.5, dim=-1)
        y = torch.matmul(attn, v).transpose(1, 2).reshape(-1, t, d)
        return self.out(y)


class EncoderBlock(nn.Module):
    def __init__(self, tokens: int, dim: int, heads: int, hidden: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SelfAttention(tokens, dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class DigitsTransformer(nn.Module):
    def __init__(self, patch: int = 4, dim: int = 64, depth: int = 2, heads: int = 4):
        super().__init__()
        self.patch, self.grid = patch, 32 // patch
        self.embed = nn.Linear(patch * patch, dim)
        self.pos = nn.Parameter(torch.randn(1, self.grid * self.grid, dim) * 0.02)
        self.blocks = nn.Sequential(*(EncoderBlock(self.grid**2, dim, heads, 2 * dim) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x):  # x: [B, 1, 32, 32]
        g, p = self.grid, self.patch
        x = x.reshape(-1, g, p, g, p).permute(0, 1, 3, 2, 4).reshape(-1, g * g, p * p)
        x = self.blocks(self.embed(x) + self.pos)
        return self.head(self.norm(x.mean(dim=1)))


# ----------------------------------------------------------------------------- training
def train(model, x, y, x_test, y_test, *, epochs, lr, fill, max_shift=3, batch=64):
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * ((len(x) + batch - 1) // batch))
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(batch):
            loss = F.cross_entropy(model(random_shift(x[idx], max_shift, fill, gen)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if (epoch + 1) % 5 == 0 or epoch + 1 == epochs:
            print(
                f"  epoch {epoch + 1:3d}  loss {loss.item():.4f}  test acc {torch_accuracy(model, x_test, y_test):.4f}"
            )
    return model.eval()


@torch.no_grad()
def torch_accuracy(model, x, y):
    model.eval()
    return (model(x).argmax(1) == y).float().mean().item()


# ----------------------------------------------------------------------------- export
def export_onnx(model, path: Path, preserve_bn: bool):
    """Legacy TorchScript export; PRESERVE keeps BatchNormalization unfused (eval semantics)."""
    mode = torch.onnx.TrainingMode.PRESERVE if preserve_bn else torch.onnx.TrainingMode.EVAL
    torch.onnx.export(
        model.eval(),
        (torch.zeros(1, 1, 32, 32),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        training=mode,
        do_constant_folding=not preserve_bn,
    )  # nothing to fold in the CNN; avoids a warning
    onnx.checker.check_model(onnx.load(str(path)))


def check_onnx(model, path: Path, x):
    """Compare onnxruntime with torch on x; return (onnx_logits, max_abs_diff, op_counts)."""
    graph = onnx.load(str(path)).graph
    for node in graph.node:
        if node.op_type == "BatchNormalization":
            assert len(node.output) == 1, "BatchNormalization exported in training mode"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    diff = float(np.abs(logits - ref).max())
    assert diff < 1e-4, f"{path}: onnxruntime vs torch max abs diff {diff}"
    return logits, diff, collections.Counter(n.op_type for n in graph.node)


def write_data(folder: Path, x_train, x_test, y_test):
    for sub, data, bs in (("calib", x_train[:128], 16), ("eval", x_test[:256], 32)):
        shutil.rmtree(folder / sub, ignore_errors=True)
        (folder / sub).mkdir(parents=True)
        for i, chunk in enumerate(data.split(bs)):
            np.save(folder / sub / f"batch_{i:03d}.npy", chunk.numpy().astype(np.float32))
    np.save(folder / "eval" / "labels.npy", y_test[:256].numpy().astype(np.int64))


# ----------------------------------------------------------------------------- readme
README_TEMPLATE = """# Sample models for qcli

Two small digit classifiers (scikit-learn's bundled `load_digits`, no download) trained
with PyTorch and exported to ONNX (opset 17) by `make_samples.py`. This file is generated.

## Regenerate

```
{pip_line}
.venv-train/bin/python sample_models/make_samples.py
```

The script is deterministic (seeds fixed) and overwrites all outputs.

## Data

- 8x8 digit images (0..16) upsampled bilinearly to 32x32, divided by 16, then standardized
  with the train-set statistics: `MEAN = {mean:.6f}`, `STD = {std:.6f}`, i.e.
  `x = (bilinear32(img) / 16 - MEAN) / STD`.
- Split: shuffle with `numpy.random.RandomState(0).permutation`, first {n_train} train, next {n_test} test.
- Per model folder: `calib/batch_000..007.npy` float32 [16,1,32,32] (first 128 train samples),
  `eval/batch_000..007.npy` float32 [32,1,32,32] (first 256 test samples),
  `eval/labels.npy` int64 [256] (labels of the eval batches, in order: compare reports top-1/top-5 against them).
- Models: input `input` [batch,1,32,32] float32 (dynamic batch), output `logits` [batch,10].

## Models

{sections}
"""

SECTION_TEMPLATE = """### `{name}/model.onnx` ({size_kb:.0f} KB)

{arch}

- onnxruntime test accuracy (all {n_test} test samples): **{acc:.2%}**
- onnxruntime accuracy on `eval/` (256 samples): {eval_acc:.2%}
- max |onnxruntime - torch| on the test set: {diff:.2e}
- op types: {ops}
"""

ARCHS = {
    "cnn": "Conv(1->32,3x3,pad1)+BN+ReLU, Conv(32->32)+BN+ReLU, MaxPool2, Conv(32->64)+BN+ReLU, "
    "Conv(64->64)+BN+ReLU, MaxPool2, Conv(64->64)+BN+ReLU, GlobalAveragePool, Flatten, "
    "Gemm(64->10). All convs 3x3 pad 1. BatchNormalization nodes are kept unfused "
    "(exported with `TrainingMode.PRESERVE` on an eval-mode model).",
    "attention": "Patchify 32x32 into 64 patches of 4x4 via Reshape/Transpose -> Linear(16->64) + "
    "learned positional embedding; 2 pre-LayerNorm encoder blocks (4-head "
    "self-attention with explicit q/k/v/out Linear, MatMul + Softmax; MLP "
    "64->128->64 with exact GELU (Erf)); mean over tokens, LayerNorm, Linear(64->10).",
}


def write_readme(results, mean, std):
    sections = []
    for name, r in results.items():
        ops = ", ".join(f"{op} {n}" for op, n in r["ops"].most_common())
        sections.append(SECTION_TEMPLATE.format(name=name, arch=ARCHS[name], n_test=N_TEST, **{**r, "ops": ops}))
    (OUT_DIR / "README.md").write_text(
        README_TEMPLATE.format(
            pip_line=PIP_LINE, mean=mean, std=std, n_train=N_TRAIN, n_test=N_TEST, sections="\n".join(sections)
        )
    )


# ----------------------------------------------------------------------------- main
def main():
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    x_train, y_train, x_test, y_test, mean, std = load_data()
    fill = -mean / std  # standardized value of a blank pixel
    specs = {
        "cnn": (DigitsCNN, dict(epochs=15, lr=3e-3), True, 0.95),
        "attention": (DigitsTransformer, dict(epochs=40, lr=2e-3), False, 0.90),
    }
    results = {}
    for name, (cls, hparams, preserve_bn, target) in specs.items():
        print(f"training {name}")
        torch.manual_seed(SEED)
        model = train(cls(), x_train, y_train, x_test, y_test, fill=fill, **hparams)
        folder = OUT_DIR / name
        folder.mkdir(exist_ok=True)
        path = folder / "model.onnx"
        export_onnx(model, path, preserve_bn)
        logits, diff, ops = check_onnx(model, path, x_test)
        correct = logits.argmax(1) == y_test.numpy()
        acc, eval_acc = float(correct.mean()), float(correct[:256].mean())
        assert acc >= target, f"{name}: accuracy {acc:.4f} below target {target}"
        write_data(folder, x_train, x_test, y_test)
        results[name] = dict(acc=acc, eval_acc=eval_acc, diff=diff, ops=ops, size_kb=path.stat().st_size / 1024)
        print(f"  {name}: onnx acc {acc:.4f}, max diff {diff:.2e}, ops {dict(ops)}")
    write_readme(results, mean, std)


if __name__ == "__main__":
    main()
