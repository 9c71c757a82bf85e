"""Offline tokenizer loading."""

from __future__ import annotations

import pytest

from kubefusion.data.tokenizer import load_tokenizer
from kubefusion.errors import ModelSourceError


def test_builtin_minilm_is_the_bert_uncased_vocabulary(minilm_tokenizer):
    assert minilm_tokenizer("Ocean Wave")["input_ids"] == [101, 4153, 4400, 102]


def test_a_saved_local_folder_loads(minilm_tokenizer, tmp_path):
    minilm_tokenizer.save_pretrained(tmp_path / "tok")
    assert load_tokenizer(str(tmp_path / "tok"))("ocean")["input_ids"] == [101, 4153, 102]


def test_an_unknown_name_or_folder_says_what_to_do_and_never_downloads(tmp_path):
    with pytest.raises(ModelSourceError, match=r"not available offline.*builtin:minilm.*never downloaded"):
        load_tokenizer("kubefusion-test/no-such-tokenizer")
    with pytest.raises(ModelSourceError, match="does not exist"):
        load_tokenizer(str(tmp_path / "missing"))
    with pytest.raises(ModelSourceError, match="unknown built-in tokenizer"):
        load_tokenizer("builtin:gpt")
