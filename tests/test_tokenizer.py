"""BertTokenizer against transformers' BertTokenizerFast on a small vocab.txt written here (offline)."""
import pickle

import numpy as np
import pytest
import transformers

from umt_jax import tokenizer

WORDS = ["a", "red", "square", "circle", "##s", "move", "##d", "left", "two", "blue", "bounc", "##ing", "cafe",
         "creme", "brulee", ".", ",", "!", "-", "and", "中", "Red", "Café"]
TEXTS = [
    "A red square moved left.",
    "Two BLUE circles, bouncing!!",
    "Café crème brûlée",  # accents stripped and lowercased (uncased BERT)
    "an unknownword moves zzz-circle",  # unknown words -> [UNK]; moves -> move ##s
    "中文 red\tsquare\n",  # CJK characters split per character, whitespace normalised
    "",
    " ".join(["red square"] * 20),  # truncated, [SEP] kept last
]


@pytest.fixture
def vocab(tmp_path):
  tokenizer.write_vocab(WORDS, str(tmp_path / "vocab.txt"))
  return tmp_path


def _hf(vocab_dir, **kw) -> transformers.PreTrainedTokenizerBase:
  # from_pretrained on the folder: `BertTokenizerFast(vocab_file=...)` silently ignores the file in transformers 5.
  return transformers.BertTokenizerFast.from_pretrained(str(vocab_dir), **kw)


@pytest.mark.parametrize("lowercase", [True, False])
def test_ids_match_transformers(vocab, lowercase):
  tok = tokenizer.BertTokenizer(str(vocab / "vocab.txt"), max_length=12, lowercase=lowercase)
  hf = _hf(vocab, do_lower_case=lowercase)
  want = hf(TEXTS, truncation=True, max_length=12, padding="max_length")
  ids, mask = tok.batch(TEXTS)
  assert ids.dtype == mask.dtype == np.int32 and ids.shape == (len(TEXTS), 12)
  np.testing.assert_array_equal(ids, want["input_ids"])
  np.testing.assert_array_equal(mask, want["attention_mask"])
  for text, row, row_mask in zip(TEXTS, ids, mask):
    one, one_mask = tok(text)
    np.testing.assert_array_equal(one, row)
    np.testing.assert_array_equal(one_mask, row_mask)
  assert tok.unk_id in ids[3] and ids[-1, -1] == tok.sep_id and mask[-1].all()  # unknowns, truncation
  if lowercase:
    pieces = ["[CLS]", "a", "red", "square", "move", "##d", "left", ".", "[SEP]"]
    assert ids[0, :9].tolist() == hf.convert_tokens_to_ids(pieces)


def test_special_ids_and_vocab_size(vocab):
  tok = tokenizer.BertTokenizer(str(vocab / "vocab.txt"))
  hf = _hf(vocab)
  assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4) == tok.special_ids
  assert (tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id, tok.unk_id) == (
      hf.pad_token_id, hf.cls_token_id, hf.sep_token_id, hf.mask_token_id, hf.unk_token_id)
  assert tok.vocab_size == len(hf) == len(WORDS) + 5
  assert tok("red")[0].shape == (32,)


@pytest.mark.parametrize("bom,newline,final", [(True, "\n", True), (False, "\r\n", True), (True, "\r\n", False)])
def test_bom_and_crlf_vocab(vocab, tmp_path, bom, newline, final):
  lines = (vocab / "vocab.txt").read_text(encoding="utf-8").splitlines()
  odd = tmp_path / "odd.txt"
  odd.write_bytes((b"\xef\xbb\xbf" if bom else b"") + (newline.join(lines) + (newline if final else "")).encode())
  clean = tokenizer.BertTokenizer(str(vocab / "vocab.txt"), max_length=12)
  tok = tokenizer.BertTokenizer(str(odd), max_length=12)
  assert tok.special_ids == clean.special_ids and tok.vocab_size == clean.vocab_size
  np.testing.assert_array_equal(tok.batch(TEXTS)[0], clean.batch(TEXTS)[0])


def test_vocab_errors(tmp_path):
  with pytest.raises(ValueError, match="missing.txt"):
    tokenizer.BertTokenizer(str(tmp_path / "missing.txt"))
  bad = tmp_path / "bad.txt"
  bad.write_text("[PAD]\n[CLS]\n[SEP]\nred\n")
  with pytest.raises(ValueError, match=r"bad\.txt lacks the special tokens \['\[UNK\]', '\[MASK\]'\]"):
    tokenizer.BertTokenizer(str(bad))
  with pytest.raises(ValueError, match="without whitespace"):
    tokenizer.write_vocab(["red square"], str(tmp_path / "v.txt"))


def test_from_records_transform_and_pickle(tmp_path):
  captions = ["A red square moves left.", "two blue circles, bouncing!"]
  source = [{"frames": [], "captions": [c], "id": str(i)} for i, c in enumerate(captions)]  # TFDS-style records
  path = str(tmp_path / "vocab.txt")
  tok = tokenizer.BertTokenizer.from_records(source, path, max_length=16)
  hf = _hf(tmp_path)
  for c in captions:
    ids, mask = tok(c)
    assert tok.unk_id not in ids  # every caption word is a whole vocab word
    np.testing.assert_array_equal(ids, hf(c, truncation=True, max_length=16, padding="max_length")["input_ids"])

  transform = pickle.loads(pickle.dumps(tokenizer.TokenizeText(tok)))  # grain workers pickle transforms
  out = transform.map({"caption": captions[1], "label": 3})
  assert out["label"] == 3 and out["text"].dtype == out["text_mask"].dtype == np.int32
  np.testing.assert_array_equal(out["text"], tok(captions[1])[0])
  np.testing.assert_array_equal(out["text_mask"], tok(captions[1])[1])
