"""A word-level tokenizer for the synthetic captions (the demo's stage-0 CLIP), in CLIP's id conventions.

Ids: 0 pad, 1 start-of-text, words 2.., and end-of-text = the largest id, so CLIP's `argmax(ids)` finds it.
Real CLIP weights come with their own BPE tokenizer; this one exists so the demo needs no downloads.
"""
from __future__ import annotations

import json
import re
from typing import Iterable

import grain
import numpy as np

from data import records


class WordTokenizer:

  def __init__(self, words: Iterable[str], context_length: int):
    self.words = sorted(set(words))
    self.index = {w: i + 2 for i, w in enumerate(self.words)}
    self.context_length = context_length

  @property
  def vocab_size(self) -> int:
    return len(self.words) + 3

  @property
  def eot(self) -> int:
    return self.vocab_size - 1

  @staticmethod
  def split(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())

  def __call__(self, text: str) -> np.ndarray:
    """text -> (context_length,) int32: [sot, words..., eot, 0...]; unknown words are dropped, long text cut."""
    ids = [self.index[w] for w in self.split(text) if w in self.index][: self.context_length - 2]
    out = np.zeros(self.context_length, np.int32)
    out[: len(ids) + 2] = [1, *ids, self.eot]
    return out

  @classmethod
  def from_records(cls, source, context_length: int) -> "WordTokenizer":
    """The vocabulary of every caption in a data source (ArrayRecord or TFDS)."""
    words = set()
    for i in range(len(source)):
      for c in records.unpack(source[i])["captions"]:
        words.update(cls.split(c))
    return cls(words, context_length)

  def save(self, path: str) -> None:
    with open(path, "w") as f:
      json.dump({"words": self.words, "context_length": self.context_length}, f)

  @classmethod
  def load(cls, path: str) -> "WordTokenizer":
    with open(path) as f:
      d = json.load(f)
    return cls(d["words"], d["context_length"])


class Tokenize(grain.transforms.Map):
  """Adds 'text' (context_length,) int32 from the element's 'caption'."""

  def __init__(self, tokenizer: WordTokenizer):
    self.tokenizer = tokenizer

  def map(self, element: dict) -> dict:
    return {**element, "text": self.tokenizer(element["caption"])}
