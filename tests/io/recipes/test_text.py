"""kind = "text": a tokenizer.json beside the model needs no recipe; the feeds equal the tokenizer's own
encoding; pairs, truncation (counted, or refused), renamed inputs, and the same plan as from .npz arrays."""

import json

import numpy as np
import onnx
import pytest
from tokenizers import Tokenizer

from qcli import QuantConfig, quantize
from qcli.core.errors import InputError
from qcli.io.feeds import input_specs
from qcli.io.recipes import open_source

from .texts import SENTENCES, encoder, write_tokenizer


@pytest.fixture
def enc(tmp_path):
    m = encoder(tmp_path / "enc")
    write_tokenizer(tmp_path / "enc" / "tokenizer.json")
    (tmp_path / "calib.txt").write_text("\n".join(SENTENCES[:25]) + "\n\n")  # a blank line: skipped
    (tmp_path / "eval.txt").write_text("\n".join(SENTENCES[25:]) + "\n")
    return m


def reference_tokenizer(path):
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    return tok


def test_a_text_file_needs_no_recipe_and_feeds_the_tokenizers_encoding(enc, tmp_path):
    src = open_source(tmp_path / "calib.txt", input_specs(onnx.load(enc)), enc)
    assert len(src) == 25 and src.recipe.origin == "tokenizer.json beside the model"
    ref = reference_tokenizer(enc.parent / "tokenizer.json")
    for item, text in zip(src.items, SENTENCES):
        feed = src.load(item)
        e = ref.encode(text)
        assert feed["input_ids"].dtype == np.int64 and feed["input_ids"].tolist() == [e.ids]
        assert feed["attention_mask"].tolist() == [[1] * len(e.ids)]  # no padding for one sample
    assert src.load(src.items[0])["input_ids"][0, 0] == 2 and 1 in src.load(src.items[5])["input_ids"]  # [CLS], [UNK]


def test_quantize_from_text_equals_quantize_from_the_same_tokens_as_npz(enc, tmp_path):
    ref = reference_tokenizer(enc.parent / "tokenizer.json")
    for split, lines in (("c", SENTENCES[:25]), ("e", SENTENCES[25:])):
        (tmp_path / split).mkdir()
        for i, text in enumerate(lines):
            e = ref.encode(text)
            np.savez(
                tmp_path / split / f"{i:03d}.npz",
                input_ids=np.array([e.ids]),
                attention_mask=np.array([e.attention_mask]),
            )
    cfg = QuantConfig.of(min_macs_per_conversion=0.0)  # the tiny MatMul quantized: ranges to compare
    raw = quantize(
        enc,
        cfg,
        calib=tmp_path / "calib.txt",
        eval_dir=tmp_path / "eval.txt",
        out=tmp_path / "a" / "q.onnx",
        latency_runs=2,
    )
    arr = quantize(
        enc, cfg, calib=tmp_path / "c", eval_dir=tmp_path / "e", out=tmp_path / "b" / "q.onnx", latency_runs=2
    )
    assert raw.plan.activations and raw.plan.activations.keys() == arr.plan.activations.keys()
    for name, a in arr.plan.activations.items():
        assert (raw.plan.activations[name].scale, raw.plan.activations[name].zero_point) == (a.scale, a.zero_point)
    assert raw.report.fidelity[0].sqnr_db == pytest.approx(arr.report.fidelity[0].sqnr_db, abs=1e-9)
    rec = json.loads((tmp_path / "a" / "q.onnx.report.json").read_text())["recipe"]
    assert rec["inputs"]["input_ids"]["kind"] == "text" and str(enc.parent / "tokenizer.json") in rec["files"]
    assert json.loads((tmp_path / "b" / "q.onnx.report.json").read_text())["recipe"] is None


def test_pairs_renamed_inputs_and_truncation(tmp_path):
    m = encoder(tmp_path / "enc", types=True)
    tok = write_tokenizer(tmp_path / "tokenizer.json")
    lines = [json.dumps({"q": SENTENCES[i], "p": SENTENCES[i + 1]}) for i in range(3)] + [json.dumps({"q": "the cat"})]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'[inputs.input_ids]\nkind = "text"\ntokenizer = "{tok.name}"\nfield = "q"\npair_field = "p"\nmax_length = 8\n'
    )
    src = open_source(tmp_path / "d.jsonl", input_specs(onnx.load(m)), m, recipe)
    ref = reference_tokenizer(tok)
    ref.enable_truncation(8)
    for i, item in enumerate(src.items[:3]):
        feed, e = src.load(item), ref.encode(SENTENCES[i], SENTENCES[i + 1])
        assert feed["input_ids"].tolist() == [e.ids] and feed["token_type_ids"].tolist() == [e.type_ids]
        assert len(e.ids) == 8 and 1 in e.type_ids
    assert src.load(src.items[3])["input_ids"].tolist() == [ref.encode("the cat").ids]
    assert len(src.recipe.tables[0].tallies["truncated_samples"]) == 3
    recipe.write_text(recipe.read_text() + "truncation = false\n")
    src = open_source(tmp_path / "d.jsonl", input_specs(onnx.load(m)), m, recipe)
    with pytest.raises(
        InputError, match=r"d.jsonl:1: the text is longer than max_length = 8 tokens and truncation = false"
    ):
        src.load(src.items[0])


def test_text_errors(enc, tmp_path):
    specs = input_specs(onnx.load(enc))
    bad = tmp_path / "r.toml"
    bad.write_text('[inputs.input_ids]\nkind = "text"\ntokenizer = "missing.json"\n')
    with pytest.raises(InputError, match=r"tokenizer = 'missing.json': no such file"):
        open_source(tmp_path / "calib.txt", specs, enc, bad)
    bad.write_text('[inputs.input_ids]\nkind = "text"\ntokenizer = "enc/tokenizer.json"\nattention_mask = "mask"\n')
    with pytest.raises(InputError, match=r"attention_mask = 'mask': is not an input of the model"):
        open_source(tmp_path / "calib.txt", specs, enc, bad)
    (tmp_path / "x.jsonl").write_text('{"text": 3}\n')
    bad.write_text('[inputs.input_ids]\nkind = "text"\ntokenizer = "enc/tokenizer.json"\n')
    src = open_source(tmp_path / "x.jsonl", specs, enc, bad)
    with pytest.raises(InputError, match=r"x.jsonl:1: no string field 'text'"):
        src.load(src.items[0])
