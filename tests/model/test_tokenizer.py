from __future__ import annotations

import pytest
from lightswe.model import SPECIAL_TOKENS, ByteTokenizer, MiniMaxConfig, load_tokenizer


def test_byte_tokenizer_round_trip_and_specials():
    tok = load_tokenizer()
    text = "<|im_start|>user\nfix the bug in naïve.py ✓<|im_end|>\n<think>hm</think><tool_calls>\n{}\n</tool_calls>"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    for name in SPECIAL_TOKENS:
        assert tok.encode(name) == [tok.token_id(name)]
    assert tok.encode("<|im_start|>hi") == [257, 104, 105]
    assert tok.eos_token_id == tok.token_id("<|endoftext|>") == 256
    assert tok.vocab_size == 263 <= MiniMaxConfig.preset("tiny").vocab_size
    with pytest.raises(KeyError, match="special"):
        tok.token_id("<unk>")


def test_byte_tokenizer_decodes_partial_utf8_without_error():
    tok = ByteTokenizer()
    assert tok.decode(list("é".encode())[:1]) == "\ufffd"


def test_hf_tokenizer_json(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(["def add(a, b):\n    return a + b\n"] * 20, trainer)
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path)
    text = "<|im_start|>def add(a, b): return a - b<|im_end|>"
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode("<|im_end|>") == [tok.token_id("<|im_end|>")]
    assert tok.eos_token_id == tok.token_id("<|endoftext|>")
    assert tok.vocab_size == hf.get_vocab_size(with_added_tokens=True)
