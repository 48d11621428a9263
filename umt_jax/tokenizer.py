"""Text tokenizers.

`WordTokenizer`: a word-level tokenizer for the synthetic captions (the demo's stage-0 CLIP), in CLIP's id
conventions: 0 pad, 1 start-of-text, words 2.., and end-of-text = the largest id, so CLIP's `argmax(ids)` finds it.
Real CLIP weights come with their own BPE tokenizer; this one exists so the demo needs no downloads.

`BertTokenizer`: BERT's WordPiece (stage 2's text encoder) from a `vocab.txt` the user brings, through the Hugging
Face `tokenizers` library; ids equal `transformers.BertTokenizerFast` with `truncation=True, padding='max_length'`.
The demo writes its vocab.txt from the synthetic captions with `write_vocab`, so it runs the same WordPiece path.
"""
from __future__ import annotations

import json
import re
from typing import Iterable, Sequence

import grain
import numpy as np
import tokenizers
from tokenizers import models, normalizers, pre_tokenizers, processors

from data import records

BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


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


def read_vocab(path: str) -> dict[str, int]:
  """A BERT vocab.txt -> {token: line number}, as `transformers`' `load_vocab` reads it (a repeated token keeps
  its last line), also accepting a UTF-8 BOM and CRLF line ends."""
  try:
    with open(path, encoding="utf-8-sig") as f:  # universal newlines: CRLF and CR read as LF
      lines = f.read().split("\n")
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f"cannot read BERT vocab file {path}: {e}") from e
  if lines and not lines[-1]:
    lines.pop()  # the final newline ends the last token; it does not start an empty one
  return {token: i for i, token in enumerate(lines)}


def write_vocab(words: Iterable[str], path: str) -> None:
  """Writes a BERT vocab.txt: [PAD] (id 0), [UNK], [CLS], [SEP], [MASK], then the sorted distinct words."""
  words = set(words) - set(BERT_SPECIAL_TOKENS)
  bad = sorted(w for w in words if not w or any(c.isspace() for c in w))
  if bad:
    raise ValueError(f"write_vocab: words must be non-empty without whitespace; got {bad[:5]}")
  with open(path, "w", encoding="utf-8", newline="\n") as f:
    f.writelines(f"{w}\n" for w in (*BERT_SPECIAL_TOKENS, *sorted(words)))


class BertTokenizer:
  """Uncased (by default) BERT WordPiece: text -> `[CLS] wordpieces… [SEP]`, truncated and padded to max_length."""

  def __init__(self, vocab_path: str, max_length: int = 32, lowercase: bool = True):
    vocab = read_vocab(vocab_path)
    missing = [t for t in BERT_SPECIAL_TOKENS if t not in vocab]
    if missing:
      raise ValueError(f"BERT vocab file {vocab_path} lacks the special tokens {missing}")
    if max_length < 2:
      raise ValueError(f"max_length {max_length} leaves no room for [CLS] and [SEP]")
    self.vocab_path, self.max_length, self.lowercase = vocab_path, max_length, lowercase
    self._ids = {t: vocab[t] for t in BERT_SPECIAL_TOKENS}
    self._vocab_size = max(vocab.values()) + 1
    tok = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = self._normalizer(lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.BertProcessing(("[SEP]", self.sep_id), ("[CLS]", self.cls_id))
    tok.enable_truncation(max_length)  # counts the added [CLS]/[SEP], so [SEP] stays last
    tok.enable_padding(pad_id=self.pad_id, pad_token="[PAD]", length=max_length)
    self._tok = tok

  @staticmethod
  def _normalizer(lowercase: bool) -> normalizers.Normalizer:
    return normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=lowercase)

  @property
  def vocab_size(self) -> int:
    """Rows an embedding table needs: the vocab file's line count."""
    return self._vocab_size

  @property
  def pad_id(self) -> int:
    return self._ids["[PAD]"]

  @property
  def unk_id(self) -> int:
    return self._ids["[UNK]"]

  @property
  def cls_id(self) -> int:
    return self._ids["[CLS]"]

  @property
  def sep_id(self) -> int:
    return self._ids["[SEP]"]

  @property
  def mask_id(self) -> int:
    return self._ids["[MASK]"]

  @property
  def special_ids(self) -> tuple[int, ...]:
    """Ids of [PAD], [UNK], [CLS], [SEP], [MASK], in that order."""
    return tuple(self._ids[t] for t in BERT_SPECIAL_TOKENS)

  def __call__(self, text: str) -> tuple[np.ndarray, np.ndarray]:
    """text -> (ids (L,) int32, attention mask (L,) int32), L = max_length."""
    enc = self._tok.encode(text)
    return np.asarray(enc.ids, np.int32), np.asarray(enc.attention_mask, np.int32)

  def batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """N texts -> (ids (N, L) int32, attention mask (N, L) int32)."""
    encs = self._tok.encode_batch(list(texts))
    ids = np.asarray([e.ids for e in encs], np.int32).reshape(len(encs), self.max_length)
    mask = np.asarray([e.attention_mask for e in encs], np.int32).reshape(len(encs), self.max_length)
    return ids, mask

  @classmethod
  def words(cls, texts: Iterable[str], lowercase: bool = True) -> set[str]:
    """The whole words BERT's normaliser and pre-tokeniser split texts into (punctuation is its own word)."""
    norm, pre = cls._normalizer(lowercase), pre_tokenizers.BertPreTokenizer()
    return {w for t in texts for w, _ in pre.pre_tokenize_str(norm.normalize_str(t))}

  @classmethod
  def from_records(cls, source, path: str, max_length: int = 32, lowercase: bool = True) -> "BertTokenizer":
    """Writes the vocab of every caption in a data source (ArrayRecord or TFDS) to `path` and loads it."""
    captions = (c for i in range(len(source)) for c in records.unpack(source[i])["captions"])
    write_vocab(cls.words(captions, lowercase), path)
    return cls(path, max_length, lowercase)


class TokenizeText(grain.transforms.Map):
  """Adds 'text' (L,) int32 and 'text_mask' (L,) int32 from the element's 'caption' (BERT convention)."""

  def __init__(self, tokenizer: BertTokenizer):
    self.tokenizer = tokenizer

  def map(self, element: dict) -> dict:
    ids, mask = self.tokenizer(element["caption"])
    return {**element, "text": ids, "text_mask": mask}
