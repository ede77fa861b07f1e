"""ALBEFTokenizer: bert-base-uncased vocab, [CLS] without trailing [SEP], answers with [SEP]."""

from __future__ import annotations

import pickle

import pytest
import torch

from albef_struct.data import ALBEFTokenizer


@pytest.fixture(scope="module")
def tok() -> ALBEFTokenizer:
    return ALBEFTokenizer()


def test_vocab_is_full_bert_base_uncased(tok):
    assert len(tok) == 30522 and tok.vocab_size == 30522
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (0, 100, 101, 102, 103)


def test_single_text_has_cls_and_no_sep(tok):
    out = tok(["a dog"])
    assert out["input_ids"].tolist() == [[101, 1037, 3899]]
    assert out["attention_mask"].tolist() == [[1, 1, 1]]
    assert out["input_ids"].dtype == torch.long and out["attention_mask"].dtype == torch.long


def test_longest_padding_and_masks(tok):
    out = tok(["a dog", "a"])
    assert out["input_ids"].tolist() == [[101, 1037, 3899], [101, 1037, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def test_max_length_padding(tok):
    out = tok(["a dog"], max_length=6, padding="max_length")
    assert out["input_ids"].tolist() == [[101, 1037, 3899, 0, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0]]


def test_truncation_counts_and_keeps_cls(tok):
    out = tok(["a dog a dog a dog"], max_length=3)
    assert out["input_ids"].tolist() == [[101, 1037, 3899]]
    untruncated = tok(["a dog a dog a dog"], max_length=3, truncation=False)
    assert untruncated["input_ids"].shape == (1, 7)


def test_encode_answers_ends_with_sep_then_pad(tok):
    out = tok.encode_answers(["yes", "a dog"])
    assert out["input_ids"].tolist() == [[101, 2748, 102, 0], [101, 1037, 3899, 102]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    capped = tok.encode_answers(["a dog a dog"], max_length=3)
    assert capped["input_ids"].tolist() == [[101, 1037, 102]]


def test_pickle_round_trip(tok):
    clone = pickle.loads(pickle.dumps(tok))
    assert len(pickle.dumps(tok)) < 1000  # only the path travels to workers
    assert clone(["a dog"])["input_ids"].tolist() == [[101, 1037, 3899]]


def test_rejects_a_bare_string_and_bad_options(tok):
    with pytest.raises(TypeError, match="list of strings"):
        tok("a dog")
    with pytest.raises(ValueError, match="max_length"):
        tok(["a"], padding="max_length")
    with pytest.raises(ValueError, match="padding"):
        tok(["a"], padding="do_not_pad")


def test_empty_batch(tok):
    assert tok([])["input_ids"].shape == (0, 0)


def test_bad_path_says_what_to_pass(tmp_path):
    with pytest.raises(OSError, match="tokenizer_path"):
        ALBEFTokenizer(str(tmp_path / "nowhere"))
