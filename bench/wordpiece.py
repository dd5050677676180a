"""Minimal BERT uncased WordPiece tokenizer over the MiniLM vocab.txt, plus the benchmark's text.

Implements what BertTokenizer does for plain English: lower-case, strip accents, split on
whitespace and punctuation, then greedy longest-match WordPiece with '##' continuations.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np

# Real English sentences, split evenly between calibration and evaluation by make_inputs.py.
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on the street corner.",
    "Quantization reduces the size of neural networks by storing weights in fewer bits.",
    "The weather forecast says it will rain heavily tomorrow afternoon.",
    "She bought fresh bread and cheese at the market this morning.",
    "Children were laughing while they played football in the park.",
    "The train to the airport leaves every fifteen minutes.",
    "Please remember to turn off the lights when you leave the office.",
    "Researchers found that regular exercise improves memory in older adults.",
    "The museum's new exhibition features paintings from the nineteenth century.",
    "My laptop battery drains quickly when I watch videos.",
    "He cooked pasta with tomatoes, garlic and fresh basil.",
    "The company reported higher profits than analysts had expected.",
    "A small boat drifted slowly across the calm lake.",
    "Students must submit their essays before the end of the week.",
    "The doctor recommended drinking more water and sleeping longer.",
    "Traffic was terrible because of an accident on the highway.",
    "Our team won the championship after a dramatic final match.",
    "The recipe calls for two cups of flour and one egg.",
    "Scientists launched a satellite to study the Earth's climate.",
    "I can't find my keys anywhere in the house.",
    "The library stays open late during the exam period.",
    "Electric cars are becoming more affordable every year.",
    "The cat is sleeping in a sunny spot by the window.",
    "They hiked to the top of the mountain and watched the sunrise.",
    "How do I reset my password if I forgot my email address?",
    "The concert was cancelled because the singer was ill.",
    "A new bridge will connect the two sides of the river.",
    "The software update fixes several security vulnerabilities.",
    "We planted tomatoes, beans and peppers in the garden.",
    "The restaurant on the corner serves excellent coffee.",
    "Heavy snow closed many schools across the region.",
    "The judge listened carefully to both sides of the argument.",
    "Birds migrate south when the days grow shorter.",
    "He apologized for arriving late to the meeting.",
    "The orchestra performed a symphony by Beethoven.",
    "Online shopping has changed how people buy groceries.",
    "The volcano erupted, sending ash high into the sky.",
    "She is learning to speak Japanese before her trip.",
    "The stock market fell sharply after the announcement.",
    "A dog is running through the snow with a stick.",
    "The old castle attracts thousands of tourists each summer.",
    "Wash your hands thoroughly before preparing food.",
    "The spacecraft landed safely on the surface of Mars.",
    "My grandmother tells wonderful stories about her childhood.",
    "The city plans to build more bicycle lanes downtown.",
    "This phone takes surprisingly good pictures at night.",
    "The committee will announce its decision next Monday.",
]


def _is_punct(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


class WordPiece:
    def __init__(self, vocab_file: Path):
        words = Path(vocab_file).read_text(encoding="utf-8").splitlines()
        self.vocab = {w: i for i, w in enumerate(words)}
        self.cls, self.sep = self.vocab["[CLS]"], self.vocab["[SEP]"]
        self.unk, self.pad = self.vocab["[UNK]"], self.vocab["[PAD]"]

    def _basic(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        words: list[str] = []
        for chunk in text.split():
            current = ""
            for ch in chunk:
                if _is_punct(ch):
                    words += [current, ch] if current else [ch]
                    current = ""
                else:
                    current += ch
            if current:
                words.append(current)
        return words

    def _wordpiece(self, word: str) -> list[int]:
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            if end == start:
                return [self.unk]
            start = end
        return ids

    def encode(self, text: str) -> list[int]:
        ids = [self.cls]
        for word in self._basic(text):
            ids += self._wordpiece(word)
        return ids + [self.sep]

    def batch(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Pad a batch to its longest sentence: int64 input_ids and attention_mask, [B, S]."""
        encoded = [self.encode(t) for t in texts]
        width = max(len(e) for e in encoded)
        ids = np.full((len(texts), width), self.pad, dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        for row, e in enumerate(encoded):
            ids[row, : len(e)] = e
            mask[row, : len(e)] = 1
        return {"input_ids": ids, "attention_mask": mask}
